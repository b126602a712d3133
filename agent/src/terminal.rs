//! A process's terminal in the guest: a pty whose slave is the process's stdin, stdout and
//! stderr and its controlling terminal (in a session of its own); the agent keeps the master,
//! forwards what it reads as the process's stdout, writes the host's input into it and sets
//! its size.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

/// A pty pair, before the process starts.
pub struct Pty {
    pub master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    pub fn open() -> io::Result<Pty> {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds into the integers; the other arguments may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openpty returned two open fds that nothing else owns.
        let (master, slave) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
        };
        for fd in [&master, &slave] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
        }
        Ok(Pty { master, slave })
    }

    /// The slave as the process's stdin, stdout and stderr.
    pub fn stdio(&self) -> io::Result<[Stdio; 3]> {
        Ok([
            Stdio::from(self.slave.try_clone()?),
            Stdio::from(self.slave.try_clone()?),
            Stdio::from(self.slave.try_clone()?),
        ])
    }

    /// A reader and a writer of the master.
    pub fn master_io(&self) -> io::Result<(File, File)> {
        Ok((
            File::from(self.master.try_clone()?),
            File::from(self.master.try_clone()?),
        ))
    }
}

/// In the child, after its stdio is the slave: a session of its own, with the slave as its
/// controlling terminal.
///
/// # Safety
/// Call only in a forked child before its exec.
pub unsafe fn take_as_controlling_terminal() -> io::Result<()> {
    if libc::setsid() < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the size of the terminal whose master is `master` (its foreground process group gets
/// SIGWINCH).
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which outlives the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's end-of-input character (VEOF) while it is in canonical mode; None in raw
/// mode.
pub fn eof_char(master: &OwnedFd) -> Option<u8> {
    // SAFETY: tcgetattr fills the termios, which we own.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } != 0 {
        return None;
    }
    (t.c_lflag & libc::ICANON != 0).then_some(t.c_cc[libc::VEOF])
}
