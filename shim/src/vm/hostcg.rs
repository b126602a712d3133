//! The VM's processes (QEMU and virtiofsd) in a cgroup of the pod's own on the host: the first
//! create's `linux.cgroupsPath` (where runc would put the pod's sandbox container, and where a
//! kubelet accounts the pod with its RuntimeClass overhead), with a memory limit of the
//! guest's RAM plus the VMM's own allowance and a pids limit, so that a VMM taken over by its
//! guest cannot take the node's memory or fork without bound. cgroup v2 where the unified
//! hierarchy has the controllers, else the v1 `memory` and `pids` hierarchies (a hybrid
//! node). Each process joins before its exec.

use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";

/// What the VMM itself may use beyond the guest's RAM (QEMU under emulation holds about 75 MiB
/// of its own, virtiofsd 6 MiB).
pub const VMM_ALLOWANCE_MIB: u64 = 160;
/// Tasks (threads) of QEMU and virtiofsd together.
pub const PIDS_MAX: u64 = 256;

/// The pod VM's cgroup: one directory per hierarchy.
pub struct HostCgroup {
    leaves: Vec<PathBuf>,
    /// Every directory this made (leaves and parents), in the order made.
    made: Vec<PathBuf>,
}

/// Makes `rel` under `base`, level by level, recording each directory it made.
fn make_dirs(base: &Path, rel: &Path, made: &mut Vec<PathBuf>) -> Result<PathBuf> {
    let mut at = base.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::create_dir(&at) {
            Ok(()) => made.push(at.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("create {}", at.display()), e)),
        }
    }
    Ok(at)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| Error::io(format!("write {value} to {}", dir.join(file).display()), e))
}

/// The cgroup path for the pod's VM: the spec's `cgroupsPath` (`/a/b`, or a systemd-style
/// `slice:prefix:name`, taken as `slice/prefix-name`), else one named after the shim.
pub fn path_of(cgroups_path: Option<&Path>) -> PathBuf {
    let raw = cgroups_path
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let parts: Vec<&str> = raw.split(':').collect();
    let rel = match parts.as_slice() {
        [slice, prefix, name] => format!("{slice}/{prefix}-{name}"),
        _ if !raw.is_empty() => raw.trim_start_matches('/').to_string(),
        _ => format!("airlock-vm/{:x}", std::process::id()),
    };
    PathBuf::from(rel.trim_start_matches('/'))
}

impl HostCgroup {
    /// Makes the cgroup at `rel` with the limits for a guest of `guest_mib`.
    pub fn create(rel: &Path, guest_mib: u32) -> Result<HostCgroup> {
        if rel
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::InvalidArgument(format!(
                "cgroupsPath {} leaves the cgroup hierarchy",
                rel.display()
            )));
        }
        let memory = (u64::from(guest_mib) + VMM_ALLOWANCE_MIB) * 1024 * 1024;
        let unified = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        let mut cg = HostCgroup {
            leaves: Vec::new(),
            made: Vec::new(),
        };
        let made = (|| {
            if unified {
                // The controllers on every level down to it.
                let mut at = PathBuf::from(ROOT);
                for c in rel.components() {
                    let _ = write(&at, "cgroup.subtree_control", "+memory +pids");
                    at = make_dirs(&at, Path::new(&c), &mut cg.made)?;
                }
                cg.leaves.push(at.clone());
                write(&at, "memory.max", &memory.to_string())?;
                write(&at, "pids.max", &PIDS_MAX.to_string())?;
            } else {
                for (controller, file, value) in [
                    ("memory", "memory.limit_in_bytes", memory.to_string()),
                    ("pids", "pids.max", PIDS_MAX.to_string()),
                ] {
                    let hierarchy = Path::new(ROOT).join(controller);
                    if !hierarchy.join("cgroup.procs").exists() {
                        continue;
                    }
                    let dir = make_dirs(&hierarchy, rel, &mut cg.made)?;
                    cg.leaves.push(dir.clone());
                    write(&dir, file, &value)?;
                }
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    /// The directories it made, in the order made, for [`remove_dirs`] after a killed shim.
    pub fn made(&self) -> &[PathBuf] {
        &self.made
    }

    /// Descriptors of its `cgroup.procs` files, for a child to join before its exec.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>> {
        self.leaves
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io(format!("open {}/cgroup.procs", d.display()), e))
            })
            .collect()
    }

    /// Removes the directories it made (their processes are gone).
    pub fn remove(&self) {
        remove_dirs(&self.made);
    }
}

/// Removes cgroup directories made in this order (deepest last), once their processes are
/// gone (they may take a moment to leave).
pub fn remove_dirs(made: &[PathBuf]) {
    for d in made.iter().rev() {
        // Processes that just ended may still be listed for a moment; a parent still holding
        // another pod's cgroup stays.
        for _ in 0..50 {
            let busy =
                std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty());
            if !busy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(d);
    }
}

/// In a forked child before its exec: joins the cgroup through `procs` (its `cgroup.procs`
/// files, opened before the fork).
///
/// # Safety
/// write(2) only.
pub unsafe fn join(procs: &[RawFd]) -> std::io::Result<()> {
    for fd in procs {
        if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_the_specs_or_the_shims() {
        assert_eq!(
            path_of(Some(Path::new("/kubepods/pod1/abc"))),
            PathBuf::from("kubepods/pod1/abc")
        );
        assert_eq!(
            path_of(Some(Path::new("kubepods.slice:cri:abc"))),
            PathBuf::from("kubepods.slice/cri-abc")
        );
        assert!(path_of(None).starts_with("airlock-vm"));
        assert!(HostCgroup::create(Path::new("../etc"), 256).is_err());
    }
}
