//! Idmapped rootfs: a user-namespaced container sees its image's files owned by its own root,
//! without a recursive chown of the snapshot (what `ctr run --uidmap` does, ~+100 ms here).
//!
//! overlayfs itself cannot be idmapped (`mount_setattr(MOUNT_ATTR_IDMAP)` gives EINVAL, measured
//! on 6.18), but its layers can (Linux >= 5.19). So when the rootfs is an overlay (containerd's
//! snapshot, mounted by the shim at `<bundle>/rootfs`), it is mounted again at the same path: each
//! lower layer is cloned with `open_tree(OPEN_TREE_CLONE)`, idmapped with
//! `mount_setattr(MOUNT_ATTR_IDMAP)` and moved to a temporary directory; the overlay is
//! mounted again over those, on top of the original (which stays shadowed underneath: unmounting
//! it costs an RCU grace period, 1-20 ms here), with the same upper and work dirs, the upper
//! dir's root (empty for a new snapshot) owned by the mapped root: one `chown` of one
//! directory, not of the image. The idmapped layers are passed as `/proc/self/fd/N` of their
//! detached trees (overlayfs keeps private clones), so no temporary mount point is needed.
//! Whoever mounted the original unmounts every mount stacked at the path.
//!
//! Any other rootfs (a directory, a bind mount) gets an idmapped clone of itself on top, which
//! [`unmount`] removes on delete and after a failed create (recorded by [`write_marker`]).
//!
//! The user namespace comes from a forked child that unshares `CLONE_NEWUSER` and waits; we
//! write its maps, open `/proc/<child>/ns/user` and let it exit (the mount keeps the
//! namespace's idmapping alive). This runs in the single-threaded runtime process, so fork is
//! safe. Needs Linux >= 5.19 for idmapped overlayfs (Debian 12's 6.1 and this host's 6.18 have
//! it).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::LinuxIdMapping;

/// Errors of idmapping a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("cannot create a user namespace for the rootfs idmapping ({step}): {source}")]
    UserNs {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot idmap the rootfs {rootfs} ({step}): {source}; the filesystem under it must support idmapped mounts (overlayfs needs Linux >= 5.19), or run the pod under a policy without [user_namespace]")]
    Mount {
        rootfs: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// `/proc/<pid>/uid_map` text of `maps`.
fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A user namespace carrying the given mappings, as an fd.
pub fn user_namespace(
    uid_maps: &[LinuxIdMapping],
    gid_maps: &[LinuxIdMapping],
) -> Result<OwnedFd, IdmapError> {
    let err = |step| move |source| IdmapError::UserNs { step, source };
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| err("pipe")(e.into()))?;
    let (done_r, done_w) = nix::unistd::pipe().map_err(|e| err("pipe")(e.into()))?;
    // SAFETY: the runtime process is single-threaded; the child only makes raw syscalls.
    let child = match unsafe { fork() }.map_err(|e| err("fork")(e.into()))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            // Keep no other fd: a copy of another caller's `done_w` (a multi-threaded caller,
            // such as the unit tests, may fork two of these at once) would keep that child
            // waiting, and its parent in waitpid, for ever.
            close_all_but(ready_w.as_raw_fd(), done_r.as_raw_fd());
            let ok: u8 = u8::from(nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok());
            // SAFETY: plain syscalls on fds we own, then _exit without running destructors.
            unsafe {
                libc::write(ready_w.as_raw_fd(), [ok].as_ptr().cast(), 1);
                let mut b = [0u8; 1];
                libc::read(done_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    drop(done_r);
    let result = (|| {
        let mut ready = File::from(ready_r);
        let mut b = [0u8; 1];
        ready
            .read_exact(&mut b)
            .map_err(err("wait for the child"))?;
        if b[0] != 1 {
            return Err(err("unshare(CLONE_NEWUSER)")(std::io::Error::other(
                "the child could not create a user namespace",
            )));
        }
        let proc = PathBuf::from(format!("/proc/{child}"));
        std::fs::write(proc.join("uid_map"), map_text(uid_maps)).map_err(err("write uid_map"))?;
        std::fs::write(proc.join("gid_map"), map_text(gid_maps)).map_err(err("write gid_map"))?;
        File::open(proc.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(err("open ns/user"))
    })();
    // Closing the pipe lets the child exit.
    drop(done_w);
    let _ = waitpid(child, None);
    result
}

/// Closes every fd from 3 up but `a` and `b` (close_range(2) around them; only raw syscalls
/// and no allocation, for a forked child).
fn close_all_but(a: RawFd, b: RawFd) {
    let close = |first: RawFd, last: u32| {
        if first >= 3 && (first as u32) <= last {
            // SAFETY: closes fds this process owns; none of them is used again.
            unsafe { libc::syscall(libc::SYS_close_range, first as u32, last, 0u32) };
        }
    };
    let (lo, hi) = (a.min(b), a.max(b));
    close(3, lo.saturating_sub(1) as u32);
    close(lo + 1, hi.saturating_sub(1) as u32);
    close(hi + 1, u32::MAX);
}

/// How [`idmap_rootfs`] idmapped a rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idmapped {
    /// An overlay over idmapped lower layers sits on top of the original overlay: whoever
    /// mounted the original unmounts both (the shim's unmount removes every stacked mount).
    Overlay,
    /// An idmapped clone sits on top of the rootfs: remove it with [`unmount`].
    OnTop,
    /// The filesystem under the layers cannot be idmapped (EINVAL: e.g. tmpfs before Linux
    /// 6.3): only the overlay's upper dir root was given to the container's root (an overlay
    /// over the plain layers sits on top, as with `Overlay`), so the image's files appear owned
    /// by `nobody` (readable, not writable as root). The user namespace holds either way.
    Unsupported,
}

/// Whether `e` says the filesystem does not support idmapped mounts.
fn unsupported(e: &IdmapError) -> bool {
    matches!(e, IdmapError::Mount { step: "mount_setattr(MOUNT_ATTR_IDMAP)", source, .. }
        if source.raw_os_error() == Some(libc::EINVAL))
}

/// The user namespace whose mapping the rootfs gets.
#[derive(Debug, Clone, Copy)]
pub enum UserNs<'a> {
    /// A new user namespace with these mappings (`linux.uidMappings`/`gidMappings`).
    Maps {
        uid: &'a [LinuxIdMapping],
        gid: &'a [LinuxIdMapping],
    },
    /// An existing one the container joins (`/proc/<pid>/ns/user` of its pod's sandbox).
    Path(&'a Path),
}

impl UserNs<'_> {
    fn open(&self) -> Result<OwnedFd, IdmapError> {
        match self {
            UserNs::Maps { uid, gid } => user_namespace(uid, gid),
            UserNs::Path(p) => {
                File::open(p)
                    .map(OwnedFd::from)
                    .map_err(|source| IdmapError::UserNs {
                        step: "open the container's user namespace",
                        source,
                    })
            }
        }
    }

    /// The host (uid, gid) of the container's root, when known.
    fn root_owner(&self) -> Option<(u32, u32)> {
        let root_of = |maps: &[LinuxIdMapping]| {
            maps.iter()
                .find(|m| m.container_id() == 0)
                .map(|m| m.host_id())
        };
        match self {
            UserNs::Maps { uid, gid } => root_of(uid).zip(root_of(gid)),
            UserNs::Path(p) => {
                // `/proc/<pid>/ns/user`: the maps are at `/proc/<pid>/{uid,gid}_map`.
                let proc = p.parent()?.parent()?;
                let first = |file: &str| -> Option<u32> {
                    let text = std::fs::read_to_string(proc.join(file)).ok()?;
                    text.lines().find_map(|l| {
                        let f: Vec<u32> = l
                            .split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect();
                        (f.len() == 3 && f[0] == 0).then_some(f[1])
                    })
                };
                first("uid_map").zip(first("gid_map"))
            }
        }
    }
}

/// Makes the rootfs appear owned by the container's root, mapped like the container's user
/// namespace (see the module doc).
///
/// The detached idmapped layers an overlay was mounted from go to `detached`. Closing the last
/// fd of a detached mount tree unmounts it, which waits for an expedited RCU grace period
/// (0.5 ms here): the caller keeps them open while it forks the container's processes, which
/// inherit them close-on-exec, so the last close happens in the init's exec, after Start,
/// instead of on the create path.
///
/// With `overlay` (its mount options), nothing is mounted at `rootfs` yet: that overlay is
/// mounted there once, over idmapped layers, instead of a plain one first and the idmapped one
/// on top (one overlay less to mount, and to sync and unmount on delete).
pub fn idmap_rootfs(
    rootfs: &Path,
    ns: UserNs<'_>,
    overlay: Option<&str>,
    detached: &mut Vec<OwnedFd>,
) -> Result<Idmapped, IdmapError> {
    let userns = ns.open()?;
    if let Some(options) = overlay
        .map(str::to_owned)
        .or_else(|| overlay_options(rootfs))
    {
        return remount_overlay(rootfs, &options, &userns, ns.root_owner(), detached);
    }
    match idmapped_clone(rootfs, &userns) {
        Ok(()) => Ok(Idmapped::OnTop),
        Err(e) if unsupported(&e) => Ok(Idmapped::Unsupported),
        Err(e) => Err(e),
    }
}

/// The super options of the overlay mounted at `target` (the topmost mount there), if it is one.
fn overlay_options(target: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let top = airlock_state::mountinfo::parse(&info)
        .filter(|m| m.mount_point == target)
        .last()?;
    (top.fstype == "overlay").then(|| top.super_options.to_string())
}

/// Remounts the overlay at `rootfs` over idmapped clones of its lower layers.
fn remount_overlay(
    rootfs: &Path,
    options: &str,
    userns: &OwnedFd,
    owner: Option<(u32, u32)>,
    detached: &mut Vec<OwnedFd>,
) -> Result<Idmapped, IdmapError> {
    let err = |step| {
        move |source| IdmapError::Mount {
            rootfs: rootfs.to_owned(),
            step,
            source,
        }
    };
    let mut lowers = Vec::new();
    let mut kept = Vec::new();
    let mut upper = None;
    for o in options.split(',') {
        if let Some(l) = o.strip_prefix("lowerdir=") {
            lowers.extend(l.split(':').map(PathBuf::from));
        } else if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
            kept.push(o.to_string());
        } else if o.starts_with("workdir=")
            || matches!(o, "index=off" | "userxattr" | "volatile" | "ro")
        {
            kept.push(o.to_string());
        }
    }
    if lowers.is_empty() {
        return Err(err("read the overlay's lowerdir")(std::io::Error::other(
            "no lowerdir in its mount options",
        )));
    }
    if lowers.iter().any(|l| l.starts_with("/proc/self/fd")) {
        return Err(err("read the overlay's lowerdir")(std::io::Error::other(
            "it is already idmapped (its layers are /proc/self/fd paths); mount it afresh",
        )));
    }
    // The idmapped layers stay detached: overlayfs resolves `/proc/self/fd/N` to the detached
    // tree and keeps its own private clone, so no temporary mount point (and no unmount,
    // which costs an RCU grace period) is needed.
    let mut mapped = Vec::with_capacity(lowers.len());
    let mut supported = true;
    for lower in &lowers {
        match airlock_idmap::idmapped_tree_ro(lower, userns).map_err(mount_err(lower)) {
            Ok(fd) => mapped.push(fd),
            Err(e) if unsupported(&e) => {
                supported = false;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if let (Some(upper), Some((uid, gid))) = (&upper, owner) {
        std::os::unix::fs::lchown(upper, Some(uid), Some(gid))
            .map_err(err("chown the upper dir's root"))?;
    }
    // Without idmapped layers the overlay is still mounted again: the mounted overlay's root
    // inode keeps the upper dir's old owner for permission checks (overlayfs copies it once),
    // so the container's root could not create its /proc, /dev, /sys mount points.
    let lowerdir = if supported {
        mapped
            .iter()
            .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .collect::<Vec<_>>()
            .join(":")
    } else {
        lowers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let data = std::iter::once(format!("lowerdir={lowerdir}"))
        .chain(kept.iter().cloned())
        .collect::<Vec<_>>()
        .join(",");
    // Mounted on top of the plain overlay, which stays underneath, shadowed, until whoever
    // mounted it unmounts the path (the shim unmounts every mount stacked there). Unmounting
    // it here would cost an RCU grace period on the start path: 1-20 ms measured here.
    nix::mount::mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| err("mount the overlay over idmapped layers")(e.into()))?;
    detached.extend(mapped);
    Ok(if supported {
        Idmapped::Overlay
    } else {
        Idmapped::Unsupported
    })
}

fn mount_err(source: &Path) -> impl FnOnce(airlock_idmap::Failed) -> IdmapError + '_ {
    move |f| IdmapError::Mount {
        rootfs: source.to_owned(),
        step: f.step,
        source: f.error,
    }
}

/// A detached, idmapped clone of the mount (or directory) at `source`.
fn idmapped_tree(source: &Path, userns: &OwnedFd) -> Result<OwnedFd, IdmapError> {
    airlock_idmap::idmapped_tree(source, userns).map_err(mount_err(source))
}

/// An idmapped clone of `source` moved on top of it.
fn idmapped_clone(source: &Path, userns: &OwnedFd) -> Result<(), IdmapError> {
    let tree = idmapped_tree(source, userns)?;
    airlock_idmap::attach(&tree, source).map_err(mount_err(source))
}

// The marker and the unmount live with the rest of the state dir (the shim's delete reads
// them too).
pub use airlock_state::{unmount_idmapped as unmount, write_idmap_marker as write_marker};

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxIdMappingBuilder;
    use std::os::unix::fs::MetadataExt;

    fn map(host: u32) -> Vec<LinuxIdMapping> {
        vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(65536u32)
            .build()
            .unwrap()]
    }

    fn idmap_to(root: &Path, host: u32) -> Idmapped {
        let m = map(host);
        idmap_rootfs(
            root,
            UserNs::Maps { uid: &m, gid: &m },
            None,
            &mut Vec::new(),
        )
        .unwrap()
    }

    /// Whether a child running as host uid/gid `id` can mkdir `dir`.
    fn mkdir_as(id: u32, dir: &Path) -> bool {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child only makes raw syscalls, then _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe {
                let ok = libc::setgid(id) == 0
                    && libc::setuid(id) == 0
                    && libc::mkdir(path.as_ptr(), 0o755) == 0;
                libc::_exit(if ok { 0 } else { 1 });
            },
            ForkResult::Parent { child } => matches!(
                waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            ),
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A lower dir `l` holding file `f`, empty `u` and `w`, and `rootfs`: the rootfs path and
    /// the options of an overlay of them.
    fn overlay_dirs(d: &Path) -> (PathBuf, String) {
        for sub in ["l", "u", "w", "rootfs"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("l/f"), b"x").unwrap();
        let options = format!("lowerdir={0}/l,upperdir={0}/u,workdir={0}/w", d.display());
        (d.join("rootfs"), options)
    }

    #[test]
    fn user_namespace_carries_the_mapping() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let fd = user_namespace(&map(1 << 30), &map(1 << 30)).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(link.to_string_lossy().starts_with("user:["), "{link:?}");
    }

    /// Callers on several threads at once: no child keeps another's pipe open (each would
    /// then wait for ever, and its caller in waitpid; seen once as a hung unit-test run).
    #[test]
    fn concurrent_callers_do_not_hold_each_others_children() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    user_namespace(&map(1 << 30), &map(1 << 30)).unwrap();
                }
                let _ = tx.send(());
            });
        }
        for _ in 0..4 {
            rx.recv_timeout(std::time::Duration::from_secs(30))
                .expect("a caller hung: a child kept another's pipe open");
        }
    }

    /// The forked child keeps its two fds and closes the rest.
    #[test]
    fn close_all_but_keeps_two_fds() {
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let (a, b, c, d) = (
            r1.as_raw_fd(),
            w1.as_raw_fd(),
            r2.as_raw_fd(),
            w2.as_raw_fd(),
        );
        // SAFETY: the child only makes raw syscalls, then _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe {
                close_all_but(b, c);
                let open = |fd| libc::fcntl(fd, libc::F_GETFD) >= 0;
                let ok = open(0) && open(b) && open(c) && !open(a) && !open(d);
                libc::_exit(if ok { 0 } else { 1 });
            },
            ForkResult::Parent { child } => assert_eq!(
                waitpid(child, None).unwrap(),
                nix::sys::wait::WaitStatus::Exited(child, 0)
            ),
        }
    }

    /// Host-root-owned files of an idmapped directory appear owned by the range's first id
    /// from the host; removing the layer restores the plain view.
    #[test]
    fn idmapped_directory_shows_files_as_the_mapped_root() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        assert_eq!(std::fs::metadata(root.join("f")).unwrap().uid(), 0);
        let host = (1u32 << 30) + 7 * 65536;
        let t = std::time::Instant::now();
        idmap_to(&root, host);
        eprintln!("idmap took {:?}", t.elapsed());
        let m = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (host, host));
        unmount(&root);
        assert_eq!(std::fs::metadata(root.join("f")).unwrap().uid(), 0);
    }

    /// An overlay is mounted again over idmapped lower layers, on top of the plain one: image
    /// files owned by the mapped root, the upper dir's root chowned, copy-up keeps the mapping.
    #[test]
    fn overlay_is_remounted_over_idmapped_layers() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (root, data) = overlay_dirs(d.path());
        nix::mount::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap();
        let host = (1u32 << 30) + 9 * 65536;
        let t = std::time::Instant::now();
        let how = idmap_to(&root, host);
        eprintln!("overlay idmap took {:?}", t.elapsed());
        assert_eq!(how, Idmapped::Overlay);
        let m = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (host, host));
        assert_eq!(std::fs::metadata(&root).unwrap().uid(), host);
        // Copy-up through the overlay keeps the mapped owner.
        std::fs::write(root.join("f"), b"y").unwrap();
        assert_eq!(std::fs::metadata(d.path().join("u/f")).unwrap().uid(), host);
        // The idmapped overlay sits on the plain one: two unmounts leave the directory.
        unmount(&root);
        assert!(root.join("f").exists(), "the plain overlay is still there");
        unmount(&root);
        assert!(!root.join("f").exists());
    }

    /// Given the overlay's options and nothing mounted yet, the idmapped overlay is the only
    /// mount at the rootfs: the same view, one unmount leaves the directory.
    #[test]
    fn an_overlay_not_mounted_yet_is_mounted_once_over_idmapped_layers() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (root, options) = overlay_dirs(d.path());
        // As containerd orders them, with an option the idmapped mount keeps.
        let options = format!("index=off,{options}");
        let host = (1u32 << 30) + 13 * 65536;
        let m = map(host);
        let mut detached = Vec::new();
        let how = idmap_rootfs(
            &root,
            UserNs::Maps { uid: &m, gid: &m },
            Some(&options),
            &mut detached,
        )
        .unwrap();
        drop(detached);
        assert_eq!(how, Idmapped::Overlay);
        let f = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (host, host));
        assert_eq!(std::fs::metadata(&root).unwrap().uid(), host);
        assert!(
            mkdir_as(host, &root.join("proc")),
            "mkdir /proc as the mapped root"
        );
        unmount(&root);
        assert!(!root.join("f").exists(), "one overlay, one unmount");
    }

    /// Layers whose filesystem cannot be idmapped (here an overlay used as a layer, which
    /// gives EINVAL like tmpfs before 6.3): the upper root still goes to the container's root,
    /// the layers are left alone, and create goes on.
    #[test]
    fn unsupported_layers_fall_back_to_the_upper_root_only() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        for sub in ["l", "u0", "w0", "la", "u", "w", "rootfs"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        std::fs::write(d.path().join("l/f"), b"x").unwrap();
        let ovl = |lower: &str, upper: &str, work: &str, at: &str| {
            let p = |s: &str| d.path().join(s).display().to_string();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                p(lower),
                p(upper),
                p(work)
            );
            nix::mount::mount(
                Some("overlay"),
                &d.path().join(at),
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(data.as_str()),
            )
            .unwrap();
        };
        ovl("l", "u0", "w0", "la");
        ovl("la", "u", "w", "rootfs");
        let root = d.path().join("rootfs");
        let host = (1u32 << 30) + 11 * 65536;
        let how = idmap_to(&root, host);
        assert_eq!(how, Idmapped::Unsupported);
        assert_eq!(std::fs::metadata(&root).unwrap().uid(), host);
        assert_eq!(std::fs::metadata(root.join("f")).unwrap().uid(), 0);
        // The container's root (host uid `host`) may create mount points in "/": permission
        // checks see the new owner, not the one the first overlay cached.
        assert!(
            mkdir_as(host, &root.join("proc")),
            "mkdir /proc as the mapped root"
        );
        unmount(&root);
        unmount(&root);
        unmount(&d.path().join("la"));
    }
}
