//! A create in flight, for a cleanup that runs while it does.
//!
//! When a shim dies during Task.Create, containerd runs `shim delete` at once; the runtime it
//! had started may still be creating the container (it runs on without the shim), and its
//! state dir may not exist yet. A cleanup that found no state would leave the container that
//! the runtime then finishes: a created init waiting for a Start that never comes, its cgroup,
//! its state. So the runtime holds a lock on `<root>/.creating/<id>` for its whole create, and
//! a cleanup waits for it ([`wait`]) before it looks for the state.
//!
//! The lock is a POSIX record lock (`fcntl(F_SETLKW)`): it belongs to the runtime process,
//! is never inherited by the container's processes it forks (so a created init that waits for
//! its Start does not hold it), and is released when that process exits, however it ends.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory of the lock files, in the state root.
pub const DIR: &str = ".creating";

/// Held by the runtime while it creates a container; its file goes when it is dropped.
#[derive(Debug)]
pub struct CreateLock {
    _file: File,
    path: PathBuf,
}

impl Drop for CreateLock {
    fn drop(&mut self) {
        // Removed before the close releases the lock: a cleanup that opened it meanwhile
        // waits for the release, then finds the state complete.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn path(root: &Path, id: &str) -> PathBuf {
    root.join(DIR).join(id)
}

fn write_lock(file: &File, wait: bool) -> io::Result<()> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: fcntl on an fd we own, with a valid flock struct.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &lock) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the create lock of container `id` under state root `root` (made if missing).
pub fn lock(root: &Path, id: &str) -> io::Result<CreateLock> {
    let path = path(root, id);
    std::fs::create_dir_all(path.parent().expect("a lock file has a parent"))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    write_lock(&file, true)?;
    Ok(CreateLock { _file: file, path })
}

/// Waits until no create of `id` holds its lock, at most `limit`. True once none does (or
/// none ever did); false if one still does after `limit`. A lock file left by a runtime that
/// died is removed.
pub fn wait(root: &Path, id: &str, limit: Duration) -> bool {
    let path = path(root, id);
    let file = match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(_) => return true,
    };
    let t0 = Instant::now();
    loop {
        match write_lock(&file, false) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                return true;
            }
            Err(_) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAITER: &str = "AIRLOCK_TEST_CREATE_LOCK_ROOT";

    /// In a second run of this test binary (locks are per process): exits 0 when it finds
    /// the lock of `c1` held for 50 ms, 1 when free.
    #[test]
    fn waiter() {
        if let Some(root) = std::env::var_os(WAITER) {
            let free = wait(Path::new(&root), "c1", Duration::from_millis(50));
            std::process::exit(i32::from(free));
        }
    }

    fn held_for_another_process(root: &Path) -> bool {
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "create_lock::tests::waiter",
                "--test-threads",
                "1",
            ])
            .env(WAITER, root)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        st.code() == Some(0)
    }

    #[test]
    fn a_cleanup_waits_for_the_create_in_flight() {
        let root = tempfile::tempdir().unwrap();
        // No create: nothing to wait for.
        assert!(wait(root.path(), "c1", Duration::ZERO));
        let lock = lock(root.path(), "c1").unwrap();
        let file = path(root.path(), "c1");
        assert!(file.exists());
        assert!(held_for_another_process(root.path()));
        drop(lock);
        assert!(!file.exists(), "the create's lock file stays");
        assert!(!held_for_another_process(root.path()));
        // A lock file left by a runtime that died: free, and removed.
        std::fs::write(&file, b"").unwrap();
        assert!(wait(root.path(), "c1", Duration::ZERO));
        assert!(!file.exists());
    }
}
