//! End-to-end harness for Airlock.
//!
//! It starts a private containerd (root, state, sockets and config under a temp dir) with the
//! `airlock`, `runc` and `crun` runtimes registered, builds a busybox-static image in OCI layout and
//! imports it, and drives containerd through `ctr` and its gRPC API. Everything it starts is stopped
//! when the [`Containerd`] value is dropped, also when a test panics.
//!
//! ```no_run
//! use airlock_integration::{Containerd, Runtime, Version};
//! let ctd = Containerd::builder().version(Version::V1_6).start().unwrap();
//! let ns = ctd.new_namespace("demo").unwrap(); // unique name, busybox imported into it
//! let out = ctd.ctr_run(&ns, Runtime::Runc, "c1", &["sh", "-c", "echo hi"]).unwrap();
//! assert_eq!(out.stdout, "hi\n");
//! ```

pub mod client;
pub mod containerd;
pub mod cri;
pub mod fifo;
pub mod hostile;
pub mod image;
pub mod leaks;
pub mod portforward;
pub mod probe;
pub mod proc_util;
pub mod runtime;
pub mod shared;
pub mod taskapi;
pub mod vm;

pub use client::{Client, TaskEvent};
pub use containerd::{Builder, Containerd, CtrOutput, Version};
pub use image::{busybox_image_tar, IMAGE_REF};
pub use leaks::{find_leaks, Leaks};
pub use runtime::Runtime;
pub use shared::shared;

use std::path::{Path, PathBuf};

/// The workspace root (parent of this crate's manifest dir).
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration crate has a parent dir")
        .to_path_buf()
}

/// The cargo target dir (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_dir().join(d)
            }
        }
        None => workspace_dir().join("target"),
    }
}

/// Where cargo puts the binaries of `profile`: beside this executable's own profile directory
/// (`<target>/<triple>/<profile>/[deps/]exe`, see .cargo/config.toml), else `<target>/<profile>`.
pub fn profile_dir(profile: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let own = exe.as_deref().and_then(Path::parent).and_then(|d| {
        if d.ends_with("deps") {
            d.parent()
        } else {
            Some(d)
        }
    });
    match own.and_then(Path::parent) {
        Some(base) if base.join(profile).is_dir() => base.join(profile),
        _ => target_dir().join(profile),
    }
}

/// Directory holding `containerd-shim-airlock-v2`: `AIRLOCK_BIN_DIR`; else the running
/// program's own directory when the shim is there (`airlock-bench` or `airlock-demo` run from
/// `target/airlock-bin` or an install); else the release profile's if the shim was built
/// there, else the debug profile's ([`profile_dir`]).
pub fn airlock_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIRLOCK_BIN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(own) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .filter(|d| d.join("containerd-shim-airlock-v2").is_file())
    {
        return own;
    }
    let release = profile_dir("release");
    if release.join("containerd-shim-airlock-v2").is_file() {
        release
    } else {
        profile_dir("debug")
    }
}

/// A container id unique in this test process: `<label>-<pid>-<n>`.
pub fn unique_id(label: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A current-thread tokio runtime for a test's gRPC calls.
pub fn test_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `fut` on a fresh runtime, and fails the test if it has not finished within `limit`,
/// printing containerd's goroutine stacks and log tail: a hang becomes a failure that says
/// where containerd was waiting, instead of a test run that never ends.
pub fn bounded<F: std::future::Future>(
    ctd: &containerd::Containerd,
    limit: std::time::Duration,
    what: &str,
    fut: F,
) -> F::Output {
    match test_rt().block_on(async { tokio::time::timeout(limit, fut).await }) {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: not finished after {limit:?}\n--- containerd stacks ---\n{}\n--- containerd log tail ---\n{}",
            ctd.dump_stacks(),
            ctd.log_tail(80)
        ),
    }
}
