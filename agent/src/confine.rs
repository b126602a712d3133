//! Confining a process in the guest: the second wall of the microVM mode. The shim sends the
//! same policy the process sandbox applies on the host ([`Confinement`]); the agent applies it
//! between the fork and the exec of each container process:
//!
//! 1. namespaces: a container's init gets new mount, PID, UTS and IPC namespaces (it is PID 1
//!    in its own); an exec joins its init's;
//! 2. the guest cgroup carrying the container's limits;
//! 3. the spec's kernel file systems (proc, sysfs, tmpfs, devpts, mqueue) mounted inside the
//!    container's root, and the standard device nodes in a tmpfs `/dev`;
//! 4. chroot to the container's root and chdir;
//! 5. the bounding set, then user and groups, then the other capability sets;
//! 6. `no_new_privs`, then the seccomp programs, last before the exec.
//!
//! Everything the child needs is opened and allocated in [`Prepared::new`], before the fork:
//! between the fork and the exec the child only makes system calls.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use airlock_contract::ErrorKind;

use crate::protocol::{Capabilities, Confinement, Namespaces, Response};

/// Device nodes made in a tmpfs mounted at `/dev`: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// Links made in a tmpfs `/dev`: name, target.
const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

fn cstring(s: &str) -> Result<CString, Response> {
    CString::new(s).map_err(|_| Response::Error {
        kind: ErrorKind::InvalidArgument,
        message: format!("{s:?} contains a NUL byte"),
    })
}

fn refused(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

struct Mount {
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: CString,
    /// The device nodes and links to make in it (a tmpfs at `/dev`).
    devices: Vec<(CString, libc::dev_t)>,
    links: Vec<(CString, CString)>,
    /// A bind mount's source on the share, and whether it is a file (its mount point is made
    /// as one).
    bind: Option<(CString, bool)>,
    /// The directories above the target inside the root, outermost first: made where
    /// missing, as runc does (a pause image has no `/etc` for CRI's `/etc/hosts`).
    parents: Vec<CString>,
}

enum NamespacesIn {
    Keep,
    New {
        hostname: Option<CString>,
    },
    /// The init's IPC, UTS and mount namespaces (in that order), and its PID namespace.
    Join {
        fds: [OwnedFd; 3],
        pid: OwnedFd,
    },
}

/// A [`Confinement`] made ready for a child: paths as C strings, namespaces and the cgroup
/// opened, seccomp programs decoded.
pub struct Prepared {
    namespaces: NamespacesIn,
    mounts: Vec<Mount>,
    readonly: Vec<CString>,
    masked: Vec<CString>,
    read_only_root: bool,
    cgroup_procs: Option<OwnedFd>,
    root: CString,
    cwd: CString,
    user: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    capabilities: Option<Capabilities>,
    last_cap: u32,
    no_new_privs: bool,
    seccomp: Vec<Vec<libc::sock_filter>>,
}

/// The highest capability number the running kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn open(path: &str) -> Result<OwnedFd, Response> {
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
    rustix::fs::open(path, flags, rustix::fs::Mode::empty()).map_err(|e| {
        refused(
            ErrorKind::FailedPrecondition,
            format!("opening {path}: {e}"),
        )
    })
}

fn decode_seccomp(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, Response> {
    let program = airlock_contract::bpf::decode(bytes).map_err(|m| {
        refused(
            ErrorKind::InvalidArgument,
            format!("a seccomp program: {m}"),
        )
    })?;
    Ok(program
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

impl Prepared {
    /// Prepares `confine` for a process rooted at `root` (a guest path) in `cwd`; `join_pid`
    /// is the pid of the process whose namespaces [`Namespaces::Join`] names.
    pub fn new(
        confine: &Confinement,
        root: &str,
        cwd: &str,
        join_pid: Option<u32>,
    ) -> Result<Prepared, Response> {
        let namespaces = match &confine.namespaces {
            None => NamespacesIn::Keep,
            Some(Namespaces::New { hostname }) => NamespacesIn::New {
                hostname: hostname.as_deref().map(cstring).transpose()?,
            },
            Some(Namespaces::Join { process }) => {
                let pid = join_pid.ok_or_else(|| {
                    refused(
                        ErrorKind::NotFound,
                        format!("no running process named {process} to join"),
                    )
                })?;
                let ns = |n: &str| open(&format!("/proc/{pid}/ns/{n}"));
                NamespacesIn::Join {
                    fds: [ns("ipc")?, ns("uts")?, ns("mnt")?],
                    pid: ns("pid")?,
                }
            }
        };
        let mounting = !confine.mounts.is_empty()
            || confine.read_only_root
            || !confine.readonly_paths.is_empty()
            || !confine.masked_paths.is_empty();
        if mounting && !matches!(namespaces, NamespacesIn::New { .. }) {
            return Err(refused(
                ErrorKind::InvalidArgument,
                "mounts are made only in new namespaces (a container's init)".into(),
            ));
        }
        let inside = |p: &str| -> Result<CString, Response> {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(refused(
                    ErrorKind::InvalidArgument,
                    format!("{p:?} is not an absolute path inside the root"),
                ));
            }
            cstring(&format!("{}{p}", root.trim_end_matches('/')))
        };
        let readonly = confine
            .readonly_paths
            .iter()
            .map(|p| inside(p))
            .collect::<Result<_, _>>()?;
        let masked = confine
            .masked_paths
            .iter()
            .map(|p| inside(p))
            .collect::<Result<_, _>>()?;
        let mut mounts = Vec::new();
        for m in &confine.mounts {
            if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
                return Err(refused(
                    ErrorKind::InvalidArgument,
                    format!(
                        "mount target {:?} is not an absolute path inside the root",
                        m.target
                    ),
                ));
            }
            let target = format!("{}{}", root.trim_end_matches('/'), m.target);
            let dev = m.target == "/dev" && m.fstype == "tmpfs";
            let bind = match (m.fstype.as_str(), &m.source) {
                ("bind", Some(source)) => Some(bind_source(source)?),
                ("bind", None) => {
                    return Err(refused(
                        ErrorKind::InvalidArgument,
                        format!("the bind mount at {:?} has no source", m.target),
                    ))
                }
                _ => None,
            };
            mounts.push(Mount {
                target: cstring(&target)?,
                fstype: cstring(&m.fstype)?,
                flags: m.flags as libc::c_ulong,
                data: cstring(&m.data)?,
                devices: if dev {
                    DEVICES
                        .iter()
                        .map(|(n, major, minor)| {
                            Ok((
                                cstring(&format!("{target}/{n}"))?,
                                libc::makedev(*major, *minor),
                            ))
                        })
                        .collect::<Result<_, Response>>()?
                } else {
                    Vec::new()
                },
                links: if dev {
                    LINKS
                        .iter()
                        .map(|(n, to)| Ok((cstring(&format!("{target}/{n}"))?, cstring(to)?)))
                        .collect::<Result<_, Response>>()?
                } else {
                    Vec::new()
                },
                parents: if bind.is_some() {
                    let parts: Vec<&str> = m.target.split('/').filter(|c| !c.is_empty()).collect();
                    (1..parts.len())
                        .map(|n| {
                            cstring(&format!(
                                "{}/{}",
                                root.trim_end_matches('/'),
                                parts[..n].join("/")
                            ))
                        })
                        .collect::<Result<_, Response>>()?
                } else {
                    Vec::new()
                },
                bind,
            });
        }
        let cgroup_procs = match &confine.cgroup {
            None => None,
            Some(name) => {
                let dir = crate::cgroups::path(name)
                    .map_err(|m| refused(ErrorKind::InvalidArgument, m))?;
                let procs = dir.join("cgroup.procs");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|e| {
                        refused(
                            ErrorKind::FailedPrecondition,
                            format!("cgroup {name} (set its limits first): {e}"),
                        )
                    })?;
                Some(OwnedFd::from(f))
            }
        };
        Ok(Prepared {
            namespaces,
            mounts,
            readonly,
            masked,
            read_only_root: confine.read_only_root,
            cgroup_procs,
            root: cstring(root)?,
            cwd: cstring(cwd)?,
            user: confine
                .user
                .as_ref()
                .map(|u| (u.uid, u.gid, u.additional_gids.clone())),
            capabilities: confine.capabilities,
            last_cap: last_cap(),
            no_new_privs: confine.no_new_privs,
            seccomp: confine
                .seccomp
                .iter()
                .map(|p| decode_seccomp(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Runs `spawn` (which forks) on a thread of its own whose children are born in the
    /// process's PID namespace: a new one (the child is its PID 1) or the init's.
    pub fn spawn<T: std::marker::Send>(
        &self,
        spawn: impl FnOnce() -> io::Result<T> + std::marker::Send,
    ) -> io::Result<T> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .spawn_scoped(s, || {
                    // SAFETY: plain unshare/setns on this thread, which ends after the spawn.
                    match &self.namespaces {
                        NamespacesIn::Keep => {}
                        NamespacesIn::New { .. } => {
                            check(unsafe { libc::unshare(libc::CLONE_NEWPID) })?
                        }
                        NamespacesIn::Join { pid, .. } => {
                            check(unsafe { libc::setns(pid.as_raw_fd(), libc::CLONE_NEWPID) })?
                        }
                    }
                    spawn()
                })?
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
        })
    }

    /// Applies the confinement in the child, between the fork and the exec.
    ///
    /// # Safety
    /// Call only in a forked child before its exec: it changes the calling process for good
    /// and must not allocate.
    pub unsafe fn apply_in_child(&self) -> io::Result<()> {
        // A session and process group of its own (a terminal's child has made one already):
        // `kill(0, ...)` in one container reaches no other, nor the agent.
        if libc::getsid(0) != libc::getpid() {
            check(libc::setsid())?;
        }
        match &self.namespaces {
            NamespacesIn::Keep => {}
            NamespacesIn::New { hostname } => {
                check(libc::unshare(
                    libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
                ))?;
                // Nothing mounted in the container propagates back to the agent.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                if let Some(h) = hostname {
                    check(libc::sethostname(h.as_ptr(), h.as_bytes().len()))?;
                }
            }
            NamespacesIn::Join { fds, .. } => {
                for fd in fds {
                    check(libc::setns(fd.as_raw_fd(), 0))?;
                }
            }
        }
        if let Some(fd) = &self.cgroup_procs {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // The device nodes get exactly their modes.
        let umask = libc::umask(0);
        for m in &self.mounts {
            if let Some((source, file)) = &m.bind {
                for dir in &m.parents {
                    libc::mkdir(dir.as_ptr(), 0o755);
                }
                bind_mount(source, &m.target, *file, m.flags)?;
                continue;
            }
            // The mount point may be missing; a read-only root cannot get it made.
            libc::mkdir(m.target.as_ptr(), 0o755);
            let r = libc::mount(
                m.fstype.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                m.data.as_ptr().cast(),
            );
            if r != 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            for (path, dev) in &m.devices {
                check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev))?;
            }
            for (path, to) in &m.links {
                check(libc::symlink(to.as_ptr(), path.as_ptr()))?;
            }
        }
        libc::umask(umask);
        if self.read_only_root {
            // A mount of its own (with the submounts just made), made read-only: the
            // submounts keep their own flags.
            check(libc::mount(
                self.root.as_ptr(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
        }
        for path in &self.readonly {
            let flags = libc::MS_BIND | libc::MS_REC;
            if !bind(path.as_ptr(), path.as_ptr(), flags)? {
                continue;
            }
            let ro = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            check(libc::mount(
                std::ptr::null(),
                path.as_ptr(),
                std::ptr::null(),
                ro,
                std::ptr::null(),
            ))?;
        }
        for path in &self.masked {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(path.as_ptr(), &mut st) != 0 {
                continue; // nothing there to hide
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=0".as_ptr().cast(),
                ))?;
            } else {
                bind(c"/dev/null".as_ptr(), path.as_ptr(), libc::MS_BIND)?;
            }
        }
        check(libc::chroot(self.root.as_ptr()))?;
        check(libc::chdir(self.cwd.as_ptr()))?;
        if let Some(caps) = &self.capabilities {
            for cap in 0..=self.last_cap {
                if cap >= 64 || caps.bounding & (1 << cap) == 0 {
                    check(libc::prctl(
                        libc::PR_CAPBSET_DROP,
                        cap as libc::c_ulong,
                        0,
                        0,
                        0,
                    ))?;
                }
            }
        }
        if let Some((uid, gid, groups)) = &self.user {
            // Raw system calls: the C library's wrappers would coordinate threads this
            // child does not have.
            check_long(libc::syscall(
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr(),
            ))?;
            check_long(libc::syscall(libc::SYS_setgid, *gid))?;
            if self.capabilities.is_some() {
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            }
            check_long(libc::syscall(libc::SYS_setuid, *uid))?;
        }
        if let Some(caps) = &self.capabilities {
            set_capabilities(caps)?;
        }
        if self.no_new_privs || !self.seccomp.is_empty() {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        for prog in &self.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            check_long(libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            ))?;
        }
        Ok(())
    }
}

/// A bind mount's source: a path on the pod's share (the shim bound the host path there),
/// and whether it is a file.
fn bind_source(source: &str) -> Result<(CString, bool), Response> {
    let on_share = source
        .strip_prefix(crate::protocol::SHARE_ROOT)
        .is_some_and(|rest| rest.starts_with('/'));
    if !on_share || source.split('/').any(|c| c == "..") {
        return Err(refused(
            ErrorKind::InvalidArgument,
            format!(
                "bind source {source:?} is not on the pod's share ({})",
                crate::protocol::SHARE_ROOT
            ),
        ));
    }
    let meta = std::fs::metadata(source).map_err(|e| {
        refused(
            ErrorKind::NotFound,
            format!("bind source {source:?} on the pod's share: {e}"),
        )
    })?;
    Ok((cstring(source)?, !meta.is_dir()))
}

/// Binds `source` on `target` (made, as a file or a directory, where missing), then applies
/// `flags` (read-only, nosuid, ...) to the bind.
///
/// # Safety
/// As [`Prepared::apply_in_child`].
unsafe fn bind_mount(
    source: &CString,
    target: &CString,
    file: bool,
    flags: libc::c_ulong,
) -> io::Result<()> {
    if file {
        let fd = libc::open(
            target.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o644,
        );
        if fd >= 0 {
            libc::close(fd);
        }
    } else {
        libc::mkdir(target.as_ptr(), 0o755);
    }
    let rec = flags & libc::MS_REC;
    check(libc::mount(
        source.as_ptr(),
        target.as_ptr(),
        std::ptr::null(),
        libc::MS_BIND | rec,
        std::ptr::null(),
    ))?;
    let extra = flags & !libc::MS_REC;
    if extra != 0 {
        check(libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | extra,
            std::ptr::null(),
        ))?;
    }
    Ok(())
}

/// Bind-mounts `from` on `to`; false when `to` does not exist.
///
/// # Safety
/// As [`Prepared::apply_in_child`].
unsafe fn bind(
    from: *const libc::c_char,
    to: *const libc::c_char,
    flags: libc::c_ulong,
) -> io::Result<bool> {
    let r = libc::mount(from, to, std::ptr::null(), flags, std::ptr::null());
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        e => Err(e),
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_long(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the effective, permitted and inheritable sets, then the ambient set.
///
/// # Safety
/// As [`Prepared::apply_in_child`].
unsafe fn set_capabilities(caps: &Capabilities) -> io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let half = |set: u64, i: usize| (set >> (32 * i)) as u32;
    let data: [CapData; 2] = [0, 1].map(|i| CapData {
        effective: half(caps.effective, i),
        permitted: half(caps.permitted, i),
        inheritable: half(caps.inheritable, i),
    });
    check_long(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))?;
    check(libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
        0,
        0,
    ))?;
    for cap in 0..64u32 {
        if caps.ambient & (1 << cap) != 0 {
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GuestMount;

    #[test]
    fn bad_seccomp_programs_and_mounts_are_refused_before_any_fork() {
        let bad = Confinement {
            seccomp: vec![vec![0; 7]],
            ..Confinement::default()
        };
        assert!(Prepared::new(&bad, "/", "/", None).is_err());
        let mount = |target: &str| GuestMount {
            target: target.into(),
            fstype: "proc".into(),
            source: None,
            flags: 0,
            data: String::new(),
        };
        for target in ["proc", "/../proc"] {
            let c = Confinement {
                namespaces: Some(Namespaces::New { hostname: None }),
                mounts: vec![mount(target)],
                ..Confinement::default()
            };
            assert!(Prepared::new(&c, "/r", "/", None).is_err(), "{target}");
        }
        // Mounts only in new namespaces.
        let c = Confinement {
            mounts: vec![mount("/proc")],
            ..Confinement::default()
        };
        assert!(Prepared::new(&c, "/r", "/", None).is_err());
        // Joining needs the process to join.
        let c = Confinement {
            namespaces: Some(Namespaces::Join {
                process: "init".into(),
            }),
            ..Confinement::default()
        };
        assert!(matches!(
            Prepared::new(&c, "/r", "/", None),
            Err(Response::Error {
                kind: ErrorKind::NotFound,
                ..
            })
        ));
    }

    #[test]
    fn a_tmpfs_dev_gets_the_standard_nodes() {
        let c = Confinement {
            namespaces: Some(Namespaces::New { hostname: None }),
            mounts: vec![GuestMount {
                target: "/dev".into(),
                fstype: "tmpfs".into(),
                source: None,
                flags: 0,
                data: "mode=755".into(),
            }],
            ..Confinement::default()
        };
        let p = Prepared::new(&c, "/r/", "/", None).unwrap();
        assert_eq!(p.mounts[0].target.to_str().unwrap(), "/r/dev");
        let names: Vec<_> = p.mounts[0]
            .devices
            .iter()
            .map(|(n, _)| n.to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "/r/dev/null",
                "/r/dev/zero",
                "/r/dev/full",
                "/r/dev/random",
                "/r/dev/urandom",
                "/r/dev/tty"
            ]
        );
        assert_eq!(p.mounts[0].links.len(), 5);
    }
}
