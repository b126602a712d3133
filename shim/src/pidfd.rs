//! Exit waiting with pidfds.
//!
//! The shim is a child subreaper: container inits are reparented to it once the runtime
//! binary exits. Each init is waited for through its own pidfd (`waitid(P_PIDFD)`), never
//! a global `waitpid(-1)` that could take another waiter's status.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::SystemTime;

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
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a fresh fd that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
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
            match waitid_nohang(self.fd.get_ref().as_raw_fd())? {
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

fn waitid_nohang(fd: RawFd) -> std::io::Result<Option<u32>> {
    // SAFETY: zeroed siginfo is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a pidfd we own; info is a valid pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            fd as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled info (si_pid is 0 when nothing has exited yet).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match code {
        libc::CLD_EXITED => status as u32,
        _ => 128 + status as u32,
    }))
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
