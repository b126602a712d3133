//! The microVM mode through containerd: `ctr run --rm` of a container that exits at once with
//! runtime `io.containerd.airlock-vm.v2` (a VM booted for it and shut down after it), and the
//! host memory of one running VM pod (its shim, QEMU and virtiofsd), the figure behind
//! `RuntimeClass.yaml`'s `airlock-vm` overhead; a burst of VM pods started at once (the
//! full run's 16: failures, time until all started, their memory); then CRI pods with
//! handler `airlock-vm`, timed as the CRI section times pods. The node config is given with
//! `--runtime-config-path`, and as the CRI handler's `ConfigPath` (accelerator `auto`:
//! hardware KVM where there is one).

use std::time::{Duration, Instant};

use airlock_integration::{proc_util, Containerd, IMAGE_REF};
use serde::{Deserialize, Serialize};

use airlock_integration::containerd::VM_HANDLER;

use crate::cri::{CriBench, READY};
use crate::report::Metric;
use crate::subjects::Subject;

const RUNTIME: &str = "io.containerd.airlock-vm.v2";
const LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmPodResult {
    pub accelerator: String,
    /// `ctr run --rm IMAGE ID true`, ms.
    pub ctr_run: Metric,
    /// One running pod, KiB of RSS.
    pub shim_rss_kib: Option<u64>,
    pub qemu_rss_kib: Option<u64>,
    pub virtiofsd_rss_kib: Option<u64>,
    /// CRI pods with handler `airlock-vm` (a VM per pod), as the CRI section measures pods:
    /// "pod ready" (RunPodSandbox called -> StartContainer returned), ms. None without CRI.
    #[serde(default)]
    pub cri_pod_ready: Option<Metric>,
    /// VM pods started at once. None in a quick run.
    #[serde(default)]
    pub burst: Option<Burst>,
    pub first_error: Option<String>,
}

/// `pods` VM containers started at once (`ctr run -d`, each a VM of its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Burst {
    pub pods: usize,
    pub failures: usize,
    /// From the first start to the last `ctr run -d` returned (every VM booted, every
    /// container started), ms.
    pub all_started_ms: f64,
    /// The host memory of all of them running (shims, QEMUs, virtiofsds), KiB of RSS.
    pub rss_kib: u64,
    pub first_error: Option<String>,
}

impl VmPodResult {
    /// The pod's host memory: shim, QEMU and virtiofsd.
    pub fn pod_rss_kib(&self) -> Option<u64> {
        Some(self.shim_rss_kib? + self.qemu_rss_kib? + self.virtiofsd_rss_kib.unwrap_or(0))
    }
}

/// RSS (KiB) of process `pid`.
fn rss_kib(pid: i32) -> Option<u64> {
    crate::measure::memory_kib(pid).0
}

fn ctr_run(
    ctd: &Containerd,
    ns: &str,
    cfg: &str,
    mode: &str,
    id: &str,
    args: &[&str],
) -> Result<(), String> {
    let mut all = vec![
        "run",
        mode,
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        cfg,
        IMAGE_REF,
        id,
    ];
    all.extend(args);
    let out = ctd
        .ctr_timeout(Some(ns), &all, LIMIT)
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!("ctr run {id}: {}", out.stderr.trim()))
    }
}

/// Kills and removes container `id` (its task may take a moment to go).
fn remove(ctd: &Containerd, ns: &str, id: &str) {
    let _ = airlock_integration::vm::remove_container(ctd, ns, id);
}

/// The host RSS of the shim serving container `id` and what runs under it (QEMU,
/// virtiofsd), KiB: (shim, QEMU, virtiofsd).
fn pod_rss(ctd: &Containerd, id: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let (mut shim, mut qemu, mut virtiofsd) = (None, None, None);
    if let Some(s) = ctd.shims().into_iter().find(|s| s.id == id) {
        shim = rss_kib(s.pid);
        for d in proc_util::descendants(s.pid) {
            let argv0 = proc_util::cmdline(d).into_iter().next().unwrap_or_default();
            if argv0.contains("qemu-system") {
                qemu = rss_kib(d);
            } else if argv0.contains("virtiofsd") {
                virtiofsd = rss_kib(d);
            }
        }
    }
    (shim, qemu, virtiofsd)
}

/// Starts `pods` VM containers at once, measures them running, and removes them.
fn burst(ctd: &Containerd, ns: &str, cfg: &str, pods: usize) -> Burst {
    let ids: Vec<String> = (0..pods)
        .map(|i| format!("vm-burst-{}-{i}", std::process::id()))
        .collect();
    let t = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let started: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(move || ctr_run(ctd, ns, cfg, "-d", id, &["sleep", "600"])))
            .collect();
        started
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    let all_started_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_kib = ids
        .iter()
        .map(|id| {
            let (a, b, c) = pod_rss(ctd, id);
            a.unwrap_or(0) + b.unwrap_or(0) + c.unwrap_or(0)
        })
        .sum();
    std::thread::scope(|s| {
        for id in &ids {
            s.spawn(move || remove(ctd, ns, id));
        }
    });
    Burst {
        pods,
        failures: results.iter().filter(|r| r.is_err()).count(),
        all_started_ms,
        rss_kib,
        first_error: results.into_iter().find_map(|r| r.err()),
    }
}

/// Runs `runs` containers, measures one running pod, starts `burst_pods` at once (none: no
/// burst) and `runs` CRI pods; Err(why) when the mode cannot run here.
pub fn measure(ctd: &Containerd, runs: usize, burst_pods: usize) -> Result<VmPodResult, String> {
    let host = airlock_vm::accel::Host::probe();
    let accelerator =
        airlock_vm::accel::select(airlock_policies::config::AcceleratorChoice::Auto, &host)
            .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = airlock_integration::vm::node_config(dir.path(), ctd.airlock_bin_dir(), "auto")?;
    let cfg = cfg.to_str().ok_or("temp path is not UTF-8")?;
    let ns = ctd.new_namespace("vm-bench").map_err(|e| e.to_string())?;
    let mut first_error = None;
    let mut samples = Vec::new();
    for i in 0..runs {
        let id = format!("vm-run-{}-{i}", std::process::id());
        let t = Instant::now();
        match ctr_run(ctd, &ns, cfg, "--rm", &id, &["true"]) {
            Ok(()) => samples.push(t.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                first_error.get_or_insert(e);
                samples.push(f64::NAN);
                remove(ctd, &ns, &id);
            }
        }
    }
    // One pod left running: its host memory once the VM is up.
    let id = format!("vm-idle-{}", std::process::id());
    let (mut shim, mut qemu, mut virtiofsd) = (None, None, None);
    match ctr_run(ctd, &ns, cfg, "-d", &id, &["sleep", "600"]) {
        Ok(()) => {
            // After the free page reporting's first round (2 s after the guest frees).
            std::thread::sleep(Duration::from_secs(3));
            (shim, qemu, virtiofsd) = pod_rss(ctd, &id);
        }
        Err(e) => {
            first_error.get_or_insert(e);
        }
    }
    remove(ctd, &ns, &id);
    let burst = (burst_pods > 0).then(|| burst(ctd, &ns, cfg, burst_pods));
    let cri_pod_ready = if ctd.cri_enabled() {
        Some(cri_pods(ctd, runs, &mut first_error)?)
    } else {
        None
    };
    Ok(VmPodResult {
        accelerator: accelerator.to_string(),
        ctr_run: Metric::new("ctr run", samples),
        shim_rss_kib: shim,
        qemu_rss_kib: qemu,
        virtiofsd_rss_kib: virtiofsd,
        cri_pod_ready,
        burst,
        first_error,
    })
}

/// `runs` CRI pods with handler `airlock-vm`, one after another, each with a VM of its own;
/// their "pod ready" times.
fn cri_pods(
    ctd: &Containerd,
    runs: usize,
    first_error: &mut Option<String>,
) -> Result<Metric, String> {
    airlock_integration::vm::cri_node_config(ctd, "auto")?;
    let subject = Subject {
        name: VM_HANDLER.into(),
        runtime_type: RUNTIME.into(),
        runc_binary: None,
        annotations: Vec::new(),
        airlock: true,
        cri_handler: Some(VM_HANDLER.into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut bench = rt
        .block_on(CriBench::connect(ctd))
        .map_err(|e| format!("{e:#}"))?;
    let mut ready = Vec::new();
    for i in 0..runs {
        let label = format!("vm-cri-{i}");
        match rt.block_on(bench.pod(ctd, &subject, VM_HANDLER, &label)) {
            Ok(phases) => ready.push(phases[READY]),
            Err(e) => {
                first_error.get_or_insert(format!("CRI pod: {e:#}"));
                ready.push(f64::NAN);
            }
        }
    }
    Ok(Metric::new("pod ready", ready))
}

/// The report's section.
pub fn markdown(r: &VmPodResult) -> String {
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let run = match &r.ctr_run.summary {
        Some(s) => format!("{:.0} / {:.0} / {:.0}", s.p50, s.p95, s.p99),
        None => "-".into(),
    };
    let mut s = format!(
        "**airlock-vm through containerd** (accelerator {}; `ctr run --rm --runtime {RUNTIME} IMAGE ID true`, {} runs, ms p50 / p95 / p99: a VM booted and shut down per container; host memory of one running pod, MiB of RSS)\n\n",
        r.accelerator,
        r.ctr_run.samples.len()
    );
    s.push_str("| ctr run | failures | shim | QEMU | virtiofsd | pod total |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- |\n");
    s.push_str(&format!(
        "| {run} | {} | {} | {} | {} | {} |\n\n",
        r.ctr_run.failures,
        mib(r.shim_rss_kib),
        mib(r.qemu_rss_kib),
        mib(r.virtiofsd_rss_kib),
        mib(r.pod_rss_kib())
    ));
    if let Some(m) = &r.cri_pod_ready {
        let ready = match &m.summary {
            Some(s) => format!("{:.0} / {:.0} / {:.0}", s.p50, s.p95, s.p99),
            None => "-".into(),
        };
        s.push_str(&format!(
            "CRI pods with handler `{VM_HANDLER}` (a VM each; `echo ready`, {} pods, as the CRI section): pod ready ms p50 / p95 / p99 {ready}, {} failures\n\n",
            m.samples.len(),
            m.failures
        ));
    }
    if let Some(b) = &r.burst {
        s.push_str(&format!(
            "{} VM pods started at once (`ctr run -d`, a VM each): {} failures, all started after {:.1} s, {:.0} MiB of host RSS for all of them running ({:.0} MiB a pod){}\n\n",
            b.pods,
            b.failures,
            b.all_started_ms / 1e3,
            b.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0 / b.pods.max(1) as f64,
            b.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default()
        ));
    }
    if let Some(e) = &r.first_error {
        s.push_str(&format!("first error: {e}\n\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_has_the_run_times_and_the_pods_memory() {
        let r = VmPodResult {
            accelerator: "tcg".into(),
            ctr_run: Metric::new("ctr run", vec![2000.0, 2100.0, f64::NAN]),
            shim_rss_kib: Some(3 * 1024),
            qemu_rss_kib: Some(200 * 1024),
            virtiofsd_rss_kib: Some(4 * 1024),
            cri_pod_ready: Some(Metric::new("pod ready", vec![3000.0, 3200.0])),
            burst: Some(Burst {
                pods: 16,
                failures: 0,
                all_started_ms: 41_000.0,
                rss_kib: 16 * 200 * 1024,
                first_error: None,
            }),
            first_error: Some("ctr run x: boom".into()),
        };
        let md = markdown(&r);
        for want in [
            "(accelerator tcg;",
            "3 runs",
            "| 1 | 3.0 | 200.0 | 4.0 | 207.0 |",
            "first error: ctr run x: boom",
            "2 pods, as the CRI section): pod ready ms p50 / p95 / p99 3",
            "16 VM pods started at once (`ctr run -d`, a VM each): 0 failures, all started after 41.0 s, 3200 MiB of host RSS for all of them running (200 MiB a pod)",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
    }
}
