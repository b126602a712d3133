//! OOM kills of a container, for TaskOOM events.
//!
//! The kernel counts OOM kills per memory cgroup: `oom_kill` in `memory.events` (cgroup v2)
//! and in `memory.oom_control` (cgroup v1, kernel >= 4.13). A container's watcher starts right
//! after create and wakes on the kernel's notification: inotify `IN_MODIFY` on
//! `memory.events` (v2), an eventfd registered through `cgroup.event_control` for
//! `memory.oom_control` (v1). No polling: an idle container costs one parked task and one fd.
//!
//! The task core's exit path reads the counter once more before it publishes TaskExit
//! (`OomCounter::catch_up` in `service/exit.rs`), so a kill that ended the init is always
//! reported before its exit, whichever runs first, and each kill once.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::process::cgroup::Cgroup;

/// Where a container's OOM kills are counted.
#[derive(Debug, Clone)]
pub struct OomSource {
    /// `memory.events` (v2) or `memory.oom_control` (v1).
    counter_file: PathBuf,
    v2: bool,
}

impl OomSource {
    /// The counter of `cg`'s memory controller, if it has one.
    pub fn of(cg: &Cgroup) -> Option<OomSource> {
        let (dir, v2) = match cg {
            Cgroup::V2(p) => (p.as_path(), true),
            Cgroup::V1(_) => (cg.dir("memory")?, false),
        };
        let counter_file = dir.join(if v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        });
        counter_file
            .exists()
            .then_some(OomSource { counter_file, v2 })
    }

    /// OOM kills so far (0 if the file is gone or has no counter).
    pub fn kills(&self) -> u64 {
        read_oom_kill(&self.counter_file)
    }

    /// A source of the kernel's notifications about this cgroup's memory (maybe not an OOM
    /// kill each time: callers re-read [`OomSource::kills`]).
    pub fn notifications(&self) -> std::io::Result<Notifier> {
        let fd: OwnedFd = if self.v2 {
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            ino.add_watch(&self.counter_file, AddWatchFlags::IN_MODIFY)?;
            // A duplicate shares the inotify instance (and its watch); the original closes.
            ino.as_fd().try_clone_to_owned()?
        } else {
            let efd = eventfd()?;
            let control = std::fs::File::open(&self.counter_file)?;
            let event_control = self
                .counter_file
                .parent()
                .unwrap_or(Path::new("/"))
                .join("cgroup.event_control");
            std::fs::write(
                &event_control,
                format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
            )?;
            // The registration lives as long as the eventfd; the control fd may close.
            efd
        };
        // SAFETY: the OwnedFd owns the descriptor and returns it from as_raw_fd until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Notifier { fd })
    }
}

/// Wake-ups from the kernel: an inotify fd (v2) or an eventfd (v1).
pub struct Notifier {
    fd: AsyncFd<OwnedFd>,
}

impl Notifier {
    /// The next notification (whatever is pending is drained).
    pub async fn next(&mut self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 1024];
            match nix::unistd::read(guard.get_inner().as_raw_fd(), &mut buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `oom_kill N` from a `memory.events` / `memory.oom_control` file.
pub fn read_oom_kill(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| parse_oom_kill(&t))
        .unwrap_or(0)
}

fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_for_both_versions() {
        let v2 = "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";
        assert_eq!(parse_oom_kill(v1), Some(4));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }
}
