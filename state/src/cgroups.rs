//! Bookkeeping of the cgroup *parent* directories a create makes.
//!
//! libcgroups creates the leaf cgroup (and, with `create_dir_all`, any missing parents such as
//! `/sys/fs/cgroup/memory/default/` for cgroupsPath `/default/<id>`), but only removes the
//! leaf. We record, before creating, which parents do not exist yet, and remove exactly those
//! (deepest first, only when empty) on delete or failed create. A parent that existed before,
//! or that still holds other cgroups, is never removed: `rmdir` on a cgroup with children
//! fails with EBUSY, which we treat as "still in use".

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 controllers libcgroups' v1 manager creates directories for.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// One mounted cgroup hierarchy as read from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// `true` for cgroup2, `false` for a v1 hierarchy.
    pub unified: bool,
    /// Super-block options (v1: the controllers, e.g. `rw,cpu,cpuacct`).
    pub options: String,
}

/// Parses `/proc/self/mountinfo` text into its cgroup mounts.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    crate::mountinfo::parse(text)
        .filter_map(|m| {
            let unified = match m.fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                mount_point: m.mount_point,
                unified,
                options: m.super_options.to_owned(),
            })
        })
        .collect()
}

/// The hierarchies libcgroups will create directories in: the cgroup2 mount at
/// `/sys/fs/cgroup` on a unified host; otherwise (legacy or hybrid) the v1 controller
/// hierarchies only (libcgroups uses its v1 manager there and never touches the empty
/// `unified` mount or named hierarchies like `name=systemd`).
pub fn managed_hierarchies(mounts: &[CgroupMount]) -> Vec<PathBuf> {
    if let Some(m) = mounts
        .iter()
        .find(|m| m.unified && m.mount_point == Path::new(CGROUP_ROOT))
    {
        return vec![m.mount_point.clone()];
    }
    let mut out: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| !m.unified && m.options.split(',').any(|o| V1_CONTROLLERS.contains(&o)))
        .map(|m| m.mount_point.clone())
        .collect();
    out.dedup();
    out
}

/// [`managed_hierarchies`] of this process's mount view.
pub fn host_hierarchies() -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(managed_hierarchies(&parse_mountinfo(&text)))
}

/// The parent directories of `cgroup_path` (excluding the hierarchy root and the leaf)
/// that do not exist yet in any of `hierarchies`, deepest first.
pub fn missing_parents(
    hierarchies: &[PathBuf],
    cgroup_path: &Path,
    exists: impl Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    let rel: PathBuf = cgroup_path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let mut out = Vec::new();
    for h in hierarchies {
        let mut dir = h.clone();
        let comps: Vec<_> = rel.components().collect();
        if comps.len() < 2 {
            continue;
        }
        let mut level = Vec::new();
        for c in &comps[..comps.len() - 1] {
            dir.push(c);
            if !exists(&dir) {
                level.push(dir.clone());
            }
        }
        // deepest first within a hierarchy
        level.reverse();
        out.extend(level);
    }
    out
}

/// What a create recorded about the cgroup parents of its container; saved as `airlock.json`
/// in the container's state dir.
///
/// Parents that an Airlock create made are also marked, so whichever container of a namespace
/// is deleted last removes them, not only the one whose create made them: with the extended
/// attribute [`CREATED_XATTR`] on the cgroup directory itself (kernfs keeps it in memory, and
/// it goes with the directory), or, where the cgroup filesystem refuses it, with a marker file
/// in a registry shared by all containers of the state root (`<root>/cgroup-parents/`; also
/// what builds before the attribute wrote). A parent that existed before Airlock touched it is
/// never marked, so never removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    /// Parent directories that did not exist before create, deepest first per hierarchy.
    pub created_parents: Vec<PathBuf>,
    /// Every parent directory of the container's cgroup, deepest first per hierarchy.
    #[serde(default)]
    pub parents: Vec<PathBuf>,
}

/// The extended attribute that marks a cgroup parent an Airlock create made (`trusted.*`:
/// only a process with CAP_SYS_ADMIN in the host's user namespace, as the runtime runs, can set
/// or read it).
pub const CREATED_XATTR: &str = "trusted.airlock.created";

/// The registry of cgroup parents Airlock created, under a state root.
pub fn parent_registry(root: &Path) -> PathBuf {
    root.join("cgroup-parents")
}

fn marker(registry: &Path, dir: &Path) -> PathBuf {
    use std::fmt::Write;
    let mut name = String::with_capacity(dir.as_os_str().len() * 2);
    for b in dir.as_os_str().as_encoded_bytes() {
        let _ = write!(name, "{b:02x}");
    }
    registry.join(name)
}

impl CgroupRecord {
    /// Computes the record for `cgroup_path` on this host (reads mountinfo once).
    pub fn before_create(cgroup_path: &Path) -> std::io::Result<Self> {
        Ok(Self::for_hierarchies(&host_hierarchies()?, cgroup_path))
    }

    /// The record for `cgroup_path` in `hierarchies` (see [`host_hierarchies`]).
    pub fn for_hierarchies(hierarchies: &[PathBuf], cgroup_path: &Path) -> Self {
        Self {
            created_parents: missing_parents(hierarchies, cgroup_path, |p| p.exists()),
            parents: missing_parents(hierarchies, cgroup_path, |_| false),
        }
    }

    /// Marks the parents this create made: [`CREATED_XATTR`] on each, else a marker file in
    /// the shared registry. The attribute costs no write to the state root's filesystem: a
    /// `ctr run` in a namespace of its own makes and removes eight v1 parents every time, and
    /// their marker files were 16 journalled operations on an ext4 `/run` (about 0.2 ms each
    /// here while containerd syncs its database).
    pub fn mark_created(&self, registry: &Path) -> std::io::Result<()> {
        for dir in &self.created_parents {
            if xattr::set(dir, CREATED_XATTR, b"1").is_err() {
                std::fs::create_dir_all(registry)?;
                std::fs::write(marker(registry, dir), dir.as_os_str().as_encoded_bytes())?;
            }
        }
        Ok(())
    }

    /// Removes the parents that Airlock created (this container's create or, per the registry,
    /// another's) and that are now empty. Returns the ones removed.
    pub fn remove_empty_parents(&self, registry: &Path) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let candidates = if self.parents.is_empty() {
            &self.created_parents
        } else {
            &self.parents
        };
        let mut marker_files = false;
        for dir in candidates {
            let by_xattr = matches!(xattr::get(dir, CREATED_XATTR), Ok(Some(_)));
            let mark = marker(registry, dir);
            let by_file = !by_xattr && mark.exists();
            marker_files |= by_file;
            if !self.created_parents.contains(dir) && !by_xattr && !by_file {
                continue;
            }
            match std::fs::remove_dir(dir) {
                Ok(()) => {
                    if by_file {
                        let _ = std::fs::remove_file(&mark);
                    }
                    removed.push(dir.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if by_file {
                        let _ = std::fs::remove_file(&mark);
                    }
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cgroup parent kept");
                }
            }
        }
        // Leave no empty registry behind (fails harmlessly while other markers remain).
        if marker_files {
            let _ = std::fs::remove_dir(registry);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/sda rw
";

    const UNIFIED: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn hybrid_uses_v1_controller_hierarchies_only() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            managed_hierarchies(&mounts),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }

    #[test]
    fn unified_uses_the_root() {
        let mounts = parse_mountinfo(UNIFIED);
        assert_eq!(
            managed_hierarchies(&mounts),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
    }

    #[test]
    fn records_only_missing_parents_deepest_first() {
        let h = vec![
            PathBuf::from("/sys/fs/cgroup/cpu"),
            PathBuf::from("/sys/fs/cgroup/memory"),
        ];
        // In cpu, /a exists already; in memory nothing exists.
        let exists = |p: &Path| p == Path::new("/sys/fs/cgroup/cpu/a");
        let got = missing_parents(&h, Path::new("/a/b/leaf"), exists);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/a/b"),
                PathBuf::from("/sys/fs/cgroup/memory/a/b"),
                PathBuf::from("/sys/fs/cgroup/memory/a"),
            ]
        );
    }

    #[test]
    fn leaf_only_paths_have_no_parents() {
        let h = vec![PathBuf::from("/sys/fs/cgroup")];
        assert!(missing_parents(&h, Path::new("/leaf"), |_| false).is_empty());
        assert!(missing_parents(&h, Path::new(":youki:x"), |_| false).is_empty());
        // `..` cannot escape the hierarchy
        let got = missing_parents(&h, Path::new("/../x/leaf"), |_| false);
        assert_eq!(got, vec![PathBuf::from("/sys/fs/cgroup/x")]);
    }

    #[test]
    fn removes_only_empty_recorded_dirs() {
        let d = tempfile::tempdir().unwrap();
        let reg = d.path().join("reg");
        let a = d.path().join("a");
        let b = a.join("b");
        std::fs::create_dir_all(b.join("other")).unwrap();
        let rec = CgroupRecord {
            created_parents: vec![b.clone(), a.clone()],
            parents: vec![b.clone(), a.clone()],
        };
        // b still has a child: nothing removed
        assert!(rec.remove_empty_parents(&reg).is_empty());
        std::fs::remove_dir(b.join("other")).unwrap();
        assert_eq!(rec.remove_empty_parents(&reg), vec![b, a.clone()]);
        assert!(!a.exists());
    }

    #[test]
    fn last_container_removes_parents_another_create_made() {
        let d = tempfile::tempdir().unwrap();
        let reg = d.path().join("reg");
        let ns = d.path().join("ns");
        let pre = d.path().join("pre");
        std::fs::create_dir_all(ns.join("a")).unwrap();
        std::fs::create_dir_all(ns.join("b")).unwrap();
        std::fs::create_dir_all(pre.join("c")).unwrap();
        // Container a's create made `ns`; b's found it there.
        let a = CgroupRecord {
            created_parents: vec![ns.clone()],
            parents: vec![ns.clone()],
        };
        let b = CgroupRecord {
            created_parents: vec![],
            parents: vec![ns.clone()],
        };
        a.mark_created(&reg).unwrap();
        if nix::unistd::geteuid().is_root() {
            // Marked on the directory itself: nothing written under the state root.
            assert_eq!(xattr::get(&ns, CREATED_XATTR).unwrap(), Some(b"1".to_vec()));
            assert!(!reg.exists());
        }
        // a is deleted first: b still lives in ns.
        std::fs::remove_dir(ns.join("a")).unwrap();
        assert!(a.remove_empty_parents(&reg).is_empty());
        // b deleted last removes ns, thanks to the registry.
        std::fs::remove_dir(ns.join("b")).unwrap();
        assert_eq!(b.remove_empty_parents(&reg), vec![ns.clone()]);
        assert!(!reg.exists(), "marker and the empty registry removed");
        // A parent nobody marked is never removed, even when empty.
        std::fs::remove_dir(pre.join("c")).unwrap();
        let c = CgroupRecord {
            created_parents: vec![],
            parents: vec![pre.clone()],
        };
        assert!(c.remove_empty_parents(&reg).is_empty());
        assert!(pre.exists());
    }

    /// A parent marked by a marker file (an older build's create, or a cgroup filesystem that
    /// refuses the attribute) is still removed by the last container, with its marker.
    #[test]
    fn marker_files_are_still_honoured() {
        let d = tempfile::tempdir().unwrap();
        let reg = d.path().join("reg");
        let ns = d.path().join("ns");
        std::fs::create_dir_all(&ns).unwrap();
        std::fs::create_dir_all(&reg).unwrap();
        std::fs::write(marker(&reg, &ns), ns.as_os_str().as_encoded_bytes()).unwrap();
        let last = CgroupRecord {
            created_parents: vec![],
            parents: vec![ns.clone()],
        };
        assert_eq!(last.remove_empty_parents(&reg), vec![ns.clone()]);
        assert!(!reg.exists(), "marker and the empty registry removed");
    }

    #[test]
    fn record_roundtrips_as_json() {
        let rec = CgroupRecord {
            created_parents: vec!["/x".into()],
            parents: vec!["/x".into()],
        };
        let s = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<CgroupRecord>(&s).unwrap(), rec);
    }
}
