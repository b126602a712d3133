//! Airlock's operator CLI (`airlock`), as a library: every command is a function returning
//! its text, so it is unit-tested; `src/bin/airlock.rs` only parses arguments and prints.

pub mod doctor;
pub mod dropin;
pub mod install;
pub mod policy;

/// containerd's runtime_type for Airlock.
pub const RUNTIME_TYPE: &str = "io.containerd.airlock.v2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Policy(#[from] airlock_policies::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binary {path} not found: build it first (cargo build --release --workspace --bins) or pass --from DIR")]
    MissingBinary { path: String },
    #[error("containerd config {path} is not valid TOML ({message}); fix it before installing")]
    ContainerdConfig { path: String, message: String },
    #[error("cannot tell containerd's version ({0}); pass --containerd-version 1.6|1.7|2.0|2.1")]
    ContainerdVersion(String),
    #[error("building the microVM guest: {0}")]
    VmGuest(String),
}
