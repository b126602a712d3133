//! Exit waiting with pidfds.
//!
//! The shim is a child subreaper: container inits are reparented to it once the runtime
//! binary exits. Each init is waited for through its own pidfd (`waitid(P_PIDFD)`), never
//! a global `waitpid(-1)` that could take another waiter's status.
//!
//! `pidfd_open` and `waitid(P_PIDFD)` go through rustix. The signal stays a plain
//! `pidfd_send_signal` syscall: rustix's `Signal` has no value for signal 0 (the existence
//! check `kill -0` sends) and takes real-time signals only through an unsafe constructor, and
//! the Task API passes any signal number on.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::SystemTime;

use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use tokio::io::unix::AsyncFd;

/// A process handle that cannot be confused with a recycled pid.
#[derive(Debug)]
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
}

pub use crate::sandbox::ExitInfo;

impl PidFd {
    /// Open a pidfd; must run inside the tokio runtime.
    pub fn open(pid: i32) -> std::io::Result<PidFd> {
        let target = Pid::from_raw(pid).ok_or(std::io::ErrorKind::InvalidInput)?;
        let fd = rustix::process::pidfd_open(target, PidfdFlags::empty())?;
        // SAFETY: OwnedFd owns the pidfd and returns it from as_raw_fd until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send a signal; ESRCH means the process has already exited.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait for the process to exit and reap it.
    pub async fn wait(&self) -> std::io::Result<ExitInfo> {
        loop {
            let mut guard = self.fd.readable().await?;
            match waitid_nohang(self.fd.get_ref())? {
                Some(status) => {
                    return Ok(ExitInfo {
                        status,
                        at: SystemTime::now(),
                    })
                }
                None => guard.clear_ready(),
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::sandbox::Process for PidFd {
    fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        PidFd::signal(self, signal)
    }

    async fn wait(&self) -> std::io::Result<ExitInfo> {
        PidFd::wait(self).await
    }
}

/// The exit status of the pidfd's process if it has exited (reaping it), in containerd's
/// terms: the exit code, or 128 + the signal that ended it.
fn waitid_nohang(fd: &OwnedFd) -> std::io::Result<Option<u32>> {
    let status = rustix::process::waitid(
        WaitId::PidFd(fd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )?;
    Ok(
        status.map(|s| match (s.exit_status(), s.terminating_signal()) {
            (Some(code), _) => code as u32,
            (None, Some(signal)) => 128 + signal as u32,
            (None, None) => 255,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The children are reaped through their pidfds, not through `Child::wait`.
    #[tokio::test]
    #[allow(clippy::zombie_processes)]
    async fn exit_status_of_a_child() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pfd = PidFd::open(child.id() as i32).unwrap();
        assert_eq!(pfd.wait().await.unwrap().status, 7);
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)]
    async fn killed_child_reports_128_plus_signal() {
        let child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pfd = PidFd::open(child.id() as i32).unwrap();
        pfd.signal(libc::SIGKILL).unwrap();
        assert_eq!(pfd.wait().await.unwrap().status, 137);
    }
}
