//! The VMM's confinement on the host: no capabilities, `no_new_privs`, and, where the caller
//! gives one, a uid and gid of the pod's own, so that a VMM taken over by its guest is an
//! unprivileged process that owns nothing but its own VM's files.
//!
//! A VMM that runs as its own uid opens only what it is handed or given: the kernel and
//! initramfs as descriptors it inherits (`/proc/self/fd/N`, so their directories need not be
//! open to it), the console log created for it, and the control and virtio-fs sockets chowned
//! to it. On hardware KVM it joins `/dev/kvm`'s group.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::accel::Accelerator;
use crate::vmm::VmSpec;

/// The credentials a VMM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A spec rewritten for its VMM's credentials, and what the VMM inherits.
pub(crate) struct Prepared {
    pub spec: VmSpec,
    /// Descriptors that stay open across the exec (taps, kernel, initramfs).
    pub inherit: Vec<RawFd>,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// Held open until the VMM has started.
    _files: Vec<File>,
}

fn chown(path: &Path, to: RunAs) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(to.uid), Some(to.gid))
        .map_err(|e| io::Error::new(e.kind(), format!("chown {}: {e}", path.display())))
}

/// Gives `path` (a socket the VMM connects to) to the VMM's uid.
pub(crate) fn give(path: &Path, to: Option<RunAs>) -> io::Result<()> {
    match to {
        Some(to) => chown(path, to),
        None => Ok(()),
    }
}

pub(crate) fn prepare(spec: &VmSpec) -> io::Result<Prepared> {
    let mut out = Prepared {
        spec: spec.clone(),
        inherit: spec.nics.iter().map(|n| n.fd).collect(),
        groups: Vec::new(),
        _files: Vec::new(),
    };
    let Some(run_as) = spec.run_as else {
        return Ok(out);
    };
    for which in [0, 1] {
        let path = if which == 0 {
            &mut out.spec.kernel
        } else {
            &mut out.spec.initramfs
        };
        let f = File::open(&*path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        *path = format!("/proc/self/fd/{}", f.as_raw_fd()).into();
        out.inherit.push(f.as_raw_fd());
        out._files.push(f);
    }
    let console = File::create(&spec.console_log)?;
    std::os::unix::fs::fchown(&console, Some(run_as.uid), Some(run_as.gid))?;
    for share in &spec.shares {
        chown(&share.socket, run_as)?;
    }
    if spec.accelerator == Accelerator::Kvm {
        if let Ok(m) = std::fs::metadata("/dev/kvm") {
            out.groups.push(m.gid());
        }
    }
    Ok(out)
}

/// In the forked child before the exec: the inherited descriptors stay open, every
/// capability goes (bounding and ambient sets first, while they can still be dropped), the
/// credentials become `run_as`'s, and `no_new_privs` is set.
///
/// # Safety
/// System calls only; `groups` and `inherit` are allocated before the fork.
pub(crate) unsafe fn enter(
    run_as: Option<RunAs>,
    groups: &[libc::gid_t],
    inherit: &[RawFd],
) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    for fd in inherit {
        check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
    }
    for cap in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(io::Error::last_os_error());
        }
    }
    check(libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    ))?;
    if let Some(r) = run_as {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setresgid(r.gid, r.gid, r.gid))?;
        check(libc::setresuid(r.uid, r.uid, r.uid))?;
    }
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}
