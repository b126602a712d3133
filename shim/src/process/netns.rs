//! A user-namespaced container in a network namespace made outside its user namespace.
//!
//! A CRI pod's network namespace is made by containerd (with CNI) as the node's root, before
//! any container exists; Airlock still gives the pod a user namespace of its own. The runtime
//! joins such a network namespace before it creates the user namespace (the vendored
//! libcontainer's `joined_before_userns`), but two things still need the capabilities over the
//! network namespace's owner that the container's root does not have:
//! - mounting `sysfs` (the kernel ties a sysfs mount to the mounter's network namespace and
//!   wants CAP_SYS_ADMIN over its owner): the shim mounts one read-only from a thread that has
//!   entered the pod's network namespace, at `<bundle>/airlock-mounts/sysfs`, and the container
//!   binds that (so `/sys/class/net` lists the pod's interfaces, not the node's);
//! - writing `net.*` sysctls (containerd sets `net.ipv4.ip_unprivileged_port_start` and
//!   `net.ipv4.ping_group_range` for pods): the same thread writes them, and they are taken
//!   out of the spec.
//!
//! The mount is removed with the bundle's other shim-made mounts (`bind_sources::cleanup`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// `NS_GET_USERNS` (linux/nsfs.h): an fd of the user namespace that owns a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// `None`: the spec has no `typ` namespace (the host's); `Some(None)`: a new one;
/// `Some(Some(path))`: one joined by path.
pub fn namespace_path(spec: &Spec, typ: LinuxNamespaceType) -> Option<Option<PathBuf>> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == typ)
        .map(|n| n.path().clone())
}

/// Whether the user namespace at `userns` owns the namespace at `ns`.
fn owns(userns: &Path, ns: &Path) -> std::io::Result<bool> {
    let ns = File::open(ns)?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a fresh fd that nothing else owns.
    let owner = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }.metadata()?;
    let target = std::fs::metadata(userns)?;
    Ok(owner.dev() == target.dev() && owner.ino() == target.ino())
}

/// The network namespace `spec` joins by path when the container's user namespace does not own
/// it: a new user namespace never does; a joined one is checked.
pub fn foreign_network_namespace(spec: &Spec) -> Option<PathBuf> {
    let userns = namespace_path(spec, LinuxNamespaceType::User)?;
    let netns = namespace_path(spec, LinuxNamespaceType::Network)??;
    match userns {
        None => Some(netns),
        Some(userns) => match owns(&userns, &netns) {
            Ok(true) => None,
            // Unknown: treat as foreign, the adaptations are safe either way.
            Ok(false) | Err(_) => Some(netns),
        },
    }
}

/// The identity of the namespace at `path` (device and inode of its nsfs file).
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Binds the sysfs at `source`, which [`prepare_in`] mounted for a network namespace, at
/// `target`: the same view for another container of that namespace, without a new sysfs
/// mount from inside it (a thread, a setns and a superblock: 0.4 ms of an app container's
/// create). Fails when `source` is no longer a sysfs mount (its container was deleted).
pub fn bind_prepared(source: &Path, target: &Path) -> Result<()> {
    let fs = nix::sys::statfs::statfs(source)
        .map_err(|e| Error::io(format!("statfs {}", source.display()), e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::SYSFS_MAGIC {
        return Err(Error::FailedPrecondition(format!(
            "{} is no longer a sysfs mount",
            source.display()
        )));
    }
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = std::fs::remove_dir(target);
        Error::io(
            format!("bind the pod network's sysfs at {}", target.display()),
            e.into(),
        )
    })
}

/// Where the shim mounts the pod network namespace's sysfs for a container.
pub fn sysfs_path(bundle: &Path) -> PathBuf {
    bundle.join(crate::process::bind_sources::DIR).join("sysfs")
}

/// Points `spec`'s `sysfs` mounts at a read-only bind of `source` (a sysfs the shim mounted).
/// Returns whether there was one.
pub fn bind_sysfs_from(spec: &mut Spec, source: &Path) -> bool {
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return false;
    };
    let mut replaced = false;
    for m in mounts
        .iter_mut()
        .filter(|m| m.typ().as_deref() == Some("sysfs"))
    {
        m.set_typ(Some("bind".into()));
        m.set_source(Some(source.to_owned()));
        m.set_options(Some(
            ["bind", "ro", "nosuid", "noexec", "nodev"]
                .map(String::from)
                .to_vec(),
        ));
        replaced = true;
    }
    replaced
}

/// Removes the `net.*` sysctls from `spec` and returns them.
pub fn take_net_sysctls(spec: &mut Spec) -> Vec<(String, String)> {
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Vec::new();
    };
    let Some(sysctl) = linux.sysctl_mut().as_mut() else {
        return Vec::new();
    };
    let names: Vec<String> = sysctl
        .keys()
        .filter(|k| k.starts_with("net."))
        .cloned()
        .collect();
    let mut taken: Vec<(String, String)> = names
        .into_iter()
        .filter_map(|k| sysctl.remove(&k).map(|v| (k, v)))
        .collect();
    taken.sort();
    taken
}

/// The file of sysctl `name` (dots are separators; a name with `/` is taken as a path already).
fn sysctl_file(name: &str) -> Result<PathBuf> {
    if name.contains("..") || name.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "linux.sysctl: {name:?} is not a sysctl name"
        )));
    }
    let rel = if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    };
    Ok(Path::new("/proc/sys").join(rel))
}

/// From a thread of its own that enters the network namespace at `netns` (setns of a network
/// namespace changes only the calling thread; the thread exits after): mounts a read-only
/// sysfs at `sysfs` (created as a directory) when given, and writes `sysctls`.
pub fn prepare_in(netns: &Path, sysfs: Option<&Path>, sysctls: &[(String, String)]) -> Result<()> {
    let files: Vec<(PathBuf, String)> = sysctls
        .iter()
        .map(|(k, v)| sysctl_file(k).map(|f| (f, v.clone())))
        .collect::<Result<_>>()?;
    let target = File::open(netns)
        .map_err(|e| Error::io(format!("open network namespace {}", netns.display()), e))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::io(
                    format!("enter network namespace {}", netns.display()),
                    e.into(),
                )
            })?;
            if let Some(target) = sysfs {
                std::fs::create_dir_all(target)
                    .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
                nix::mount::mount(
                    Some("sysfs"),
                    target,
                    Some("sysfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(|e| {
                    Error::io(
                        format!("mount the pod network's sysfs at {}", target.display()),
                        e.into(),
                    )
                })?;
            }
            for (file, value) in &files {
                std::fs::write(file, value).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "linux.sysctl: cannot set {} to {value:?} in the pod's network namespace: {e}",
                        file.display()
                    ))
                })?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Runtime("the sysctl thread panicked".into())))
    })
}

/// Brings the loopback interface up in the network namespace of process `pid` (a container
/// init waiting for Start, in a network namespace made for it, where `lo` starts down; runc
/// brings it up too), from a thread of its own that enters it. Agents serve on 127.0.0.1 (a
/// language server, a notebook kernel).
pub fn loopback_up(pid: i32) -> Result<()> {
    let path = format!("/proc/{pid}/ns/net");
    let target =
        File::open(&path).map_err(|e| Error::io(format!("open network namespace {path}"), e))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            setns(&target, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::io(format!("enter network namespace {path}"), e.into()))?;
            set_up("lo").map_err(|e| Error::io("bring the container's loopback up", e))
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Runtime("the loopback thread panicked".into())))
    })
}

/// `SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`, on interface `name` of this thread's
/// network namespace.
fn set_up(name: &str) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: the ioctls read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceBuilder, SpecBuilder};
    use std::collections::HashMap;

    fn spec_with(user: Option<Option<&str>>, net: Option<&str>) -> Spec {
        let mut spec = SpecBuilder::default().build().unwrap();
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::User)
            .map(|mut n| {
                if n.typ() == LinuxNamespaceType::Network {
                    n.set_path(net.map(PathBuf::from));
                }
                n
            })
            .collect();
        if let Some(path) = user {
            let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
            if let Some(p) = path {
                b = b.path(p);
            }
            ns.push(b.build().unwrap());
        }
        linux.set_namespaces(Some(ns));
        spec
    }

    #[test]
    fn new_user_namespace_with_a_joined_network_namespace_is_foreign() {
        let s = spec_with(Some(None), Some("/var/run/netns/cni-1"));
        assert_eq!(
            foreign_network_namespace(&s),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        assert_eq!(
            foreign_network_namespace(&spec_with(Some(None), None)),
            None
        );
        assert_eq!(
            foreign_network_namespace(&spec_with(None, Some("/var/run/netns/cni-1"))),
            None
        );
    }

    #[test]
    fn a_user_namespace_owns_what_was_made_in_it() {
        // Our own user namespace owns our own network namespace.
        assert!(owns(
            Path::new("/proc/self/ns/user"),
            Path::new("/proc/self/ns/net")
        )
        .unwrap());
        let s = spec_with(Some(Some("/proc/self/ns/user")), Some("/proc/self/ns/net"));
        assert_eq!(foreign_network_namespace(&s), None);
    }

    #[test]
    fn sysfs_becomes_a_read_only_bind_of_the_shims() {
        let mut s = spec_with(Some(None), Some("/x"));
        let src = sysfs_path(Path::new("/b"));
        assert!(bind_sysfs_from(&mut s, &src));
        let sys = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("bind"));
        assert_eq!(
            sys.source().as_deref(),
            Some(Path::new("/b/airlock-mounts/sysfs"))
        );
        assert!(sys.options().as_ref().unwrap().contains(&"ro".into()));
        assert!(!bind_sysfs_from(&mut s, &src), "nothing left to replace");
    }

    /// A sysfs mounted from inside a new network namespace lists that namespace's devices.
    #[test]
    fn sysfs_is_the_network_namespaces() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        // Killed and reaped on drop, also when an assertion fails.
        let holder = Guard(
            std::process::Command::new("unshare")
                .args(["--net", "sleep", "30"])
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        let netns = PathBuf::from(format!("/proc/{}/ns/net", holder.0.id()));
        let d = tempfile::tempdir().unwrap();
        let target = sysfs_path(d.path());
        prepare_in(
            &netns,
            Some(&target),
            &[("net.ipv4.ip_unprivileged_port_start".into(), "80".into())],
        )
        .unwrap();
        let nics: Vec<String> = std::fs::read_dir(target.join("class/net"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Another container of the namespace gets a bind of the same sysfs.
        let d2 = tempfile::tempdir().unwrap();
        let again = sysfs_path(d2.path());
        bind_prepared(&target, &again).unwrap();
        let fs = nix::sys::statfs::statfs(&again).unwrap();
        let nics_again: Vec<String> = std::fs::read_dir(again.join("class/net"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        crate::process::bind_sources::cleanup(d2.path());
        crate::process::bind_sources::cleanup(d.path());
        assert_eq!(nics, ["lo"], "a new network namespace has only loopback");
        assert_eq!(fs.filesystem_type(), nix::sys::statfs::SYSFS_MAGIC);
        assert_eq!(nics_again, nics, "the bind shows the same namespace");
        assert!(!target.exists(), "cleanup removes the mount");
        assert!(!again.exists(), "cleanup removes the bind");
        // Once the first is gone, it is not bound again.
        let d3 = tempfile::tempdir().unwrap();
        assert!(bind_prepared(&target, &sysfs_path(d3.path())).is_err());
        assert!(!sysfs_path(d3.path()).exists(), "nothing left behind");
    }

    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn only_net_sysctls_are_taken() {
        let mut s = spec_with(Some(None), Some("/x"));
        let map: HashMap<String, String> = [
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shm_rmid_forced", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        s.linux_mut().as_mut().unwrap().set_sysctl(Some(map));
        let taken = take_net_sysctls(&mut s);
        assert_eq!(
            taken,
            vec![("net.ipv4.ip_unprivileged_port_start".into(), "0".into())]
        );
        let left = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.len(), 1);
        assert!(left.contains_key("kernel.shm_rmid_forced"));
    }

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_file("net.ipv4.ping_group_range").unwrap(),
            Path::new("/proc/sys/net/ipv4/ping_group_range")
        );
        assert!(sysctl_file("net/../../etc").is_err());
    }
}
