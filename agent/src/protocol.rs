//! The control protocol between the shim (host) and `airlock-agent` (guest).
//!
//! It runs over one virtio-serial port named [`PORT_NAME`], which needs no vsock (this
//! machine's kernel has no `/dev/vhost-vsock`). Each frame is a little-endian `u32` length
//! followed by that many bytes of JSON; a frame over [`MAX_FRAME`] is refused, so neither
//! side can be made to allocate without bound. The agent sends [`Ready`] first, once its
//! port is open; after that the host sends [`Request`]s and reads one [`Response`] each, in
//! order.

use std::io::{self, Read, Write};

use airlock_contract::ErrorKind;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The name of the control port (QEMU's `virtserialport,name=`).
pub const PORT_NAME: &str = "airlock.ctl";
/// The protocol's version: the agent's [`Ready`] carries it, and the host refuses another.
pub const VERSION: u32 = 1;
/// The largest frame either side reads.
pub const MAX_FRAME: u32 = 1 << 20;

/// The agent's first frame: it is up and serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub version: u32,
    /// Guest time (CLOCK_BOOTTIME) when the agent started, when its kernel modules were
    /// loaded and when its port was open, in milliseconds since the guest kernel booted.
    pub init_ms: u64,
    pub modules_ms: u64,
    pub port_ms: u64,
}

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Answered by [`Response::Pong`].
    Ping,
    /// Mounts the virtio-fs share `tag` at `target` in the guest.
    Mount {
        tag: String,
        target: String,
        read_only: bool,
    },
    /// Syncs and powers the guest off; answered before it does.
    Shutdown,
}

/// The agent's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Ok,
    Pong {
        /// Guest time (CLOCK_BOOTTIME) in milliseconds.
        uptime_ms: u64,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control channel: {0}")]
    Io(#[from] io::Error),
    #[error("control channel: a frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(u64),
    #[error("control channel: a frame is not a valid message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("control channel: closed by the other side")]
    Closed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Writes `msg` as one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg)?;
    if body.len() as u64 > MAX_FRAME as u64 {
        return Err(Error::TooLarge(body.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame as a `T`; [`Error::Closed`] at a clean end of the stream.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(Error::TooLarge(len as u64));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        let back: T = read_frame(&mut Cursor::new(buf)).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn messages_survive_a_frame() {
        round_trip(Request::Ping);
        round_trip(Request::Mount {
            tag: "rootfs".into(),
            target: "/run/c/rootfs".into(),
            read_only: true,
        });
        round_trip(Request::Shutdown);
        round_trip(Response::Pong { uptime_ms: 7 });
        round_trip(Response::Error {
            kind: ErrorKind::NotFound,
            message: "no share named rootfs".into(),
        });
        round_trip(Ready {
            version: VERSION,
            init_ms: 1,
            modules_ms: 2,
            port_ms: 3,
        });
    }

    #[test]
    fn the_wire_form_is_a_length_and_tagged_json() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Ping).unwrap();
        assert_eq!(buf[..4], 13u32.to_le_bytes());
        assert_eq!(&buf[4..], br#"{"op":"ping"}"#);
    }

    #[test]
    fn an_oversized_or_cut_frame_is_refused() {
        let mut buf = (MAX_FRAME + 1).to_le_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame::<_, Request>(&mut Cursor::new(buf)),
            Err(Error::TooLarge(_))
        ));
        let mut cut = 20u32.to_le_bytes().to_vec();
        cut.extend_from_slice(br#"{"op":"#);
        assert!(matches!(
            read_frame::<_, Request>(&mut Cursor::new(cut)),
            Err(Error::Io(_))
        ));
        assert!(matches!(
            read_frame::<_, Request>(&mut Cursor::new(Vec::new())),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn unknown_requests_and_fields_are_refused() {
        for body in [
            r#"{"op":"format_disk"}"#,
            r#"{"op":"mount","tag":"a","target":"/b","read_only":true,"uid":0}"#,
        ] {
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(body.as_bytes());
            assert!(matches!(
                read_frame::<_, Request>(&mut Cursor::new(buf)),
                Err(Error::Decode(_))
            ));
        }
    }
}
