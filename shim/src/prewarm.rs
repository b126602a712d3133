//! Starts the wait that the runtime's cgroup attach would otherwise pay on the start path.
//!
//! Moving a process into a cgroup (writing `cgroup.procs`, which the runtime does for every
//! container init and exec process) takes the kernel's `cgroup_threadgroup_rwsem` for writing.
//! Unless the cgroup hierarchy is mounted with `favordynmods`, that lock's writer first waits
//! for an RCU grace period when no migration happened in the last few tens of milliseconds:
//! measured here 7-16 ms of a ~20 ms `airlock-runtime create`, the same for every runtime,
//! and on cgroup v1 and v2 alike. Writers that arrive while a grace period is under way wait
//! only for that one, and those that come shortly after it pass at once.
//!
//! So when a request that will attach a process arrives, the shim re-attaches itself to the
//! cgroup it is already in (a no-op move, nothing changes) on a blocking thread: the grace
//! period then elapses while the runtime is executed, parses the bundle and forks, and the
//! runtime's own write finds the lock ready (measured: 0.2 ms instead of 8 ms with 8 ms of
//! lead). Best effort: any error only means no head start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::cgroup::Cgroup;

/// One re-attach at a time: more would only queue behind the same grace period.
static IN_FLIGHT: AtomicBool = AtomicBool::new(false);

/// This process's own `cgroup.procs`, found once.
fn own_procs_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| {
        let cg = Cgroup::of_pid(std::process::id() as i32).ok()?;
        // v1: any hierarchy will do (the lock is one for all of them).
        let dir = ["pids", "memory", "cpu", "freezer"]
            .iter()
            .find_map(|c| cg.dir(c))?;
        Some(dir.join("cgroup.procs")).filter(|p| p.exists())
    })
    .as_deref()
}

/// Starts the grace period in the background and returns at once.
pub fn cgroup_attach() {
    let Some(file) = own_procs_file() else {
        return;
    };
    if IN_FLIGHT.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("attach-prewarm".into())
        .spawn(move || {
            let t = std::time::Instant::now();
            let r = std::fs::write(file, std::process::id().to_string());
            IN_FLIGHT.store(false, Ordering::Release);
            tracing::debug!(
                ok = r.is_ok(),
                elapsed_us = t.elapsed().as_micros() as u64,
                "cgroup attach prewarm"
            );
        });
    if spawned.is_err() {
        IN_FLIGHT.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The no-op move leaves this process where it was.
    #[test]
    fn reattach_keeps_the_process_in_its_cgroup() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(file) = own_procs_file() else {
            eprintln!("skipped: no writable cgroup.procs of our own here");
            return;
        };
        std::fs::write(file, std::process::id().to_string()).unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
        cgroup_attach();
        for _ in 0..200 {
            if !IN_FLIGHT.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!IN_FLIGHT.load(Ordering::Acquire));
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
