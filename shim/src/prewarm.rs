//! Keeps the runtime's cgroup attach from waiting for an RCU grace period on the start path.
//!
//! Moving a process into a cgroup (writing `cgroup.procs`, which the runtime does for every
//! container init and exec process) takes the kernel's `cgroup_threadgroup_rwsem` for writing.
//! Unless the cgroup hierarchy is mounted with `favordynmods`, that lock's writer first waits
//! for an RCU grace period when no migration happened in about the last grace period: measured
//! here 7-16 ms of a ~20 ms `airlock-runtime create`, the same for every runtime, on cgroup v1
//! and v2 alike. Writers that arrive while a grace period is under way wait only for that one,
//! and those that come within about one grace period after the last writer pass at once.
//!
//! So while a request that attaches a process is being served, the shim re-attaches itself to
//! the cgroup it is already in (a no-op move, nothing changes) on a thread, at once and then
//! every few milliseconds: the first grace period elapses while the runtime is executed and
//! parses the bundle, and the repeats keep the lock's fast path open until the runtime's own
//! write (measured: 0.2 ms instead of 7-16; a single re-attach was not enough for a pod's app
//! container, whose runtime wrote more than a grace period after it). Best effort: an error
//! only means no head start.
//!
//! A new shim also starts re-attaching as soon as it runs ([`at_startup`]): its pod's first
//! Create arrives 2-4 ms later, and the first grace period (9-15 ms on a new shim here) is the
//! one the runtime would otherwise wait for.
//!
//! Only on cgroup v2 (a unified `/sys/fs/cgroup`). On cgroup v1, which the runtime uses on a
//! hybrid host too, the runtime's process moves itself through `tasks` and takes no such lock
//! (vendored libcgroups, see third_party/README.md). There a re-attach would do harm: it waits
//! for its grace period holding the kernel's `cgroup_mutex`, which the runtime's cgroup mkdirs
//! and its lock-free move also take (measured: creates took as long as the re-attach, 6-23 ms).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Well under one grace period (7 ms at the shortest measured here).
const INTERVAL: Duration = Duration::from_millis(3);
/// A thread stops after this even if a request is still in flight (the next one starts anew).
const MAX_RUN: Duration = Duration::from_secs(5);
/// How long a new shim keeps the fast path open without a request (its first Create comes
/// within a few milliseconds of its start).
const STARTUP_WINDOW: Duration = Duration::from_millis(50);

/// Requests in flight that want the fast path kept open.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Whether the re-attach thread runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// This process's own `cgroup.procs`, found once.
/// None where the runtime's move takes no global lock (not cgroup v2), or none can be written.
fn own_procs_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| procs_file_under(Path::new("/sys/fs/cgroup")))
        .as_deref()
}

/// This process's `cgroup.procs` under `root` when `root` is a cgroup v2 mount.
fn procs_file_under(root: &Path) -> Option<PathBuf> {
    if !unified(root) {
        return None;
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(own.trim_start_matches('/')).join("cgroup.procs")).filter(|p| p.exists())
}

/// Whether `root` is a cgroup v2 mount, where libcgroups (and so the runtime) uses cgroup v2.
fn unified(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

fn reattach(file: &Path) -> std::io::Result<()> {
    std::fs::write(file, std::process::id().to_string())
}

/// Keeps the fast path open while it lives: hold it across the runtime call that attaches.
#[must_use = "the fast path stays open only while the guard lives"]
pub struct CgroupAttach(bool);

impl Drop for CgroupAttach {
    fn drop(&mut self) {
        if self.0 {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Starts re-attaching (if not already under way) and returns at once.
pub fn cgroup_attach() -> CgroupAttach {
    let Some(file) = own_procs_file() else {
        return CgroupAttach(false);
    };
    ACTIVE.fetch_add(1, Ordering::AcqRel);
    spawn(file, None);
    CgroupAttach(true)
}

/// Set by `start` for a serving shim that stays in the cgroup it starts in (no `ShimCgroup`
/// to move it to): only then may it learn its cgroup right away (it keeps the first answer).
pub const AT_STARTUP_ENV: &str = "AIRLOCK_PREWARM_AT_STARTUP";

/// For a shim that has just started: re-attaching begins now and goes on for
/// [`STARTUP_WINDOW`], or as long as requests hold [`CgroupAttach`] guards after that.
pub fn at_startup() {
    if let Some(file) = own_procs_file() {
        spawn(file, Some(Instant::now() + STARTUP_WINDOW));
    }
}

fn spawn(file: &'static Path, hold_until: Option<Instant>) {
    if !RUNNING.swap(true, Ordering::AcqRel) {
        let spawned = std::thread::Builder::new()
            .name("attach-prewarm".into())
            .spawn(move || run(file, hold_until));
        if spawned.is_err() {
            RUNNING.store(false, Ordering::Release);
        }
    }
}

fn run(file: &Path, hold_until: Option<Instant>) {
    let started = Instant::now();
    let mut first = true;
    loop {
        let t = Instant::now();
        let r = reattach(file);
        if first {
            first = false;
            tracing::debug!(
                ok = r.is_ok(),
                elapsed_us = t.elapsed().as_micros() as u64,
                "cgroup attach prewarm"
            );
        }
        if r.is_err() || started.elapsed() > MAX_RUN {
            break;
        }
        std::thread::sleep(INTERVAL);
        if hold_until.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        if ACTIVE.load(Ordering::Acquire) == 0 {
            RUNNING.store(false, Ordering::Release);
            // A request that came in just now saw the flag still set and started nothing: go
            // on for it, unless another thread has taken over.
            if ACTIVE.load(Ordering::Acquire) == 0 || RUNNING.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
    RUNNING.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cgroup v2 mount of this host: `/sys/fs/cgroup` (unified) or its `unified` side
    /// (hybrid), if either.
    fn v2_root() -> Option<&'static Path> {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| unified(p))
    }

    #[test]
    fn only_a_cgroup_v2_mount_counts_as_unified() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!unified(dir.path()));
        assert!(procs_file_under(dir.path()).is_none());
        let v1 = Path::new("/sys/fs/cgroup/pids");
        if v1.exists() {
            assert!(!unified(v1), "a v1 hierarchy");
        }
        // The start path re-attaches only where the runtime uses cgroup v2.
        assert_eq!(
            own_procs_file().is_some(),
            unified(Path::new("/sys/fs/cgroup"))
        );
    }

    /// The no-op move leaves this process where it was, and the thread ends with the guard.
    #[test]
    fn reattach_keeps_the_process_in_its_cgroup() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(file) = v2_root().and_then(procs_file_under) else {
            eprintln!("skipped: no cgroup v2 mount with a cgroup.procs of our own here");
            return;
        };
        reattach(&file).unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
        if own_procs_file().is_none() {
            // A hybrid host: the thread never runs there.
            assert!(!cgroup_attach().0);
            return;
        }
        let guard = cgroup_attach();
        std::thread::sleep(INTERVAL * 5);
        assert!(
            RUNNING.load(Ordering::Acquire),
            "runs while the guard lives"
        );
        drop(guard);
        for _ in 0..400 {
            if !RUNNING.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!RUNNING.load(Ordering::Acquire), "stops after the guard");
        assert_eq!(ACTIVE.load(Ordering::Acquire), 0);
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
