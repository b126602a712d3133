use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pathrs::flags::OpenFlags;
use pathrs::procfs::{ProcfsBase, ProcfsHandle};
use procfs::ProcError;
use procfs::process::MountInfo;

use super::ControllerType;
use super::controller_type::CONTROLLERS;

#[derive(thiserror::Error, Debug)]
pub enum V1MountPointError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("failed to get mountinfo: {0}")]
    MountInfo(ProcError),
    #[error("could not find mountpoint for {subsystem}")]
    NotFound { subsystem: ControllerType },
    #[error(transparent)]
    Pathrs(#[from] pathrs::error::Error),
}

/// List all cgroup v1 subsystem mount points on the system. This can include unsupported
/// subsystems, comounted controllers and named hierarchies.
pub fn list_subsystem_mount_points() -> Result<Vec<PathBuf>, V1MountPointError> {
    Ok(cgroup_mount_points()?.as_ref().clone())
}

// AIRLOCK PATCH: the cgroup mount points are read from mountinfo once per process (per mount
// namespace and root), not once per subsystem lookup. Upstream 0.7.0 opened and parsed the whole
// of /proc/self/mountinfo for every subsystem: 12 lookups per cgroup manager, about 2 ms of every
// `create` on a cgroup v1 host and most of a `kill` or `delete`.
type MountPoints = Arc<Vec<PathBuf>>;

/// What the cached list is valid for: the mount namespace and the root directory it was read
/// in (a pivot_root or setns changes one of them).
fn mount_view() -> Option<(u64, u64, u64, u64)> {
    let ns = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    let root = std::fs::metadata("/").ok()?;
    Some((ns.dev(), ns.ino(), root.dev(), root.ino()))
}

pub(crate) fn cgroup_mount_points() -> Result<MountPoints, V1MountPointError> {
    static CACHE: Mutex<Option<((u64, u64, u64, u64), MountPoints)>> = Mutex::new(None);
    let view = mount_view();
    if let Some(view) = view {
        if let Some((v, points)) = CACHE.lock().ok().and_then(|c| c.clone()) {
            if v == view {
                return Ok(points);
            }
        }
    }
    let points = Arc::new(read_cgroup_mount_points()?);
    if let (Some(view), Ok(mut cache)) = (view, CACHE.lock()) {
        *cache = Some((view, points.clone()));
    }
    Ok(points)
}

fn read_cgroup_mount_points() -> Result<Vec<PathBuf>, V1MountPointError> {
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);

    reader
        .lines()
        .map(|lr| {
            lr.map_err(V1MountPointError::Io)
                .and_then(|line| MountInfo::from_line(&line).map_err(V1MountPointError::MountInfo))
        })
        .try_fold(Vec::new(), |mut mount_points, r| {
            r.map(|m| {
                if m.fs_type == "cgroup" {
                    mount_points.push(m.mount_point);
                }
                mount_points
            })
        })
}

/// List the mount points of all currently supported cgroup subsystems.
pub fn list_supported_mount_points() -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError>
{
    let mut mount_paths = HashMap::with_capacity(CONTROLLERS.len());

    for controller in CONTROLLERS {
        if let Ok(mount_point) = get_subsystem_mount_point(controller) {
            mount_paths.insert(controller.to_owned(), mount_point);
        }
    }

    Ok(mount_paths)
}

pub fn get_subsystem_mount_point(subsystem: &ControllerType) -> Result<PathBuf, V1MountPointError> {
    find_subsystem_mount_point(&cgroup_mount_points()?, subsystem)
}

// AIRLOCK PATCH: the lookup in a list read once, so that a manager reads the list once for all
// of its subsystems.
pub(crate) fn find_subsystem_mount_point(
    mount_points: &[PathBuf],
    subsystem: &ControllerType,
) -> Result<PathBuf, V1MountPointError> {
    let subsystem_name = subsystem.to_string();
    mount_points
        .iter()
        .find(|mount_point| {
            // Some systems mount net_prio and net_cls in the same directory
            // other systems mount them in their own directories. This
            // should handle both cases.
            match subsystem_name.as_str() {
                "net_cls" => ["net_cls,net_prio", "net_prio,net_cls", "net_cls"]
                    .iter()
                    .any(|s| mount_point.ends_with(s)),
                "net_prio" => ["net_cls,net_prio", "net_prio,net_cls", "net_prio"]
                    .iter()
                    .any(|s| mount_point.ends_with(s)),
                "cpu" => ["cpu,cpuacct", "cpu"]
                    .iter()
                    .any(|s| mount_point.ends_with(s)),
                "cpuacct" => ["cpu,cpuacct", "cpuacct"]
                    .iter()
                    .any(|s| mount_point.ends_with(s)),
                _ => mount_point.ends_with(&subsystem_name),
            }
        })
        .cloned()
        .ok_or(V1MountPointError::NotFound {
            subsystem: *subsystem,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // AIRLOCK PATCH: the cache answers as a fresh read of mountinfo does, and is reused.
    #[test]
    fn cached_mount_points_match_mountinfo_and_are_reused() {
        let fresh = read_cgroup_mount_points().unwrap();
        assert_eq!(list_subsystem_mount_points().unwrap(), fresh);
        let (a, b) = (
            cgroup_mount_points().unwrap(),
            cgroup_mount_points().unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b), "second lookup read mountinfo again");
        for c in CONTROLLERS {
            match get_subsystem_mount_point(c) {
                Ok(p) => assert!(fresh.contains(&p), "{c}: {p:?} is not a cgroup mount"),
                Err(V1MountPointError::NotFound { .. }) => {}
                Err(e) => panic!("{c}: {e}"),
            }
        }
    }
}
