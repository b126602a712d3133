//! Create in the process sandbox: the policy applied (`prepare.rs`), the rootfs mounted, the
//! runtime's create, and the init's pidfd, `lo` and console.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::api::CreateTaskRequest;
use tracing::info;

use super::container::ProcessContainer;
use super::prepare::Applied;
use super::{unmount, ProcessSandbox};
use crate::error::{Error, Result};
use crate::process::pidfd::PidFd;
use crate::process::runtime::IdmapRootfs;
use crate::sandbox::Created;
use crate::stdio::{self, StdioPaths};

/// How long a failed create waits for the init it killed.
const REAP_LIMIT: Duration = Duration::from_secs(2);

impl ProcessSandbox {
    /// [`crate::sandbox::Sandbox::create`]; on error, the caller gives back the user namespace
    /// range claim and the bind sources.
    pub(super) async fn create_prepared(&self, req: &CreateTaskRequest) -> Result<Created> {
        let t0 = Instant::now();
        let bundle = PathBuf::from(&req.bundle);
        // Runs while the policy is applied; the rootfs is mounted only after it is done.
        let stale_work = tokio::task::spawn_blocking({
            let rootfs = req.rootfs.clone();
            move || remove_stale_overlay_work(&rootfs)
        });
        let applied = self
            .apply_policy(&bundle, &req.id, req.terminal, req.options.as_ref())
            .await;
        let _ = stale_work.await;
        let Applied {
            seccomp,
            idmap_rootfs,
            update_rules,
            poststart_hooks,
            pod_sandbox,
            new_netns,
        } = applied?;
        let t_policy = t0.elapsed();

        let rootfs = bundle.join("rootfs");
        // containerd >= 2.0 asks for idmapped layers of a user-namespaced pod with
        // uidmap=/gidmap= mount options, which mount(2) does not know: the runtime idmaps
        // them to the container's user namespace instead.
        let (mounts, idmapped_layers, root_gid) = strip_idmap_options(&req.rootfs);
        if let Some(gid) = root_gid {
            open_bundle_to(&bundle, gid)?;
        }
        let idmap_rootfs = idmap_rootfs || idmapped_layers;
        // One overlay (containerd's snapshot) that is to be idmapped: the runtime mounts it
        // once, over idmapped layers, instead of the shim mounting it and the runtime mounting
        // the idmapped one on top (one mount less here, one sync and unmount less on delete).
        // Unmounted as if the shim had mounted it.
        let overlay = match mounts.as_slice() {
            [m] if idmap_rootfs && m.type_ == "overlay" && m.target.is_empty() => {
                Some(m.options.join(","))
            }
            _ => None,
        };
        let rootfs_mounted = match overlay {
            Some(_) => true,
            None => crate::sandbox::mount_rootfs(&mounts, &rootfs).await?,
        };
        let t_mount = t0.elapsed();

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let fail = |e: Error| {
            if rootfs_mounted {
                unmount(&rootfs);
            }
            e
        };
        let (child, mut copier) = stdio::setup(&paths, &bundle).map_err(fail)?;
        let pid_file = bundle.join("init.pid");
        if let Err(e) = self
            .runtime
            .create(
                &req.id,
                &bundle,
                &pid_file,
                &seccomp,
                match (idmap_rootfs, overlay.as_deref()) {
                    (false, _) => IdmapRootfs::No,
                    (true, None) => IdmapRootfs::Mounted,
                    (true, Some(options)) => IdmapRootfs::Overlay(options),
                },
                child,
            )
            .await
        {
            drop(copier);
            // The runtime cleans up after itself; make sure, since a leak outlives us.
            let _ = self.runtime.delete(&req.id, true).await;
            return Err(fail(e));
        }
        let t_runtime = t0.elapsed();
        if pod_sandbox {
            // The app containers' creates follow within milliseconds when their images are on
            // the node: a runtime started now is ready for the first. Off this reply's path.
            let runtime = self.runtime.clone();
            tokio::spawn(async move { runtime.prestart() });
        }
        let pidfd = match read_pid(&pid_file).await.and_then(|pid| {
            PidFd::open(pid).map_err(|e| Error::io(format!("open pidfd of {pid}"), e))
        }) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = self.runtime.delete(&req.id, true).await;
                return Err(fail(e));
            }
        };
        if new_netns {
            let pid = pidfd.pid();
            let up = tokio::task::spawn_blocking(move || crate::process::netns::loopback_up(pid))
                .await
                .map_err(|e| Error::Runtime(format!("loopback thread: {e}")))
                .and_then(|r| r);
            if let Err(e) = up {
                drop(copier);
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = self.runtime.delete(&req.id, true).await;
                let _ = tokio::time::timeout(REAP_LIMIT, pidfd.wait()).await;
                return Err(fail(e));
            }
        }
        let console = match copier.connect_console().await {
            Ok(c) => c,
            Err(e) => {
                drop(copier);
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = self.runtime.delete(&req.id, true).await;
                // The init is our child (we are its subreaper): reap it.
                let _ = tokio::time::timeout(REAP_LIMIT, pidfd.wait()).await;
                return Err(fail(e));
            }
        };
        let pid = pidfd.pid();
        self.inits
            .lock()
            .unwrap()
            .insert(req.id.clone(), pid as u32);
        info!(
            pid,
            policy_us = t_policy.as_micros() as u64,
            mount_us = (t_mount - t_policy).as_micros() as u64,
            runtime_create_us = (t_runtime - t_mount).as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            "container created"
        );
        Ok(Created {
            container: Arc::new(ProcessContainer::new(
                self,
                &req.id,
                bundle,
                pid,
                rootfs_mounted,
                poststart_hooks,
            )),
            init: pidfd,
            copier,
            console,
            update_rules,
        })
    }
}

/// The pid the runtime wrote to `path`.
pub(super) async fn read_pid(path: &Path) -> Result<i32> {
    let s = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::io(format!("read pid file {}", path.display()), e))?;
    s.trim().parse().map_err(|_| {
        Error::Runtime(format!(
            "pid file {} holds {:?}, not a pid",
            path.display(),
            s.trim()
        ))
    })
}

/// Lets the container's root (host gid `gid`) traverse the bundle dir to its rootfs, as
/// containerd does for a spec that comes with user namespace mappings: group `gid`, mode 0710.
pub(super) fn open_bundle_to(bundle: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(bundle, None, Some(gid))
        .and_then(|()| std::fs::set_permissions(bundle, std::fs::Permissions::from_mode(0o710)))
        .map_err(|e| {
            Error::io(
                format!(
                    "open the bundle {} to the container's root",
                    bundle.display()
                ),
                e,
            )
        })
}

/// Removes an empty `work` directory that an earlier mount of the container's overlay snapshot
/// left in its workdir (containerd mounts a snapshot briefly to read the image's
/// `/etc/passwd` and `/etc/group`; so does the CRI plugin). overlayfs removes and re-creates it
/// at every mount, inside the mount call; the shim does it first, on a blocking thread while it
/// applies the policy. Here, on an ext4 mounted with `discard`, the removal waited about 0.9 ms
/// for the device (the directory's block is discarded), on every create's start path. A
/// directory that is not empty, or in use, stays for overlayfs, as before. Whether it removed
/// one.
fn remove_stale_overlay_work(mounts: &[containerd_shim::protos::api::Mount]) -> bool {
    let [m] = mounts else {
        return false;
    };
    if m.type_ != "overlay" {
        return false;
    }
    let Some(workdir) = m.options.iter().find_map(|o| o.strip_prefix("workdir=")) else {
        return false;
    };
    std::fs::remove_dir(Path::new(workdir).join("work")).is_ok()
}

/// The mounts without containerd's `uidmap=`/`gidmap=` options, whether there were any, and
/// the host gid of the container's root from `gidmap=`.
fn strip_idmap_options(
    mounts: &[containerd_shim::protos::api::Mount],
) -> (Vec<containerd_shim::protos::api::Mount>, bool, Option<u32>) {
    let mut gid = None;
    let mut idmapped = false;
    let stripped = mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.options.retain(|o| {
                if let Some(map) = o.strip_prefix("gidmap=") {
                    // `<container>:<host>:<size>`, the root's range first.
                    let f: Vec<u32> = map
                        .split([':', ' '])
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    if f.len() >= 3 && f[0] == 0 {
                        gid = Some(f[1]);
                    }
                    idmapped = true;
                    return false;
                }
                if o.starts_with("uidmap=") {
                    idmapped = true;
                    return false;
                }
                true
            });
            m
        })
        .collect();
    (stripped, idmapped, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_idmap_options_are_taken_out_with_the_root_gid() {
        let m = containerd_shim::protos::api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "lowerdir=/l".into(),
                "uidmap=0:2147942400:65536".into(),
                "gidmap=0:2147942401:65536".into(),
            ],
            ..Default::default()
        };
        let (out, idmapped, gid) = strip_idmap_options(std::slice::from_ref(&m));
        assert_eq!(out[0].options, ["index=off", "lowerdir=/l"]);
        assert!(idmapped);
        assert_eq!(gid, Some(2147942401));
        let (_, idmapped, gid) = strip_idmap_options(&out);
        assert!(!idmapped);
        assert_eq!(gid, None);
    }

    #[test]
    fn only_an_empty_stale_overlay_work_dir_is_removed() {
        let snap = tempfile::tempdir().unwrap();
        let workdir = snap.path().join("work");
        let overlay = |options: Vec<String>| containerd_shim::protos::api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options,
            ..Default::default()
        };
        let with_workdir = overlay(vec![
            "index=off".into(),
            format!("workdir={}", workdir.display()),
            format!("upperdir={}", snap.path().join("fs").display()),
        ]);
        // overlayfs' scratch dir, left empty by an earlier mount: removed.
        std::fs::create_dir_all(workdir.join("work")).unwrap();
        assert!(remove_stale_overlay_work(std::slice::from_ref(
            &with_workdir
        )));
        assert!(!workdir.join("work").exists());
        assert!(workdir.is_dir(), "the workdir itself stays");
        // None there: nothing to do.
        assert!(!remove_stale_overlay_work(std::slice::from_ref(
            &with_workdir
        )));
        // Not empty: left to overlayfs.
        std::fs::create_dir_all(workdir.join("work/#1")).unwrap();
        assert!(!remove_stale_overlay_work(std::slice::from_ref(
            &with_workdir
        )));
        assert!(workdir.join("work/#1").is_dir());
        // Another mount type, no workdir option, or more than one mount: not touched.
        std::fs::remove_dir_all(workdir.join("work/#1")).unwrap();
        let mut bind = with_workdir.clone();
        bind.type_ = "bind".into();
        assert!(!remove_stale_overlay_work(&[bind]));
        assert!(!remove_stale_overlay_work(&[overlay(vec![
            "index=off".into()
        ])]));
        assert!(!remove_stale_overlay_work(&[
            with_workdir.clone(),
            with_workdir.clone()
        ]));
        assert!(workdir.join("work").is_dir());
    }
}
