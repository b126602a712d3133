//! Finding what a container left behind: processes, cgroups, mounts, state dirs, shim sockets.

use crate::containerd::{Containerd, AIRLOCK_STATE_DIR};
use crate::proc_util;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything found for one container (or a namespace when `id` is `None`).
#[derive(Debug, Default, Clone)]
pub struct Leaks {
    /// (pid, cmdline) of processes whose cgroup or argv mention the container.
    pub processes: Vec<(i32, String)>,
    pub cgroups: Vec<PathBuf>,
    /// Lines of containerd's mountinfo mentioning the id.
    pub mounts: Vec<String>,
    pub state_dirs: Vec<PathBuf>,
    pub shim_sockets: Vec<PathBuf>,
    /// User namespace range files (`/run/airlock/.userns/<host-id>.json`) still listing a
    /// container.
    pub userns_ranges: Vec<PathBuf>,
    /// Containers/tasks containerd still lists.
    pub containerd_objects: Vec<String>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.cgroups.is_empty()
            && self.mounts.is_empty()
            && self.state_dirs.is_empty()
            && self.shim_sockets.is_empty()
            && self.userns_ranges.is_empty()
            && self.containerd_objects.is_empty()
    }

    fn merge(&mut self, o: Leaks) {
        self.processes.extend(o.processes);
        self.cgroups.extend(o.cgroups);
        self.mounts.extend(o.mounts);
        self.state_dirs.extend(o.state_dirs);
        self.shim_sockets.extend(o.shim_sockets);
        self.userns_ranges.extend(o.userns_ranges);
        self.containerd_objects.extend(o.containerd_objects);
    }
}

/// cgroup directories `/sys/fs/cgroup/<hierarchy>/<ns>[/<id>]` (v1 hierarchies and a v2 root).
pub fn cgroup_dirs(ns: &str, id: Option<&str>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                roots.push(e.path());
            }
        }
    }
    for r in roots {
        let mut p = r.join(ns);
        if let Some(id) = id {
            p = p.join(id);
        }
        if p.is_dir() {
            v.push(p);
        }
    }
    v
}

/// The shim's node-wide directory of allocated user namespace ranges.
pub const USERNS_DIR: &str = "/run/airlock/.userns";

/// The members (`<namespace>/<container-id>`) of each allocated user namespace range:
/// (range file, first host id, members).
pub fn userns_ranges() -> Vec<(PathBuf, u32, Vec<String>)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(USERNS_DIR) else {
        return v;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(host) = name
            .strip_suffix(".json")
            .and_then(|h| h.parse::<u32>().ok())
        else {
            continue;
        };
        let members = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| {
                j["members"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default();
        v.push((e.path(), host, members));
    }
    v.sort();
    v
}

/// Range files listing a container of `ns` (with `id`: that container).
pub fn userns_ranges_of(ns: &str, id: Option<&str>) -> Vec<PathBuf> {
    userns_ranges()
        .into_iter()
        .filter(|(_, _, members)| {
            members.iter().any(|m| match id {
                Some(id) => *m == format!("{ns}/{id}"),
                None => m.starts_with(&format!("{ns}/")),
            })
        })
        .map(|(p, _, _)| p)
        .collect()
}

/// Processes whose cgroup path contains `/<ns>/<id>` or whose argv mentions `id`.
pub fn processes_of(ns: &str, id: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let cg_needle = format!("/{ns}/{id}");
    let mut v = Vec::new();
    for pid in proc_util::pids() {
        if pid == me || !proc_util::alive(pid) {
            continue;
        }
        let args = proc_util::cmdline(pid);
        let in_cg = proc_util::cgroup(pid)
            .lines()
            .any(|l| l.ends_with(&cg_needle) || l.contains(&format!("{cg_needle}/")));
        let in_args = args
            .iter()
            .any(|a| a == id || a.contains(&format!("/{id}")));
        if in_cg || in_args {
            v.push((pid, args.join(" ")));
        }
    }
    v
}

/// Mount lines of containerd's mount namespace that mention `id`.
pub fn mounts_of(ctd: &Containerd, id: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{}/mountinfo", ctd.pid()))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(id))
        .map(String::from)
        .collect()
}

/// Everything left for container `id` in `ns`.
pub fn find_leaks(ctd: &Containerd, ns: &str, id: &str) -> Leaks {
    let mut l = Leaks {
        processes: processes_of(ns, id),
        cgroups: cgroup_dirs(ns, Some(id)),
        mounts: mounts_of(ctd, id),
        userns_ranges: userns_ranges_of(ns, Some(id)),
        ..Default::default()
    };
    let sd = Path::new(AIRLOCK_STATE_DIR).join(ns).join(id);
    if sd.exists() {
        l.state_dirs.push(sd);
    }
    let bundle = ctd
        .state()
        .join("io.containerd.runtime.v2.task")
        .join(ns)
        .join(id);
    // containerd 1.6 and 2.1 both leave an empty bundle dir behind when the shim's `start` fails
    // (e.g. a malformed config.json): that dir is containerd's own, so only content counts.
    let bundle_nonempty = std::fs::read_dir(&bundle)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if bundle_nonempty {
        l.state_dirs.push(bundle);
    }
    let sock = ctd.shim_socket_path(ns, id);
    if sock.exists() {
        l.shim_sockets.push(sock);
    }
    for what in ["tasks", "containers"] {
        if let Ok(out) = ctd.ctr(Some(ns), &[what, "ls", "-q"]) {
            if out.stdout.lines().any(|x| x.trim() == id) {
                l.containerd_objects.push(format!("{what}/{id}"));
            }
        }
    }
    l
}

/// Leaks for several containers plus namespace-wide checks (the `<ns>` cgroup parents may exist,
/// but must hold no processes; no shim of the namespace may remain).
pub fn find_leaks_all(ctd: &Containerd, ns: &str, ids: &[String]) -> Leaks {
    let mut all = Leaks::default();
    for id in ids {
        all.merge(find_leaks(ctd, ns, id));
    }
    for cg in cgroup_dirs(ns, None) {
        let mut stack = vec![cg];
        while let Some(d) = stack.pop() {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                all.processes
                    .push((0, format!("cgroup {} holds {}", d.display(), procs.trim())));
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        all.cgroups.push(e.path());
                        stack.push(e.path());
                    }
                }
            }
        }
    }
    all.userns_ranges.extend(userns_ranges_of(ns, None));
    all.userns_ranges.sort();
    all.userns_ranges.dedup();
    for s in ctd.shims() {
        if s.namespace == ns {
            all.processes
                .push((s.pid, format!("shim {} -id {}", s.binary, s.id)));
        }
    }
    all.cgroups.sort();
    all.cgroups.dedup();
    all
}

/// Polls until no leaks are found for `ids` (cleanup is asynchronous in places), or returns the
/// last finding after `timeout`.
/// What each leaked process is doing (state, parent, kernel wait channel and stack), so that
/// a leak can be explained from the test's output.
pub fn describe_processes(leaks: &Leaks) -> String {
    let read = |pid: i32, f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("({e})"))
    };
    leaks
        .processes
        .iter()
        .filter(|(pid, _)| *pid > 0)
        .map(|(pid, _)| {
            format!(
                "process {pid}: stat {}; wchan {}; stack:\n{}",
                read(*pid, "stat"),
                read(*pid, "wchan"),
                read(*pid, "stack")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn wait_no_leaks(ctd: &Containerd, ns: &str, ids: &[String], timeout: Duration) -> Leaks {
    wait_no_leaks_except(ctd, ns, ids, timeout, |_| {})
}

/// Like [`wait_no_leaks`], with `tolerate` removing findings that are accepted (e.g. known
/// behaviour of a peer runtime) before deciding.
pub fn wait_no_leaks_except(
    ctd: &Containerd,
    ns: &str,
    ids: &[String],
    timeout: Duration,
    tolerate: impl Fn(&mut Leaks),
) -> Leaks {
    let mut last = Leaks::default();
    proc_util::wait_until(timeout, Duration::from_millis(100), || {
        last = find_leaks_all(ctd, ns, ids);
        tolerate(&mut last);
        last.is_empty()
    });
    last
}
