//! A cgroup v2 directory's files as containerd's cgroups v2 `Metrics` (Task.Stats): read
//! from this host's cgroup file system by the process sandbox (`process/cgroup.rs`), or sent
//! by the guest's agent in the microVM mode (`vm/container.rs`).

use std::collections::{BTreeMap, HashMap};

use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};

use crate::error::{Error, Result};

/// Where a cgroup's files come from.
pub trait Files {
    /// The contents of `file` (`memory.stat`), None when it does not exist.
    fn read(&self, file: &str) -> Option<String>;
    /// The huge page sizes with a `hugetlb.<size>.current` file.
    fn hugetlb_sizes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Files as the guest's agent sent them, by name.
impl Files for BTreeMap<String, String> {
    fn read(&self, file: &str) -> Option<String> {
        self.get(file).cloned()
    }
}

/// Metrics in the `Any` containerd expects of a cgroup v2 container.
pub fn any(m: &v2::Metrics) -> Result<Any> {
    let value = m
        .write_to_bytes()
        .map_err(|e| Error::Runtime(format!("encode metrics: {e}")))?;
    Ok(Any {
        type_url: "io.containerd.cgroups.v2.Metrics".to_string(),
        value,
        ..Default::default()
    })
}

/// The metrics of the cgroup whose files `f` reads. Every file below reads as 0 when
/// missing, but a cgroup that is gone (no `cgroup.procs`) is an error, not a set of zeros.
pub fn metrics(f: &dyn Files) -> Result<v2::Metrics> {
    // Every file below reads as 0 when missing: a cgroup that is gone must be an error,
    // not a set of zeros.
    if f.read("cgroup.procs").is_none() {
        return Err(Error::NotFound("the container's cgroup".into()));
    }
    let cpu = kv(f, "cpu.stat");
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let mem = kv(f, "memory.stat");
    let m = |k: &str| mem.get(k).copied().unwrap_or(0);
    let events = kv(f, "memory.events");
    let e = |k: &str| events.get(k).copied().unwrap_or(0);
    Ok(v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: num(f, "pids.current"),
            limit: num(f, "pids.max"),
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
            nr_bursts: c("nr_bursts"),
            burst_usec: c("burst_usec"),
            psi: psi(f, "cpu.pressure"),
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: m("anon"),
            file: m("file"),
            kernel_stack: m("kernel_stack"),
            slab: m("slab"),
            sock: m("sock"),
            shmem: m("shmem"),
            file_mapped: m("file_mapped"),
            file_dirty: m("file_dirty"),
            file_writeback: m("file_writeback"),
            anon_thp: m("anon_thp"),
            inactive_anon: m("inactive_anon"),
            active_anon: m("active_anon"),
            inactive_file: m("inactive_file"),
            active_file: m("active_file"),
            unevictable: m("unevictable"),
            slab_reclaimable: m("slab_reclaimable"),
            slab_unreclaimable: m("slab_unreclaimable"),
            pgfault: m("pgfault"),
            pgmajfault: m("pgmajfault"),
            // Linux 5.9 split these by anon/file; containerd's reader takes the old names.
            workingset_refault: mem
                .get("workingset_refault")
                .copied()
                .unwrap_or_else(|| m("workingset_refault_anon") + m("workingset_refault_file")),
            workingset_activate: mem
                .get("workingset_activate")
                .copied()
                .unwrap_or_else(|| m("workingset_activate_anon") + m("workingset_activate_file")),
            workingset_nodereclaim: m("workingset_nodereclaim"),
            pgrefill: m("pgrefill"),
            pgscan: m("pgscan"),
            pgsteal: m("pgsteal"),
            pgactivate: m("pgactivate"),
            pgdeactivate: m("pgdeactivate"),
            pglazyfree: m("pglazyfree"),
            pglazyfreed: m("pglazyfreed"),
            thp_fault_alloc: m("thp_fault_alloc"),
            thp_collapse_alloc: m("thp_collapse_alloc"),
            usage: num(f, "memory.current"),
            usage_limit: num(f, "memory.max"),
            swap_usage: num(f, "memory.swap.current"),
            swap_limit: num(f, "memory.swap.max"),
            max_usage: num(f, "memory.peak"),
            swap_max_usage: num(f, "memory.swap.peak"),
            psi: psi(f, "memory.pressure"),
            ..Default::default()
        }),
        memory_events: MessageField::some(v2::MemoryEvents {
            low: e("low"),
            high: e("high"),
            max: e("max"),
            oom: e("oom"),
            oom_kill: e("oom_kill"),
            oom_group_kill: e("oom_group_kill"),
            ..Default::default()
        }),
        io: MessageField::some(v2::IOStat {
            usage: f
                .read("io.stat")
                .map(|s| parse_io_stat(&s))
                .unwrap_or_default(),
            psi: psi(f, "io.pressure"),
            ..Default::default()
        }),
        hugetlb: hugetlb(f),
        ..Default::default()
    })
}

/// `<resource>.pressure` (PSI), when the kernel has it.
fn psi(f: &dyn Files, file: &str) -> MessageField<v2::PSIStats> {
    match f.read(file) {
        Some(text) => MessageField::some(parse_psi(&text)),
        None => MessageField::none(),
    }
}

fn num(f: &dyn Files, file: &str) -> u64 {
    f.read(file).and_then(|s| parse_u64(s.trim())).unwrap_or(0)
}

fn kv(f: &dyn Files, file: &str) -> HashMap<String, u64> {
    f.read(file).map(|s| parse_kv(&s)).unwrap_or_default()
}

/// One entry per huge page size (`hugetlb.<size>.current` / `.max` / `.events`).
fn hugetlb(f: &dyn Files) -> Vec<v2::HugeTlbStat> {
    f.hugetlb_sizes()
        .into_iter()
        .map(|size| v2::HugeTlbStat {
            current: num(f, &format!("hugetlb.{size}.current")),
            max: num(f, &format!("hugetlb.{size}.max")),
            failcnt: kv(f, &format!("hugetlb.{size}.events"))
                .get("max")
                .copied()
                .unwrap_or(0),
            pagesize: size,
            ..Default::default()
        })
        .collect()
}

/// `io.stat`: one line per device, `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
fn parse_io_stat(text: &str) -> Vec<v2::IOEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (maj, min) = f.next()?.split_once(':')?;
            let mut e = v2::IOEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                ..Default::default()
            };
            for kv in f {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// `*.pressure`: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.
fn parse_psi(text: &str) -> v2::PSIStats {
    let line = |kind: &str| {
        let l = text.lines().find(|l| l.starts_with(kind))?;
        let mut d = v2::PSIData::default();
        for kv in l.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            match k {
                "avg10" => d.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => d.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => d.avg300 = v.parse().unwrap_or(0.0),
                "total" => d.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Some(d)
    };
    v2::PSIStats {
        some: line("some ").into(),
        full: line("full ").into(),
        ..Default::default()
    }
}

/// A cgroup number; `max` (unlimited) reads as u64::MAX like containerd's cgroups library.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, ...).
pub(crate) fn parse_kv(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = parse_u64(it.next()?)?;
            Some((k.to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_and_psi() {
        let io = parse_io_stat(
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n7:0 rbytes=1 wbytes=0 rios=1 wios=0\n",
        );
        assert_eq!(io.len(), 2);
        assert_eq!(
            (
                io[0].major,
                io[0].minor,
                io[0].rbytes,
                io[0].wbytes,
                io[0].rios,
                io[0].wios
            ),
            (254, 0, 4096, 8192, 1, 2)
        );
        let psi = parse_psi(
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n",
        );
        assert_eq!(psi.some.avg10, 1.5);
        assert_eq!(psi.some.total, 1234);
        assert_eq!(psi.full.total, 99);
    }

    #[test]
    fn files_sent_by_the_guest_become_metrics() {
        let files: BTreeMap<String, String> = [
            ("cgroup.procs", "1\n7\n"),
            ("pids.current", "2\n"),
            ("pids.max", "max\n"),
            ("memory.current", "1048576\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            (
                "cpu.stat",
                "usage_usec 500\nuser_usec 300\nsystem_usec 200\n",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let m = metrics(&files).unwrap();
        assert_eq!((m.pids.current, m.pids.limit), (2, u64::MAX));
        assert_eq!(m.memory.usage, 1 << 20);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.cpu.usage_usec, 500);
        assert!(m.cpu.psi.is_none());
        assert!(matches!(metrics(&BTreeMap::new()), Err(Error::NotFound(_))));
    }
}
