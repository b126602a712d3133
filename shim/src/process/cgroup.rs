//! Reading a container's cgroup: its processes (Pids) and its metrics (Stats).
//!
//! Reading cgroup files is plain file I/O, so the shim does it itself instead of executing
//! the runtime binary (no fork, a few hundred microseconds). The container's cgroup is found
//! from `/proc/<init>/cgroup` on first use (nothing runs on the create/start path) and
//! remembered, so it can still be read after the init has exited.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};

use crate::error::{Error, Result};
use crate::metrics_v2::{parse_kv, parse_u64};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where a container's cgroup lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v2: one directory.
    V2(PathBuf),
    /// cgroup v1 (legacy or hybrid host): one directory per controller.
    V1(HashMap<String, PathBuf>),
}

/// Whether the host mounts cgroup v2 alone at /sys/fs/cgroup.
pub fn unified_host() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

impl Cgroup {
    /// The cgroup of process `pid`, from `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: i32) -> Result<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| Error::io(format!("read /proc/{pid}/cgroup"), e))?;
        Ok(Self::parse(&text, unified_host()))
    }

    /// Parses `/proc/<pid>/cgroup` text.
    pub fn parse(text: &str, unified: bool) -> Cgroup {
        let mut v1 = HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if ctrls.is_empty() {
                if unified {
                    return Cgroup::V2(Path::new(CGROUP_ROOT).join(rel));
                }
                continue;
            }
            for c in ctrls.split(',') {
                if c.starts_with("name=") {
                    continue;
                }
                v1.insert(c.to_string(), Path::new(CGROUP_ROOT).join(c).join(rel));
            }
        }
        Cgroup::V1(v1)
    }

    /// The directory of `controller` (v1), or the unified directory.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroup::V2(p) => Some(p),
            Cgroup::V1(m) => m.get(controller).map(PathBuf::as_path),
        }
    }

    /// Every process in the container's cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        let dir = match self {
            Cgroup::V2(p) => p.as_path(),
            Cgroup::V1(m) => m
                .get("pids")
                .or_else(|| m.get("memory"))
                .or_else(|| m.get("freezer"))
                .ok_or_else(|| Error::NotFound("the container's cgroup".into()))?,
        };
        let path = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The metrics in the type containerd expects for this cgroup version.
    pub fn metrics(&self) -> Result<Any> {
        match self {
            Cgroup::V1(_) => {
                let value = self
                    .metrics_v1()?
                    .write_to_bytes()
                    .map_err(|e| Error::Runtime(format!("encode metrics: {e}")))?;
                Ok(Any {
                    type_url: "io.containerd.cgroups.v1.Metrics".to_string(),
                    value,
                    ..Default::default()
                })
            }
            Cgroup::V2(_) => crate::metrics_v2::any(&self.metrics_v2()?),
        }
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(controller)?.join(file)).ok()
    }

    fn read_u64(&self, controller: &str, file: &str) -> u64 {
        self.read(controller, file)
            .and_then(|s| parse_u64(s.trim()))
            .unwrap_or(0)
    }

    fn read_kv(&self, controller: &str, file: &str) -> HashMap<String, u64> {
        self.read(controller, file)
            .map(|s| parse_kv(&s))
            .unwrap_or_default()
    }

    pub fn metrics_v1(&self) -> Result<v1::Metrics> {
        if self.dir("memory").is_none() && self.dir("pids").is_none() {
            return Err(Error::NotFound("the container's cgroup".into()));
        }
        let pids = v1::PidsStat {
            current: self.read_u64("pids", "pids.current"),
            limit: self.read_u64("pids", "pids.max"),
            ..Default::default()
        };
        let per_cpu = self
            .read("cpuacct", "cpuacct.usage_percpu")
            .map(|s| s.split_whitespace().filter_map(parse_u64).collect())
            .unwrap_or_default();
        let cpuacct = self.read_kv("cpuacct", "cpuacct.stat");
        // cpuacct.stat counts USER_HZ ticks (100 per second); containerd reports ns.
        let tick_ns = 10_000_000;
        let throttle = self.read_kv("cpu", "cpu.stat");
        let cpu = v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: self.read_u64("cpuacct", "cpuacct.usage"),
                kernel: cpuacct.get("system").copied().unwrap_or(0) * tick_ns,
                user: cpuacct.get("user").copied().unwrap_or(0) * tick_ns,
                per_cpu,
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: throttle.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: throttle.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: throttle.get("throttled_time").copied().unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = self.read_kv("memory", "memory.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let entry = |prefix: &str| v1::MemoryEntry {
            limit: self.read_u64("memory", &format!("{prefix}limit_in_bytes")),
            usage: self.read_u64("memory", &format!("{prefix}usage_in_bytes")),
            max: self.read_u64("memory", &format!("{prefix}max_usage_in_bytes")),
            failcnt: self.read_u64("memory", &format!("{prefix}failcnt")),
            ..Default::default()
        };
        let memory = v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: MessageField::some(entry("memory.")),
            swap: MessageField::some(entry("memory.memsw.")),
            kernel: MessageField::some(entry("memory.kmem.")),
            kernel_tcp: MessageField::some(entry("memory.kmem.tcp.")),
            ..Default::default()
        };
        let oom = self.read_kv("memory", "memory.oom_control");
        Ok(v1::Metrics {
            blkio: MessageField::some(self.blkio_v1()),
            pids: MessageField::some(pids),
            cpu: MessageField::some(cpu),
            memory: MessageField::some(memory),
            memory_oom_control: MessageField::some(v1::MemoryOomControl {
                oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
                under_oom: oom.get("under_oom").copied().unwrap_or(0),
                oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// blkio counters as containerd's cgroups library reads them: the CFQ/BFQ `*_recursive`
    /// files where the kernel has them, else the throttle counters (always present).
    fn blkio_v1(&self) -> v1::BlkIOStat {
        let entries = |file: &str| {
            self.read("blkio", file)
                .map(|s| parse_blkio(&s))
                .unwrap_or_default()
        };
        if self
            .dir("blkio")
            .is_some_and(|d| d.join("blkio.io_serviced_recursive").exists())
        {
            return v1::BlkIOStat {
                io_service_bytes_recursive: entries("blkio.io_service_bytes_recursive"),
                io_serviced_recursive: entries("blkio.io_serviced_recursive"),
                io_queued_recursive: entries("blkio.io_queued_recursive"),
                io_service_time_recursive: entries("blkio.io_service_time_recursive"),
                io_wait_time_recursive: entries("blkio.io_wait_time_recursive"),
                io_merged_recursive: entries("blkio.io_merged_recursive"),
                io_time_recursive: entries("blkio.time_recursive"),
                sectors_recursive: entries("blkio.sectors_recursive"),
                ..Default::default()
            };
        }
        v1::BlkIOStat {
            io_service_bytes_recursive: entries("blkio.throttle.io_service_bytes_recursive"),
            io_serviced_recursive: entries("blkio.throttle.io_serviced_recursive"),
            ..Default::default()
        }
    }

    pub fn metrics_v2(&self) -> Result<v2::Metrics> {
        let dir = self
            .dir("")
            .ok_or_else(|| Error::NotFound("the container's cgroup".into()))?;
        crate::metrics_v2::metrics(&HostDir(dir))
    }
}

/// A cgroup v2 directory of this host.
struct HostDir<'a>(&'a Path);

impl crate::metrics_v2::Files for HostDir<'_> {
    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(file)).ok()
    }

    fn hugetlb_sizes(&self) -> Vec<String> {
        let mut sizes: Vec<String> = std::fs::read_dir(self.0)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let size = name.strip_prefix("hugetlb.")?.strip_suffix(".current")?;
                        Some(size.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        sizes.sort();
        sizes
    }
}

/// A v1 blkio file: `MAJ:MIN Op value` lines (`MAJ:MIN value` for times and sectors); the
/// `Total` line is left out, as containerd does.
fn parse_blkio(text: &str) -> Vec<v1::BlkIOEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (maj, min) = f.first()?.split_once(':')?;
            let (op, value) = match f.len() {
                3 => (f[1].to_string(), f[2]),
                2 => (String::new(), f[1]),
                _ => return None,
            };
            Some(v1::BlkIOEntry {
                op,
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "12:pids:/ns/c1\n11:memory:/ns/c1\n4:cpu,cpuacct:/ns/c1\n1:name=systemd:/x\n0::/y\n";

    #[test]
    fn parses_v1_paths_per_controller() {
        let cg = Cgroup::parse(HYBRID, false);
        assert_eq!(cg.dir("pids"), Some(Path::new("/sys/fs/cgroup/pids/ns/c1")));
        assert_eq!(
            cg.dir("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpuacct/ns/c1"))
        );
        assert_eq!(cg.dir("name=systemd"), None);
    }

    #[test]
    fn parses_the_unified_path() {
        let cg = Cgroup::parse("0::/ns/c1\n", true);
        assert_eq!(cg, Cgroup::V2(PathBuf::from("/sys/fs/cgroup/ns/c1")));
    }

    #[test]
    fn blkio_lines() {
        let e = parse_blkio("254:0 Read 4096\n254:0 Write 0\n7:0 12\nTotal 4096\n");
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (254, 0, "Read", 4096)
        );
        assert_eq!((e[2].major, e[2].op.as_str(), e[2].value), (7, "", 12));
    }

    #[test]
    fn a_v2_cgroup_that_is_gone_is_an_error_not_zeros() {
        let cg = Cgroup::V2(PathBuf::from("/sys/fs/cgroup/no/such/cgroup"));
        assert!(matches!(cg.metrics_v2(), Err(Error::NotFound(_))));
    }

    #[test]
    fn key_values_and_max() {
        let kv = parse_kv("cache 10\nrss 20\nbad\nlimit max\n");
        assert_eq!(kv["cache"], 10);
        assert_eq!(kv["rss"], 20);
        assert_eq!(kv["limit"], u64::MAX);
        assert!(!kv.contains_key("bad"));
    }
}
