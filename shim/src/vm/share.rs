//! What the pod's virtio-fs share (`<VM dir>/shared`, the guest's [`SHARE_ROOT`]) holds for
//! each container: its rootfs at `ID`, and the host paths of its bind mounts at `ID.m/N`
//! (N: the mount's index in the spec), bound there read-only where the mount is. A share
//! cannot be added to a running microvm, so everything a container needs from the host comes
//! through this one. The policy has judged every bind's host path before anything is bound.

use std::path::{Path, PathBuf};

use airlock_agent::protocol::SHARE_ROOT;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Error, Result};
use crate::process::unmount;

/// Whether `m` is a bind mount (of a host path).
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Where the guest finds the source of container `id`'s mount number `index`.
pub fn bind_source_in_guest(id: &str, index: usize) -> String {
    format!("{SHARE_ROOT}/{id}.m/{index}")
}

/// Binds `source` on `target` (made as a file or a directory, as `source` is), read-only
/// where asked, recursively for `rbind`.
fn bind(source: &Path, target: &Path, read_only: bool, recursive: bool) -> Result<()> {
    let is_dir = std::fs::metadata(source)
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "the bind mount's source {} cannot be read: {e}",
                source.display()
            ))
        })?
        .is_dir();
    if is_dir {
        std::fs::create_dir_all(target)
    } else {
        std::fs::File::create(target).map(|_| ())
    }
    .map_err(|e| Error::io("make a mount point in the VM's share", e))?;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| {
        Error::io(
            format!("bind {} into the VM's share", source.display()),
            e.into(),
        )
    })?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            unmount(target);
            return Err(Error::io("make a shared bind read-only", e.into()));
        }
    }
    Ok(())
}

/// Binds the container's rootfs into the share at `shared/ID` and the sources of its bind
/// mounts at `shared/ID.m/N` (read-only where the mount is). The rootfs stays writable here:
/// the guest makes the mount points in it and then makes it read-only where the policy says
/// (`Confinement::read_only_root`). On error nothing stays bound.
pub fn add(shared: &Path, id: &str, rootfs: &Path, spec: &Spec) -> Result<()> {
    bind(rootfs, &shared.join(id), false, true)?;
    let binds = shared.join(format!("{id}.m"));
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let Some(source) = m.source() else {
            remove(shared, id);
            return Err(Error::InvalidArgument(format!(
                "the bind mount at {} has no source",
                m.destination().display()
            )));
        };
        let options = m.options().as_deref().unwrap_or_default();
        let ro = options.iter().any(|o| o == "ro");
        let rec = options.iter().any(|o| o == "rbind");
        if let Err(e) = std::fs::create_dir_all(&binds)
            .map_err(|e| Error::io("make the share's bind directory", e))
            .and_then(|()| bind(source, &binds.join(i.to_string()), ro, rec))
        {
            remove(shared, id);
            return Err(e);
        }
    }
    Ok(())
}

/// Unbinds what [`add`] bound for container `id` and removes its mount points; whether
/// anything was there.
pub fn remove(shared: &Path, id: &str) -> bool {
    let root = shared.join(id);
    let mut found = false;
    if root.exists() {
        found |= unmount(&root);
        let _ = std::fs::remove_dir(&root);
    }
    let binds = shared.join(format!("{id}.m"));
    if let Ok(entries) = std::fs::read_dir(&binds) {
        for e in entries.flatten() {
            let p: PathBuf = e.path();
            found |= unmount(&p);
            let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
        }
        let _ = std::fs::remove_dir(&binds);
    }
    found
}
