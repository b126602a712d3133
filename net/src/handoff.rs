//! How `airlock-runtime net-attach` hands an attached pod network to the shim: one message on
//! a unix socket, the [`Attachment`] as JSON with the taps' descriptors (SCM_RIGHTS), in the
//! order of its interfaces. The netlink work runs in the runtime, so the shim that stays
//! resident per pod carries none of its code.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::PodNetwork;

/// The largest message (JSON) accepted.
const MAX: usize = 64 * 1024;
/// The most taps one message carries.
const MAX_TAPS: usize = 16;

/// An attached pod network: what the guest must take over, and the interfaces (by index in
/// the pod's namespace) whose redirects `net-detach` removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub network: PodNetwork,
    pub redirected: Vec<u32>,
}

pub fn send(sock: BorrowedFd, a: &Attachment, taps: &[OwnedFd]) -> std::io::Result<()> {
    let json = serde_json::to_vec(a).map_err(std::io::Error::other)?;
    if json.len() > MAX || taps.len() > MAX_TAPS {
        return Err(std::io::Error::other(
            "the pod's network is too large to hand over",
        ));
    }
    let fds: Vec<RawFd> = taps.iter().map(|t| t.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&json)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

pub fn receive(sock: BorrowedFd) -> std::io::Result<(Attachment, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX];
    let mut space = nix::cmsg_space!([RawFd; MAX_TAPS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut taps = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: descriptors just received are ours alone.
            taps.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Err(std::io::Error::other("no pod network was handed over"));
    }
    let a: Attachment = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
    if a.network.interfaces.len() != taps.len() {
        return Err(std::io::Error::other(format!(
            "{} interfaces but {} taps were handed over",
            a.network.interfaces.len(),
            taps.len()
        )));
    }
    Ok((a, taps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn an_attachment_and_its_taps_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let tap = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let sent = Attachment {
            network: PodNetwork {
                interfaces: vec![crate::Interface {
                    name: "eth0".into(),
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: 1500,
                    addresses: vec![],
                }],
                routes: vec![],
            },
            redirected: vec![4],
        };
        send(a.as_fd(), &sent, &[tap]).unwrap();
        let (got, taps) = receive(b.as_fd()).unwrap();
        assert_eq!(got, sent);
        assert_eq!(taps.len(), 1);
        drop(a);
        assert!(receive(b.as_fd()).is_err(), "nothing more comes");
    }
}
