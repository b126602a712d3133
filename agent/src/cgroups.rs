//! The guest's cgroup v2 tree: one cgroup per container directly under the root, carrying
//! the container's limits (the same `linux.resources` the process sandbox sets on the host).
//! The agent itself stays in the root cgroup.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_contract::ErrorKind;

use crate::protocol::{Limits, Response};

/// Where the agent mounts the guest's cgroup v2 hierarchy.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The controllers the containers' cgroups get.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Mounts the cgroup v2 hierarchy at [`ROOT`] and hands [`CONTROLLERS`] to its children.
pub fn mount() -> io::Result<()> {
    use rustix::mount::MountFlags;
    fs::create_dir_all(ROOT)?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount("cgroup2", ROOT, "cgroup2", flags, None)?;
    let control = Path::new(ROOT).join("cgroup.subtree_control");
    for c in CONTROLLERS {
        fs::write(&control, format!("+{c}"))
            .map_err(|e| io::Error::new(e.kind(), format!("enabling the {c} controller: {e}")))?;
    }
    Ok(())
}

/// The path of guest cgroup `name`, which must be one plain path component.
pub fn path(name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!(
            "{name:?} is not a cgroup name (one path component)"
        ));
    }
    Ok(Path::new(ROOT).join(name))
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

fn value(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// The files `limits` writes, in order.
pub fn files(limits: &Limits) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(m) = limits.memory_max {
        out.push(("memory.max", value(m)));
    }
    if let Some(s) = limits.swap_max {
        out.push(("memory.swap.max", value(s)));
    }
    if let Some(p) = limits.pids_max {
        out.push(("pids.max", value(p)));
    }
    if let Some((quota, period)) = limits.cpu_max {
        out.push(("cpu.max", format!("{} {period}", value(quota))));
    }
    if let Some(w) = limits.cpu_weight {
        out.push(("cpu.weight", w.to_string()));
    }
    out
}

/// Makes cgroup `name` (if missing) and writes its limits.
pub fn set_limits(name: &str, limits: &Limits) -> Response {
    set_limits_under(Path::new(ROOT), name, limits)
}

fn set_limits_under(root: &Path, name: &str, limits: &Limits) -> Response {
    let dir = match path(name) {
        Ok(_) => root.join(name),
        Err(m) => return error(ErrorKind::InvalidArgument, m),
    };
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return error(ErrorKind::Unknown, format!("making cgroup {name}: {e}")),
    }
    for (file, v) in files(limits) {
        if let Err(e) = fs::write(dir.join(file), &v) {
            let kind = match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::EBUSY) => ErrorKind::InvalidArgument,
                Some(libc::ENOENT) => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Unknown,
            };
            return error(kind, format!("setting {file} of cgroup {name} to {v}: {e}"));
        }
    }
    Response::Ok
}

/// The files of a cgroup that [`read`] returns: what the shim's metrics and Task.Pids read.
pub const READ_FILES: [&str; 14] = [
    "cgroup.procs",
    "cpu.stat",
    "cpu.pressure",
    "io.stat",
    "io.pressure",
    "memory.stat",
    "memory.events",
    "memory.current",
    "memory.max",
    "memory.swap.current",
    "memory.swap.max",
    "memory.pressure",
    "pids.current",
    "pids.max",
];

/// The [`READ_FILES`] of cgroup `name` that exist.
pub fn read(name: &str) -> Response {
    let dir = match path(name) {
        Ok(d) => d,
        Err(m) => return error(ErrorKind::InvalidArgument, m),
    };
    if !dir.join("cgroup.procs").exists() {
        return error(
            ErrorKind::NotFound,
            format!("no cgroup {name} in the guest"),
        );
    }
    let files: BTreeMap<String, String> = READ_FILES
        .iter()
        .filter_map(|f| Some((f.to_string(), fs::read_to_string(dir.join(f)).ok()?)))
        .collect();
    Response::Cgroup { files }
}

/// The OOM kills counted in cgroup `name`'s `memory.events`.
pub fn oom_kills(name: &str) -> Option<u64> {
    let text = fs::read_to_string(path(name).ok()?.join("memory.events")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Whether cgroup `name` is frozen.
pub fn frozen(name: &str) -> bool {
    path(name)
        .ok()
        .and_then(|d| fs::read_to_string(d.join("cgroup.events")).ok())
        .is_some_and(|e| e.lines().any(|l| l == "frozen 1"))
}

/// Freezes (or thaws) cgroup `name` and waits until the kernel reports it so.
pub fn freeze(name: &str, frozen: bool) -> Response {
    let dir = match path(name) {
        Ok(d) => d,
        Err(m) => return error(ErrorKind::InvalidArgument, m),
    };
    let want = if frozen { "1" } else { "0" };
    if let Err(e) = fs::write(dir.join("cgroup.freeze"), want) {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Unknown,
        };
        return error(kind, format!("writing cgroup.freeze of {name}: {e}"));
    }
    let start = Instant::now();
    loop {
        let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l == format!("frozen {want}")) {
            return Response::Ok;
        }
        if start.elapsed() > Duration::from_secs(5) {
            return error(
                ErrorKind::Unknown,
                format!("cgroup {name} is not frozen={want} after 5 s"),
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Removes cgroup `name`; one already gone is fine. Its processes may still be exiting (a
/// container's PID namespace is killed with its init), so a busy cgroup is retried briefly.
pub fn remove(name: &str) -> Response {
    let dir = match path(name) {
        Ok(d) => d,
        Err(m) => return error(ErrorKind::InvalidArgument, m),
    };
    for _ in 0..100 {
        match fs::remove_dir(&dir) {
            Ok(()) => return Response::Ok,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Response::Ok,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => return error(ErrorKind::Unknown, format!("removing cgroup {name}: {e}")),
        }
    }
    error(
        ErrorKind::FailedPrecondition,
        format!("cgroup {name} still has processes after 1 s"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_component() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(path("c1").unwrap(), Path::new("/sys/fs/cgroup/c1"));
    }

    #[test]
    fn limits_become_cgroup_v2_files() {
        let l = Limits {
            memory_max: Some(64 << 20),
            swap_max: Some(-1),
            pids_max: Some(32),
            cpu_max: Some((-1, 100_000)),
            cpu_weight: Some(100),
        };
        assert_eq!(
            files(&l),
            vec![
                ("memory.max", "67108864".to_string()),
                ("memory.swap.max", "max".to_string()),
                ("pids.max", "32".to_string()),
                ("cpu.max", "max 100000".to_string()),
                ("cpu.weight", "100".to_string()),
            ]
        );
        assert!(files(&Limits::default()).is_empty());
    }

    #[test]
    fn limits_are_written_into_a_directory_made_for_them() {
        let root = tempfile::tempdir().unwrap();
        let l = Limits {
            pids_max: Some(9),
            ..Limits::default()
        };
        assert_eq!(set_limits_under(root.path(), "c1", &l), Response::Ok);
        assert_eq!(
            fs::read_to_string(root.path().join("c1/pids.max")).unwrap(),
            "9"
        );
        // Again: the directory exists, the value changes.
        let l = Limits {
            pids_max: Some(-1),
            ..Limits::default()
        };
        assert_eq!(set_limits_under(root.path(), "c1", &l), Response::Ok);
        assert_eq!(
            fs::read_to_string(root.path().join("c1/pids.max")).unwrap(),
            "max"
        );
        assert!(matches!(
            set_limits_under(root.path(), "../c1", &l),
            Response::Error {
                kind: ErrorKind::InvalidArgument,
                ..
            }
        ));
    }
}
