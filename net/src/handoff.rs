//! How `airlock-runtime net-attach` hands an attached pod network to the shim: one message on
//! a unix socket, the [`Attachment`] as JSON with the taps' descriptors (SCM_RIGHTS), in the
//! order of its interfaces. The netlink work runs in the runtime, so the shim that stays
//! resident per pod carries none of its code.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::PodNetwork;

/// The largest message (JSON) accepted.
const MAX: usize = 64 * 1024;
/// The most taps one message carries.
const MAX_TAPS: usize = airlock_state::fdpass::MAX_FDS;

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
    let got = airlock_state::fdpass::recv_with_fds(sock.as_raw_fd(), &mut buf)?;
    if got.truncated {
        return Err(std::io::Error::other(format!(
            "the pod's network did not fit one message (at most {MAX_TAPS} interfaces)"
        )));
    }
    if got.len == 0 {
        return Err(std::io::Error::other("no pod network was handed over"));
    }
    let a: Attachment = serde_json::from_slice(&buf[..got.len]).map_err(std::io::Error::other)?;
    if a.network.interfaces.len() != got.fds.len() {
        return Err(std::io::Error::other(format!(
            "{} interfaces but {} taps were handed over",
            a.network.interfaces.len(),
            got.fds.len()
        )));
    }
    Ok((a, got.fds))
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
