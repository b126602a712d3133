//! An Airlock container's state on disk, `<root>/<id>/` (root: `/run/airlock/<namespace>`), as
//! `airlock-runtime` writes it and the shim reads it.
//!
//! The dir holds libcontainer's files (`state.json`, `youki_config.json`, the init's
//! `notify.sock`) and Airlock's own (`airlock.json`: the cgroup parents a create made; the
//! idmapped-rootfs marker; the seccomp programs kept for exec). The shim does two steps of a
//! container's life itself from these files instead of executing the runtime, which costs a
//! fork, an exec and a state load each time (~2 ms of start, ~3.5 ms of delete):
//! [`mark_running`] after it started the init through the notify socket, and
//! [`remove_stopped`] once every process of the container has exited. Anything else (hooks to
//! run, processes left in the cgroup, unreadable state) stays with the runtime.
//! `airlock-runtime`'s tests pin libcontainer's side of these files.
//!
//! [`zygote`] is the other thing the two share: how the shim hands a command line to a runtime
//! it started ahead of need.

pub mod blkio;
pub mod cgroups;
pub mod create_lock;
pub mod fdpass;
pub mod mountinfo;
pub mod zygote;

use std::io::Read;
use std::path::{Path, PathBuf};

use cgroups::{parent_registry, CgroupRecord};

/// libcontainer's state file (`status`, `pid`, ...).
pub const STATE_FILE: &str = "state.json";
/// libcontainer's copy of the container's hooks and cgroup path.
pub const YOUKI_CONFIG_FILE: &str = "youki_config.json";
/// The socket the created init waits on; one message, read to its end, lets it exec.
pub const NOTIFY_SOCKET: &str = "notify.sock";
pub const START_MESSAGE: &[u8] = b"start container";
/// Airlock's [`CgroupRecord`] of the container.
pub const RECORD_FILE: &str = "airlock.json";
/// Written when the runtime put an idmapped clone on top of a rootfs that is not an overlay.
const IDMAP_MARKER: &str = "idmapped-rootfs";

/// Records, in the container's state dir, that the rootfs at `rootfs` has our idmapped layer.
pub fn write_idmap_marker(state_dir: &Path, rootfs: &Path) -> std::io::Result<()> {
    std::fs::write(
        state_dir.join(IDMAP_MARKER),
        rootfs.as_os_str().as_encoded_bytes(),
    )
}

/// The rootfs recorded by [`write_idmap_marker`], if any.
pub fn read_idmap_marker(state_dir: &Path) -> Option<PathBuf> {
    let b = std::fs::read(state_dir.join(IDMAP_MARKER)).ok()?;
    Some(PathBuf::from(String::from_utf8(b).ok()?))
}

/// Removes the idmapped layer from `rootfs` (lazily; it may still be busy for a moment).
pub fn unmount_idmapped(rootfs: &Path) {
    if let Err(e) = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            tracing::warn!(rootfs = %rootfs.display(), error = %e, "unmount idmapped rootfs");
        }
    }
}

/// What a container's state dir names outside itself: the cgroup parents its create made and
/// an idmapped layer on its rootfs. Read before the dir is removed, removed after it (also
/// when the dir went only in part: the runtime's retry would find the names gone).
pub struct Outside {
    record: CgroupRecord,
    idmapped: Option<PathBuf>,
}

impl Outside {
    pub fn read(state_dir: &Path) -> Self {
        Outside {
            record: std::fs::read(state_dir.join(RECORD_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            idmapped: read_idmap_marker(state_dir),
        }
    }

    /// Removes the parents (once empty; see [`CgroupRecord::remove_empty_parents`]) under the
    /// state `root`'s registry, and the idmapped layer.
    pub fn remove(self, root: &Path) {
        self.record.remove_empty_parents(&parent_registry(root));
        if let Some(rootfs) = self.idmapped {
            unmount_idmapped(&rootfs);
        }
    }
}

/// Records a started container in its state file as `airlock-runtime start` does (`status`
/// becomes `running`; every other field is kept).
///
/// Overwritten in place, padded with spaces to the old length, in one `pwrite`, as our
/// libcontainer saves it (see its `AIRLOCK PATCH (state saved in place)`): a temporary file
/// renamed over the state made ext4 start writing the new file to disk at once
/// (`auto_da_alloc`), the rename waited up to 1.5 ms for the old file's write, and the unlink at
/// the container's exit waited for the new one's (where `/run` is on disk). The shim calls
/// this under the container's phase lock, which its exit cleanup and its runtime commands
/// also take first, so none of them reads the file during the write.
pub fn mark_running(state_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let state = state_dir.join(STATE_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&state)?;
    let mut raw = Vec::new();
    (&file).read_to_end(&mut raw)?;
    let mut v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is malformed: {e}", state.display()),
        )
    })?;
    v["status"] = serde_json::Value::from("running");
    let mut content = v.to_string().into_bytes();
    if content.len() < raw.len() {
        content.resize(raw.len(), b' ');
    }
    file.write_all_at(&content, 0)
}

/// Why [`remove_stopped`] left a container to the runtime.
#[derive(Debug, PartialEq, Eq)]
pub enum NeedsRuntime {
    /// Poststop hooks must run (the runtime runs hooks).
    Hooks,
    /// A cgroup still holds processes (the runtime kills them and retries).
    Busy(PathBuf),
    /// The state cannot be read as expected.
    Unreadable(String),
    /// An Intel RDT (resctrl) group to remove (the runtime's libcontainer does).
    IntelRdt,
}

impl std::fmt::Display for NeedsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NeedsRuntime::Hooks => write!(f, "poststop hooks to run"),
            NeedsRuntime::Busy(p) => write!(f, "{} still has processes", p.display()),
            NeedsRuntime::Unreadable(e) => write!(f, "{e}"),
            NeedsRuntime::IntelRdt => write!(f, "an Intel RDT group to remove"),
        }
    }
}

/// Removes what `airlock-runtime delete` removes for container `id` under `root`, whose
/// processes have all exited: its cgroup in each of `hierarchies` (from
/// [`cgroups::managed_hierarchies`], the ones libcgroups created it in), its state dir, the
/// cgroup parents its create made once empty, and an idmapped layer on a non-overlay rootfs.
/// Ok(false) if there was no state. On Err the runtime must finish the delete: nothing is
/// removed then, except cgroups that were already empty (the runtime skips missing ones).
pub fn remove_stopped(
    root: &Path,
    id: &str,
    hierarchies: &[PathBuf],
) -> Result<bool, NeedsRuntime> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') {
        return Err(NeedsRuntime::Unreadable(format!(
            "invalid container id {id:?}"
        )));
    }
    let dir = root.join(id);
    if !dir.exists() {
        return Ok(false);
    }
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        NeedsRuntime::Unreadable(format!("{}/{what}: {e}", dir.display()))
    };
    let json = |file: &str| -> Result<serde_json::Value, NeedsRuntime> {
        let b = std::fs::read(dir.join(file)).map_err(|e| unreadable(file, &e))?;
        serde_json::from_slice(&b).map_err(|e| unreadable(file, &e))
    };
    let config = json(YOUKI_CONFIG_FILE)?;
    if config["hooks"]["poststop"]
        .as_array()
        .is_some_and(|h| !h.is_empty())
    {
        return Err(NeedsRuntime::Hooks);
    }
    let state = json(STATE_FILE)?;
    if ["intel_rdt_dir", "intel_rdt_monitoring_dir"]
        .iter()
        .any(|k| !state[*k].is_null())
        || state["clean_up_intel_rdt_subdirectory"] == true
    {
        return Err(NeedsRuntime::IntelRdt);
    }
    // libcgroups puts an empty path at the runtime's own cgroup: not ours to remove.
    let cgroup = config["cgroup_path"]
        .as_str()
        .map(|p| p.trim_start_matches('/'))
        .filter(|p| !p.is_empty() && !p.split('/').any(|c| c == ".."))
        .ok_or_else(|| unreadable(YOUKI_CONFIG_FILE, &"no usable cgroup_path"))?;
    let mut found = false;
    for h in hierarchies {
        let leaf = h.join(cgroup);
        match std::fs::remove_dir(&leaf) {
            Ok(()) => found = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // EBUSY: processes or child cgroups (ENOTEMPTY on a plain directory).
            Err(e)
                if [nix::errno::Errno::EBUSY, nix::errno::Errno::ENOTEMPTY]
                    .iter()
                    .any(|c| e.raw_os_error() == Some(*c as i32)) =>
            {
                return Err(NeedsRuntime::Busy(leaf))
            }
            Err(e) => {
                return Err(NeedsRuntime::Unreadable(format!(
                    "remove {}: {e}",
                    leaf.display()
                )))
            }
        }
    }
    if !found {
        // Not where libcgroups would have made it: let the runtime find it.
        return Err(unreadable(
            YOUKI_CONFIG_FILE,
            &format!("no cgroup {cgroup} here"),
        ));
    }
    let outside = Outside::read(&dir);
    let removed = std::fs::remove_dir_all(&dir);
    outside.remove(root);
    removed.map_err(|e| unreadable("", &e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir as the runtime leaves it, with fake cgroup hierarchies (plain dirs).
    fn container(root: &Path, hierarchies: &[PathBuf], config: &str) -> PathBuf {
        let dir = root.join("c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(YOUKI_CONFIG_FILE), config).unwrap();
        std::fs::write(dir.join(STATE_FILE), r#"{"status":"stopped"}"#).unwrap();
        for h in hierarchies {
            std::fs::create_dir_all(h.join("ns/c1")).unwrap();
        }
        let record = CgroupRecord {
            created_parents: hierarchies.iter().map(|h| h.join("ns")).collect(),
            parents: hierarchies.iter().map(|h| h.join("ns")).collect(),
        };
        std::fs::write(dir.join(RECORD_FILE), serde_json::to_vec(&record).unwrap()).unwrap();
        dir
    }

    #[test]
    fn removes_cgroups_state_and_created_parents() {
        let t = tempfile::tempdir().unwrap();
        let (root, hs) = (
            t.path().join("root"),
            vec![t.path().join("cpu"), t.path().join("memory")],
        );
        let dir = container(&root, &hs, r#"{"hooks":null,"cgroup_path":"/ns/c1"}"#);
        assert_eq!(remove_stopped(&root, "c1", &hs), Ok(true));
        assert!(!dir.exists());
        for h in &hs {
            assert!(!h.join("ns").exists(), "{}", h.display());
            assert!(h.exists());
        }
        assert_eq!(remove_stopped(&root, "c1", &hs), Ok(false));
    }

    #[test]
    fn leaves_hooks_busy_cgroups_and_odd_paths_to_the_runtime() {
        let t = tempfile::tempdir().unwrap();
        let (root, hs) = (t.path().join("root"), vec![t.path().join("cpu")]);
        let hooks = r#"{"hooks":{"poststop":[{"path":"/bin/true"}]},"cgroup_path":"/ns/c1"}"#;
        let dir = container(&root, &hs, hooks);
        assert_eq!(remove_stopped(&root, "c1", &hs), Err(NeedsRuntime::Hooks));
        assert!(dir.exists() && hs[0].join("ns/c1").exists());

        let dir = container(&root, &hs, r#"{"hooks":null,"cgroup_path":"/ns/c1"}"#);
        std::fs::create_dir(hs[0].join("ns/c1/child")).unwrap();
        assert_eq!(
            remove_stopped(&root, "c1", &hs),
            Err(NeedsRuntime::Busy(hs[0].join("ns/c1")))
        );
        assert!(dir.join(STATE_FILE).exists());

        std::fs::write(dir.join(YOUKI_CONFIG_FILE), r#"{"cgroup_path":"/ns/c1"}"#).unwrap();
        std::fs::write(
            dir.join(STATE_FILE),
            r#"{"intel_rdt_dir":"/sys/fs/resctrl/c1"}"#,
        )
        .unwrap();
        assert_eq!(
            remove_stopped(&root, "c1", &hs),
            Err(NeedsRuntime::IntelRdt)
        );
        std::fs::write(dir.join(STATE_FILE), r#"{"status":"stopped"}"#).unwrap();
        assert!(matches!(
            remove_stopped(&root, "../root", &hs),
            Err(NeedsRuntime::Unreadable(_))
        ));

        for odd in [
            r#"{"cgroup_path":""}"#,
            r#"{"cgroup_path":"/../x"}"#,
            "not json",
        ] {
            std::fs::write(dir.join(YOUKI_CONFIG_FILE), odd).unwrap();
            assert!(matches!(
                remove_stopped(&root, "c1", &hs),
                Err(NeedsRuntime::Unreadable(_))
            ));
        }
        assert!(dir.join(STATE_FILE).exists());
    }

    #[test]
    fn mark_running_keeps_every_other_field() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join(STATE_FILE),
            r#"{"id":"c1","status":"created","pid":42,"bundle":"/b"}"#,
        )
        .unwrap();
        mark_running(t.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"c1","status":"running","pid":42,"bundle":"/b"})
        );
        assert!(!t.path().join("state.json.tmp").exists());
    }

    #[test]
    fn mark_running_overwrites_the_file_in_place_and_pads_a_shorter_state() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join(STATE_FILE);
        // Longer than what mark_running writes (spaces and a key order it does not keep).
        let before = r#"{ "status" : "created", "id" : "c1" }   "#;
        std::fs::write(&state, before).unwrap();
        let inode = std::fs::metadata(&state).unwrap().ino();
        mark_running(t.path()).unwrap();
        let after = std::fs::read(&state).unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().ino(), inode);
        assert_eq!(after.len(), before.len());
        assert!(
            after.ends_with(b"  "),
            "{}",
            String::from_utf8_lossy(&after)
        );
        let v: serde_json::Value = serde_json::from_slice(&after).unwrap();
        assert_eq!(v, serde_json::json!({"id":"c1","status":"running"}));
    }
}
