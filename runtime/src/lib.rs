//! Airlock runtime: starts and supervises sandboxes.
//!
//! This crate currently holds the `process` backend: containers created by youki's
//! `libcontainer` (with `libcgroups` picking its v1 or v2 manager from the host layout;
//! systemd cgroup management is off). It is driven through the thin `airlock-runtime`
//! binary, which the shim executes; see [`process`] for why the shim never calls it
//! in-process.

/// The cgroup bookkeeping lives in `airlock-state`, which the shim reads too.
pub use airlock_state::cgroups;
pub mod error;
pub mod executor;
pub mod idmap;
pub mod node;
pub mod process;
pub mod signal;
pub mod spec;

pub use error::{Result, RuntimeError};
pub use executor::{AirlockExecutor, BpfProgram};
pub use process::{ContainerState, CreateOptions, Created, ProcessRuntime, DEFAULT_ROOT};
pub use signal::parse_signal;
