//! The control protocol between the shim (host) and `airlock-agent` (guest).
//!
//! It runs over one virtio-serial port named [`PORT_NAME`], which needs no vsock (this
//! machine's kernel has no `/dev/vhost-vsock`). Each frame is a little-endian `u32` length
//! followed by that many bytes of JSON; a frame over [`MAX_FRAME`] is refused, so neither
//! side can be made to allocate without bound. The agent sends [`Ready`] first, once its
//! port is open. After that the host sends [`Call`]s, and the agent sends [`FromAgent`]
//! messages: one [`FromAgent::Reply`] per call (carrying the call's id, in any order), and,
//! unasked, the output and the exit of the processes it runs. A process's
//! [`FromAgent::Exited`] comes after all of its output.

use std::io::{self, Read, Write};

use airlock_contract::ErrorKind;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Where the guest mounts the pod's virtio-fs share: each container's root is
/// `SHARE_ROOT/ID`, and the sources of its bind mounts `SHARE_ROOT/ID.m/N`.
pub const SHARE_ROOT: &str = "/run/shared";

/// The name of the control port (QEMU's `virtserialport,name=`).
pub const PORT_NAME: &str = "airlock.ctl";
/// The protocol's version: the agent's [`Ready`] carries it, and the host refuses another.
pub const VERSION: u32 = 4;
/// The most output bytes one [`FromAgent::Output`] carries.
pub const OUTPUT_CHUNK: usize = 32 * 1024;
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

/// A request and the id its reply carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub id: u64,
    pub request: Request,
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
    /// Gives the pod's network (its interfaces' addresses, MTU and routes) to the guest's
    /// NICs, found by MAC, and brings loopback up.
    Network { network: airlock_net::PodNetwork },
    /// Starts a process named `process` (unique among the agent's running processes) with
    /// `root` as its root directory and `cwd` as its working directory in it; answered by
    /// [`Response::Started`], then its output and exit come as [`FromAgent`] messages.
    Run {
        process: String,
        args: Vec<String>,
        /// `NAME=value` entries: the process's whole environment.
        env: Vec<String>,
        root: String,
        cwd: String,
        /// Its stdin, stdout and stderr.
        io: Io,
        /// What confines it (the same policy the process sandbox applies).
        confine: Box<Confinement>,
    },
    /// Writes `data` to the stdin of running process `process`; answered once written.
    Input {
        process: String,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Closes the stdin of `process` once what was given before is written.
    CloseInput { process: String },
    /// Sets the size of the terminal of `process` (one started with [`Io::Terminal`]).
    Resize {
        process: String,
        rows: u16,
        cols: u16,
    },
    /// Makes the guest cgroup `cgroup` (one path component under the guest's cgroup v2
    /// root) if it does not exist, and sets its limits; a limit left `None` is unchanged.
    Limits { cgroup: String, limits: Limits },
    /// Removes the guest cgroup `cgroup` once its processes are gone.
    RemoveCgroup { cgroup: String },
    /// Freezes (pause) or thaws (resume) every process of guest cgroup `cgroup`.
    Freeze { cgroup: String, frozen: bool },
    /// The contents of guest cgroup `cgroup`'s files that the host's metrics and Task.Pids
    /// read; answered by [`Response::Cgroup`].
    ReadCgroup { cgroup: String },
    /// Sends `signal` to a running process.
    Signal { process: String, signal: i32 },
    /// Syncs and powers the guest off; answered before it does.
    Shutdown,
}

/// A process's stdin, stdout and stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Io {
    /// Output through pipes ([`FromAgent::Output`]); stdin is /dev/null.
    #[default]
    Pipes,
    /// The same, and a stdin that [`Request::Input`] feeds.
    PipesAndStdin,
    /// A terminal: its output comes as stdout, [`Request::Input`] is typed into it, and
    /// [`Request::Resize`] sets its size.
    Terminal,
}

/// How a process run by [`Request::Run`] is confined: each field left at its default leaves
/// the agent's own (root, every capability, no filter, the agent's namespaces and cgroup).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    /// Its mount, PID, UTS and IPC namespaces.
    pub namespaces: Option<Namespaces>,
    /// File systems mounted in new namespaces before the process is chrooted: the spec's
    /// kernel file systems (proc, sysfs, tmpfs, devpts, mqueue), in order.
    pub mounts: Vec<GuestMount>,
    /// Paths inside the root made read-only (`linux.readonlyPaths`), then hidden
    /// (`linux.maskedPaths`: /dev/null over a file, an empty read-only tmpfs over a
    /// directory), after the mounts; new namespaces only.
    pub readonly_paths: Vec<String>,
    pub masked_paths: Vec<String>,
    /// The root is made read-only after the mounts (whose mount points may have had to be
    /// made in it); new namespaces only.
    #[serde(default)]
    pub read_only_root: bool,
    /// The guest cgroup (made by [`Request::Limits`]) the process joins.
    pub cgroup: Option<String>,
    pub user: Option<User>,
    pub capabilities: Option<Capabilities>,
    pub no_new_privs: bool,
    /// Seccomp programs (arrays of `struct sock_filter` in the guest's byte order), installed
    /// in order just before the exec, after everything else.
    #[serde(with = "base64_list")]
    pub seccomp: Vec<Vec<u8>>,
}

/// The namespaces of a container's processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Namespaces {
    /// New mount, PID, UTS and IPC namespaces (a container's init: PID 1 in its own).
    New { hostname: Option<String> },
    /// Those of the running process named `process` (an exec joins its container's init).
    Join { process: String },
}

/// A file system mounted at `target` (an absolute path inside the container's root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestMount {
    pub target: String,
    /// A file system type, or `bind` for a bind mount of `source`.
    pub fstype: String,
    /// A bind mount's source: a path on the pod's share (under [`SHARE_ROOT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `MS_*` flags.
    pub flags: u64,
    /// The file system's own options (`mode=755,size=65536k`).
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Capability sets; bit N is capability N. Capabilities outside `bounding` are dropped from
/// the bounding set, so not even a set-uid-root program gets them back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Cgroup v2 limits of a guest cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `memory.max` in bytes; -1 for no limit.
    pub memory_max: Option<i64>,
    /// `memory.swap.max` in bytes; -1 for no limit.
    pub swap_max: Option<i64>,
    /// `pids.max`; -1 for no limit.
    pub pids_max: Option<i64>,
    /// `cpu.max`: quota (-1 for none) and period, in microseconds.
    pub cpu_max: Option<(i64, u64)>,
    /// `cpu.weight` (1 to 10000).
    pub cpu_weight: Option<u64>,
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
    Started {
        /// The process's pid in the guest.
        pid: u32,
    },
    /// A cgroup's files, by name (those that exist).
    Cgroup {
        files: std::collections::BTreeMap<String, String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Which output of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the agent sends after [`Ready`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromAgent {
    /// The answer to the call with this id.
    Reply { id: u64, response: Response },
    /// Output of a process, at most [`OUTPUT_CHUNK`] bytes.
    Output {
        process: String,
        stream: Stream,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// A process ended: its exit code, or 128 + the signal that killed it (containerd's
    /// convention). After all its output.
    Exited { process: String, status: u32 },
    /// The OOM kills counted in guest cgroup `cgroup` so far went up to `kills`. Before the
    /// [`FromAgent::Exited`] of any process that such a kill ended.
    Oom { cgroup: String, kills: u64 },
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod base64_list {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let engine = &base64::engine::general_purpose::STANDARD;
        s.collect_seq(data.iter().map(|d| engine.encode(d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
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
        round_trip(Request::Network {
            network: airlock_net::PodNetwork {
                interfaces: vec![airlock_net::Interface {
                    name: "eth0".into(),
                    mac: [10, 88, 0, 0, 0, 7],
                    mtu: 1500,
                    addresses: vec![airlock_net::Cidr {
                        ip: "10.88.0.7".parse().unwrap(),
                        prefix: 24,
                    }],
                }],
                routes: vec![airlock_net::Route {
                    destination: None,
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: 0,
                }],
            },
        });
        round_trip(Request::Shutdown);
        round_trip(Call {
            id: 9,
            request: Request::Run {
                process: "init".into(),
                args: vec!["/bin/sh".into()],
                env: vec!["PATH=/bin".into()],
                root: "/run/c/rootfs".into(),
                cwd: "/".into(),
                io: Io::Terminal,
                confine: Box::new(Confinement {
                    namespaces: Some(Namespaces::Join {
                        process: "c1".into(),
                    }),
                    mounts: vec![GuestMount {
                        target: "/proc".into(),
                        fstype: "proc".into(),
                        source: None,
                        flags: 14,
                        data: String::new(),
                    }],
                    readonly_paths: vec!["/proc/sys".into()],
                    masked_paths: vec!["/proc/kcore".into()],
                    read_only_root: true,
                    cgroup: Some("c1".into()),
                    user: Some(User {
                        uid: 1000,
                        gid: 1000,
                        additional_gids: vec![10],
                    }),
                    capabilities: Some(Capabilities::default()),
                    no_new_privs: true,
                    seccomp: vec![vec![6, 0, 0, 0, 0, 0, 0xff, 0x7f]],
                }),
            },
        });
        round_trip(Request::Limits {
            cgroup: "c1".into(),
            limits: Limits {
                memory_max: Some(64 << 20),
                cpu_max: Some((50_000, 100_000)),
                ..Limits::default()
            },
        });
        round_trip(FromAgent::Output {
            process: "init".into(),
            stream: Stream::Stderr,
            data: vec![0, 255, b'\n'],
        });
        round_trip(FromAgent::Exited {
            process: "init".into(),
            status: 137,
        });
        round_trip(FromAgent::Oom {
            cgroup: "c1".into(),
            kills: 2,
        });
        round_trip(Request::Input {
            process: "c1".into(),
            data: b"line\n".to_vec(),
        });
        round_trip(Request::Resize {
            process: "c1".into(),
            rows: 24,
            cols: 80,
        });
        round_trip(Request::Freeze {
            cgroup: "c1".into(),
            frozen: true,
        });
        round_trip(Response::Cgroup {
            files: [("pids.current".to_string(), "3\n".to_string())].into(),
        });
        round_trip(FromAgent::Reply {
            id: 9,
            response: Response::Started { pid: 42 },
        });
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
