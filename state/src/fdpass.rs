//! Receiving descriptors passed over a unix socket (SCM_RIGHTS), for the zygote's requests and
//! the console socket's pty master.

use std::io::IoSliceMut;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// What one [`recv_with_fds`] got.
pub struct Received {
    /// Bytes of data, at the start of the caller's buffer.
    pub len: usize,
    /// The descriptors, close-on-exec, in the order sent.
    pub fds: Vec<OwnedFd>,
    /// Whether the data or the descriptors did not all fit (MSG_TRUNC, MSG_CTRUNC).
    pub truncated: bool,
}

/// The most descriptors one message may carry; more set [`Received::truncated`].
pub const MAX_FDS: usize = 4;

/// Receives one message into `buf`, with up to [`MAX_FDS`] descriptors.
pub fn recv_with_fds(socket: RawFd, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors in this process for us; nothing
            // else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated: msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
    })
}
