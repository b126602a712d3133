//! `containerd-shim-airlock-v2`: the containerd runtime-v2 shim of Airlock.
//!
//! ## Task API version
//! Built on `containerd-shim` 0.11, which serves task API **v2** (`containerd.task.v2.Task`).
//! containerd 1.6, 1.7 and 2.x all accept v2 shims; 0.12 serves only v3, which containerd 1.6
//! cannot speak. So one binary works with Debian 12's containerd 1.6 and with containerd 2.1,
//! and both are tested in CI.
//!
//! ## Process model
//! The shim is async (tokio, current-thread) and never calls libcontainer itself: it runs the
//! single-threaded `airlock-runtime` binary for create/start/kill/delete, waits for container
//! inits through pidfds (the shim is their subreaper; the `containerd-shim` crate's global
//! `waitpid(-1)` reaper is disabled), and copies stdio between pipes (or a pty master) and
//! containerd's FIFOs.

pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod info;
pub mod lifecycle;
pub mod logging;
pub mod metrics_v2;
pub mod orphans;
pub mod process;
pub mod sandbox;
pub mod service;
pub mod shim;
pub mod stdio;
pub mod trim;
pub mod vm;

pub use shim::AirlockShim;

/// The runtime id containerd knows us by.
pub const RUNTIME_ID: &str = "io.containerd.airlock.v2";

/// How the shim configures the `containerd-shim` crate.
pub fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config {
        // We bridge `tracing` to the log FIFO ourselves.
        no_setup_logger: true,
        default_log_level: "info".to_string(),
        // Exits are taken through pidfds, never by a global waitpid(-1).
        no_reaper: true,
        // Container inits must be reparented to us.
        no_sub_reaper: false,
    }
}
