//! Idmapped mounts through the new mount API, shared by `airlock-runtime` (the rootfs) and the
//! shim (bind mounts of a user-namespaced pod): a detached clone of a mount or directory
//! (`open_tree(OPEN_TREE_CLONE)`), idmapped with a user namespace's mapping
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`), then attached somewhere (`move_mount`) or used as a
//! `/proc/self/fd/N` path. No I/O beyond these syscalls; no forking (the caller brings the user
//! namespace fd).
//!
//! `open_tree` and `move_mount` go through rustix; `mount_setattr` is a plain syscall, as rustix
//! has no binding for it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// Which syscall failed, for the caller's message.
#[derive(Debug)]
pub struct Failed {
    pub step: &'static str,
    pub error: io::Error,
}

impl Failed {
    /// The filesystem cannot be idmapped (e.g. tmpfs before Linux 6.3, overlayfs itself).
    pub fn unsupported(&self) -> bool {
        self.step == "mount_setattr(MOUNT_ATTR_IDMAP)"
            && self.error.raw_os_error() == Some(libc::EINVAL)
    }
}

/// A rustix failure of `step`.
fn failed(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> Failed {
    move |e| Failed {
        step,
        error: e.into(),
    }
}

fn last(step: &'static str) -> Failed {
    Failed {
        step,
        error: io::Error::last_os_error(),
    }
}

/// A detached clone of the mount (or directory) at `source`, idmapped like `userns`.
pub fn idmapped_tree(source: &Path, userns: &OwnedFd) -> Result<OwnedFd, Failed> {
    tree(source, userns, 0)
}

/// [`idmapped_tree`], read-only (an overlay's lower layer: overlayfs never writes there, and
/// nobody who reaches the fd may).
pub fn idmapped_tree_ro(source: &Path, userns: &OwnedFd) -> Result<OwnedFd, Failed> {
    tree(source, userns, libc::MOUNT_ATTR_RDONLY)
}

fn tree(source: &Path, userns: &OwnedFd, extra: u64) -> Result<OwnedFd, Failed> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(failed("open_tree"))?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | extra,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, attr points to a live struct of `size`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(last("mount_setattr(MOUNT_ATTR_IDMAP)"));
    }
    Ok(tree)
}

/// Attaches a detached tree at `target` (an existing file or directory).
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<(), Failed> {
    rustix::mount::move_mount(
        tree,
        c"",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(failed("move_mount"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_name_the_step() {
        let fd: OwnedFd = std::fs::File::open("/proc/self/ns/user").unwrap().into();
        let e = idmapped_tree(Path::new("/nonexistent/airlock"), &fd).unwrap_err();
        assert_eq!(e.step, "open_tree");
        assert!(!e.unsupported());
    }
}
