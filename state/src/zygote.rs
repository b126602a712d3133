//! A pre-started `airlock-runtime` that waits for its command line: the "zygote".
//!
//! Executing the runtime costs about 1.3 ms before its `main` runs here (exec, static-pie
//! relocation, glibc's CPU probing) on every create and exec. The shim starts one runtime ahead
//! of need, with [`ARG`] as its only argument and one end of a `SOCK_SEQPACKET` socket pair as
//! its stdin. When a create or exec comes, the shim [`send`]s the command line and the three
//! stdio fds the runtime would have been started with, in one message; the zygote [`receive`]s
//! them, puts the fds at 0, 1 and 2, and runs that command line as if it had been started with
//! it. The shim waits for its exit status as for a runtime it started then.
//!
//! A zygote that gets no request within its idle time, or whose shim closes the socket, exits
//! with [`UNUSED`] without doing anything. The shim runs the request with a new process when it
//! sees that status (a request can cross the zygote's exit).

use std::ffi::{OsStr, OsString};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

/// The runtime's first and only argument when it is started as a zygote.
pub const ARG: &str = "--zygote";

/// Exit status of a zygote that ended without taking a request. The runtime itself exits with 0
/// or 1 only.
pub const UNUSED: u8 = 75;

/// Largest command line a request may carry.
const MAX_REQUEST: usize = 64 * 1024;

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec: (the shim's, the zygote's).
pub fn channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// The shim's side: hands `args` (the runtime's arguments, without the program name) and the
/// stdin, stdout and stderr it is to run with to the zygote at the other end of `sock`.
/// Fails (EPIPE, ECONNRESET) when the zygote has exited.
pub fn send(
    sock: BorrowedFd<'_>,
    args: &[OsString],
    stdio: [BorrowedFd<'_>; 3],
) -> std::io::Result<()> {
    let mut payload = Vec::new();
    for a in args {
        if a.as_bytes().contains(&0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument contains a NUL byte",
            ));
        }
        payload.extend_from_slice(a.as_bytes());
        payload.push(0);
    }
    if payload.len() > MAX_REQUEST {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the command line is longer than a zygote request may be",
        ));
    }
    let fds: [RawFd; 3] = stdio.map(|fd| fd.as_raw_fd());
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&payload)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != payload.len() {
        return Err(std::io::Error::other("the zygote request was cut short"));
    }
    Ok(())
}

/// A command line and its stdio, as the zygote received them (the fds are close-on-exec).
#[derive(Debug)]
pub struct Request {
    pub args: Vec<OsString>,
    pub stdio: [OwnedFd; 3],
}

/// The zygote's side: waits up to `idle` for one request on `sock`. None when none came in
/// that time or the shim closed its end.
pub fn receive(sock: BorrowedFd<'_>, idle: Duration) -> std::io::Result<Option<Request>> {
    let ms = u16::try_from(idle.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; MAX_REQUEST];
    let got = crate::fdpass::recv_with_fds(sock.as_raw_fd(), &mut buf)?;
    let (len, received) = (got.len, got.fds);
    if len == 0 && received.is_empty() {
        return Ok(None);
    }
    if got.truncated {
        return Err(std::io::Error::other("a zygote request was truncated"));
    }
    let stdio: [OwnedFd; 3] = received.try_into().map_err(|v: Vec<OwnedFd>| {
        std::io::Error::other(format!(
            "a zygote request carried {} fds instead of 3",
            v.len()
        ))
    })?;
    let payload = &buf[..len];
    let args = payload
        .strip_suffix(&[0])
        .map(|p| {
            p.split(|b| *b == 0)
                .map(|a| OsStr::from_bytes(a).to_os_string())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Request { args, stdio }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    #[test]
    fn a_request_carries_the_command_line_and_three_working_fds() {
        let (shim, zygote) = channel().unwrap();
        let pipes = [pipe(), pipe(), pipe()];
        let args: Vec<OsString> = ["--root", "/run/airlock/x", "create", "", "c1"]
            .iter()
            .map(OsString::from)
            .collect();
        send(
            shim.as_fd(),
            &args,
            [pipes[0].1.as_fd(), pipes[1].1.as_fd(), pipes[2].1.as_fd()],
        )
        .unwrap();
        let req = receive(zygote.as_fd(), Duration::from_secs(5))
            .unwrap()
            .expect("a request");
        assert_eq!(req.args, args);
        for (i, fd) in req.stdio.into_iter().enumerate() {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(
                flags & nix::fcntl::FdFlag::FD_CLOEXEC.bits(),
                0,
                "received fds are close-on-exec"
            );
            let mut w = std::fs::File::from(fd);
            write!(w, "fd{i}").unwrap();
        }
        for (i, (r, w)) in pipes.into_iter().enumerate() {
            drop(w);
            let mut r = r;
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            assert_eq!(s, format!("fd{i}"), "each fd is the one sent in its place");
        }
    }

    #[test]
    fn no_request_within_the_idle_time_or_a_closed_shim_end_is_none() {
        let (shim, zygote) = channel().unwrap();
        let t = std::time::Instant::now();
        assert!(receive(zygote.as_fd(), Duration::from_millis(30))
            .unwrap()
            .is_none());
        assert!(t.elapsed() >= Duration::from_millis(30));
        drop(shim);
        assert!(receive(zygote.as_fd(), Duration::from_secs(5))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_request_without_its_three_fds_is_refused() {
        let (shim, zygote) = channel().unwrap();
        sendmsg::<()>(
            shim.as_raw_fd(),
            &[IoSlice::new(b"state\0c1\0")],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let err = receive(zygote.as_fd(), Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("0 fds instead of 3"), "{err}");
    }

    #[test]
    fn sending_to_a_zygote_that_is_gone_fails() {
        let (shim, zygote) = channel().unwrap();
        drop(zygote);
        let (r, _w) = pipe();
        let err = send(
            shim.as_fd(),
            &[OsString::from("state")],
            [r.as_fd(), r.as_fd(), r.as_fd()],
        )
        .unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::EPIPE as i32),
            "{err}"
        );
    }
}
