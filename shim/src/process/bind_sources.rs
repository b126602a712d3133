//! Bind mount sources a user-namespaced container's root cannot reach.
//!
//! libcontainer 0.7 sets up the container's mounts inside its user namespace, where the
//! container's root is an unprivileged host uid: a bind source under a root-only directory
//! (containerd's CRI state dir `io.containerd.grpc.v1.cri` is 0700; it holds a pod's
//! `/dev/shm`, `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) fails with EACCES. (runc opens
//! such sources before it enters the user namespace.) The shim, still the host's root, binds
//! each unreachable source into `<bundle>/airlock-mounts/<n>` (the bundle is open to the
//! container's root) and points the spec there. [`cleanup`] unmounts them: on delete, after a
//! failed create, and in `shim delete`. Reachable sources are left alone, so a plain `ctr`
//! container (no bind mounts) pays nothing.
//!
//! Bind mounts that ask to be idmapped (OCI `mounts[].uidMappings`, which containerd >= 2.0
//! sets for a `hostUsers: false` pod's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`;
//! libcontainer 0.7 refuses them) are bound the same way, as idmapped clones made with the
//! container's user namespace (the one it joins by path), and their mappings taken out of the
//! spec.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The bundle directory that holds the mounts the shim makes for a container.
pub const DIR: &str = "airlock-mounts";

/// Whether an unprivileged process (group `gid`, if known) can walk every directory above
/// `path`.
fn reachable(path: &Path, gid: Option<u32>) -> bool {
    path.ancestors().skip(1).all(|dir| {
        std::fs::metadata(dir)
            .is_ok_and(|m| m.mode() & 0o001 != 0 || (gid == Some(m.gid()) && m.mode() & 0o010 != 0))
    })
}

/// The first directory above `bundle` that the container's root (host uid `uid`, gid `gid`)
/// cannot traverse, as an error that says how to fix it. Without this check the runtime's
/// bind of the rootfs fails inside the user namespace with a bare EACCES.
pub fn check_bundle_reachable(bundle: &Path, uid: u32, gid: u32) -> Result<(), String> {
    for dir in bundle.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = m.mode();
        let ok = mode & 0o001 != 0
            || (m.uid() == uid && mode & 0o100 != 0)
            || (m.gid() == gid && mode & 0o010 != 0);
        if !ok {
            return Err(format!(
                "the container's root (host uid {uid}) cannot traverse {} (mode {:04o}), a                  parent of the bundle {}: make it traversable with `chmod o+x {}` (0711 keeps                  its listing private); containerd's root and state dirs and their parents must                  not be 0700 for user-namespaced containers",
                dir.display(),
                mode & 0o7777,
                bundle.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// The host gid of the spec's container root (first gid mapping), if the spec says.
fn root_gid(spec: &Spec) -> Option<u32> {
    spec.linux()
        .as_ref()?
        .gid_mappings()
        .as_ref()?
        .iter()
        .find(|m| m.container_id() == 0)
        .map(|m| m.host_id())
}

/// Rebinds the bind sources of a user-namespaced `spec` that its root cannot reach into the
/// bundle, rewriting the spec. On error, what was bound is unmounted again.
pub fn expose(spec: &mut Spec, bundle: &Path) -> std::io::Result<usize> {
    let Some(userns) = crate::process::netns::namespace_path(spec, LinuxNamespaceType::User) else {
        return Ok(0);
    };
    let gid = root_gid(spec);
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(0);
    };
    let mut userns_fd: Option<OwnedFd> = None;
    let mut n = 0;
    for m in mounts.iter_mut() {
        let is_bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        let Some(source) = m.source().clone().filter(|s| s.is_absolute()) else {
            continue;
        };
        let idmapped = m.uid_mappings().is_some() || m.gid_mappings().is_some();
        if !is_bind || (!idmapped && reachable(&source, gid)) {
            continue;
        }
        let target = bundle.join(DIR).join(n.to_string());
        let made = if idmapped {
            let fd = match &userns_fd {
                Some(fd) => fd,
                None => {
                    let path = userns.as_deref().ok_or_else(|| {
                        std::io::Error::other(format!(
                            "an idmapped bind mount ({}) needs the user namespace the container \
                             joins by path; a container creating its own cannot have one here",
                            m.destination().display()
                        ))
                    })?;
                    userns_fd.insert(std::fs::File::open(path)?.into())
                }
            };
            idmapped_bind(&source, &target, fd)
        } else {
            bind(&source, &target)
        };
        if let Err(e) = made {
            cleanup(bundle);
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "bind {} for the container's user namespace: {e}",
                    source.display()
                ),
            ));
        }
        m.set_source(Some(target));
        if idmapped {
            m.set_uid_mappings(None);
            m.set_gid_mappings(None);
            if let Some(o) = m.options().clone() {
                m.set_options(Some(
                    o.into_iter()
                        .filter(|o| o != "idmap" && o != "ridmap")
                        .collect(),
                ));
            }
        }
        n += 1;
    }
    if n > 0 {
        spec.set_mounts(Some(mounts));
    }
    Ok(n)
}

/// A placeholder for a bind of `source` at `target`: a directory or an empty file.
fn make_target(source: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(target.parent().expect("has a parent"))?;
    if std::fs::metadata(source)?.is_dir() {
        std::fs::create_dir(target)
    } else {
        std::fs::File::create(target).map(drop)
    }
}

fn idmapped_bind(source: &Path, target: &Path, userns: &OwnedFd) -> std::io::Result<()> {
    make_target(source, target)?;
    let fail = |f: airlock_idmap::Failed| {
        std::io::Error::new(f.error.kind(), format!("{}: {}", f.step, f.error))
    };
    let tree = airlock_idmap::idmapped_tree(source, userns).map_err(fail)?;
    airlock_idmap::attach(&tree, target).map_err(fail)
}

fn bind(source: &Path, target: &Path) -> std::io::Result<()> {
    make_target(source, target)?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

/// Unmounts and removes what [`expose`] made in `bundle` (nothing if it made nothing);
/// whether there was anything.
pub fn cleanup(bundle: &Path) -> bool {
    let dir = bundle.join(DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return false;
    };
    let entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    for p in entries {
        let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir(&p));
    }
    let _ = std::fs::remove_dir(&dir);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_0700_parent_of_the_bundle_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("state");
        let bundle = parent.join("ns/id");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(parent.join("ns"), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_bundle_reachable(&bundle, 100000, 100000).unwrap_err();
        assert!(
            e.contains(&format!("cannot traverse {} (mode 0700)", parent.display()))
                && e.contains("host uid 100000")
                && e.contains("chmod o+x"),
            "{e}"
        );
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_bundle_reachable(&bundle, 100000, 100000).unwrap();
    }

    #[test]
    fn reachability_follows_the_others_and_group_bits() {
        let d = tempfile::tempdir().unwrap();
        let closed = d.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::write(closed.join("f"), b"x").unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable(&closed.join("f"), None));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(reachable(&closed.join("f"), None));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o710)).unwrap();
        let gid = std::fs::metadata(&closed).unwrap().gid();
        assert!(reachable(&closed.join("f"), Some(gid)));
        assert!(!reachable(&closed.join("f"), Some(gid + 1)));
    }

    #[test]
    fn only_unreachable_sources_of_user_namespaced_specs_are_rebound() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = d.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::write(closed.join("hosts"), b"127.0.0.1 x\n").unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "user"}],
                      "gidMappings": [{"containerID": 0, "hostID": 1073741824, "size": 65536}]},
            "mounts": [
                {"destination": "/etc/hosts", "type": "bind",
                 "source": closed.join("hosts"), "options": ["rbind", "ro"]},
                {"destination": "/etc/open", "type": "bind",
                 "source": "/etc/hostname", "options": ["rbind", "ro"]}
            ]
        }))
        .unwrap();
        let mut plain = spec.clone();
        plain
            .linux_mut()
            .as_mut()
            .unwrap()
            .set_namespaces(Some(vec![]));
        assert_eq!(expose(&mut plain, &bundle).unwrap(), 0);

        assert_eq!(expose(&mut spec, &bundle).unwrap(), 1);
        let mounts = spec.mounts().as_ref().unwrap();
        let moved = mounts[0].source().clone().unwrap();
        assert!(moved.starts_with(bundle.join(DIR)), "{moved:?}");
        assert_eq!(std::fs::read(&moved).unwrap(), b"127.0.0.1 x\n");
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/etc/hostname"))
        );
        cleanup(&bundle);
        assert!(!bundle.join(DIR).exists());
    }
}
