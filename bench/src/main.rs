//! `airlock-bench`: cold start, exec, concurrency and memory of Airlock against the runtimes users
//! would pick instead, all through ONE private containerd in ONE run, interleaved, same image;
//! plus the floor of each OCI runtime alone on a bundle. Writes `results/cold-start.{json,md,svg}`.
//!
//! Never used as a timed assertion: CI runs `--quick` only to prove the harness works.

mod baseline;
mod cri;
mod measure;
mod order;
mod report;
mod stats;
mod subjects;
mod vm;
mod vm_pod;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_integration::{Containerd, Version};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use report::{
    BaselineResult, CriResult, Goal, Machine, MemoryResult, Metric, Report, SubjectResult,
    SweepResult,
};
use subjects::Subject;

#[derive(Debug, Parser)]
#[command(
    name = "airlock-bench",
    about = "Cold-start benchmark through one containerd"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Interleaved rounds (each round runs every runtime once; one more warm-up round is dropped).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// A smoke run (about 40 s): 3 rounds, 3 execs, 2 CRI rounds, sweep 1 and 4, 2 idle pods
    /// (overrides --runs, --sweep and --pods). Proves the harness works; its figures are not a
    /// measurement.
    #[arg(long)]
    quick: bool,
    /// containerd to drive: 1.6 or 2.1.
    #[arg(long, default_value = "1.6")]
    containerd: String,
    /// Where to write cold-start.{json,md,svg}.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Airlock policies to measure (one subject each, via the `airlock.dev/policy` annotation).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "agent-strict,agent-default"
    )]
    policies: Vec<String>,
    /// Concurrency levels: sandboxes started at once.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    sweep: Vec<usize>,
    /// Idle pods per runtime for the memory figures.
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Only these subjects (names as in the report, e.g. `airlock/agent-strict,runc`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the direct runtime baseline (no containerd).
    #[arg(long)]
    no_baseline: bool,
    /// Skip the CRI section (then containerd runs without its CRI plugin).
    #[arg(long)]
    no_cri: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: the direct baseline, run in a child (subreaper, private mount namespace).
    #[command(hide = true)]
    BaselineWorker {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        rounds: usize,
        runtimes: Vec<String>,
    },
    /// Renders cold-start.md and cold-start.svg again from a cold-start.json.
    Render {
        json: PathBuf,
        /// Output dir (default: the JSON's dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_total_mib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    let cgroups = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        "hybrid (v1 controllers)"
    } else {
        "v1"
    };
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu,
        mem_total_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cgroups: cgroups.into(),
    }
}

/// Samples of one subject while the rounds run (NaN = failed round).
struct Acc {
    ctr: Vec<f64>,
    phases: Vec<Vec<f64>>,
    exec: Vec<f64>,
    failures: usize,
    first_error: Option<String>,
}

impl Acc {
    fn fail(&mut self, what: &str, e: anyhow::Error) {
        self.failures += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what}: {e:#}"));
    }
}

/// Pushes a sample, or NaN for a failed round (and returns its error).
fn push_sample(v: &mut Vec<f64>, r: Result<f64>) -> Option<anyhow::Error> {
    match r {
        Ok(t) => {
            v.push(t);
            None
        }
        Err(e) => {
            v.push(f64::NAN);
            Some(e)
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Cmd::BaselineWorker {
        bundle,
        rounds,
        runtimes,
    }) = &args.cmd
    {
        return baseline::worker(bundle, *rounds, runtimes);
    }
    if let Some(Cmd::Render { json, out }) = &args.cmd {
        let report: Report = serde_json::from_slice(
            &std::fs::read(json).with_context(|| format!("read {}", json.display()))?,
        )?;
        let dir = out
            .clone()
            .or_else(|| json.parent().map(PathBuf::from))
            .unwrap_or_default();
        return write_report(&report, &dir);
    }
    run(args)
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let (rounds, exec_runs, levels, pods, cri_rounds) = if args.quick {
        (3, 3, vec![1, 4], 2, 2)
    } else {
        (
            args.runs,
            args.runs,
            args.sweep.clone(),
            args.pods,
            args.runs,
        )
    };
    let cri_rounds = if args.no_cri { 0 } else { cri_rounds };
    anyhow::ensure!(
        rounds >= 1 && pods >= 1,
        "--runs and --pods must be at least 1"
    );
    let version = match args.containerd.as_str() {
        "1.6" => Version::V1_6,
        "2.1" => Version::V2_1,
        other => bail!("--containerd {other}: use 1.6 or 2.1"),
    };
    let load_before = loadavg();
    // One containerd for every section: with CRI on it runs in a network namespace of its own
    // (a CNI bridge for the pods); the ctr and gRPC containers are unaffected (each gets a new
    // network namespace either way).
    let ctd = Containerd::builder()
        .version(version)
        .cri(!args.no_cri)
        .start()
        .context("start a private containerd")?;
    if !args.no_cri {
        ctd.import_cri_images()
            .context("import the busybox and pause images into CRI's namespace")?;
    }
    let ns = ctd.new_namespace("bench")?;
    let (mut subjects, mut skipped) = subjects::detect(&ctd, &args.policies);
    if !args.only.is_empty() {
        subjects.retain(|s| args.only.contains(&s.name));
    }
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    anyhow::ensure!(!subjects.is_empty(), "no runtime to measure");
    let versions = subjects::versions(&ctd);
    let n = subjects.len();
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(ctd.client())?;
    let fifo_dir = tempfile::Builder::new()
        .prefix("airlock-bench-io-")
        .tempdir()?;

    let cri_n = subjects.iter().filter(|s| s.cri_handler.is_some()).count();
    let cri_steps = if args.no_cri {
        0
    } else {
        (cri_rounds + 1) * cri_n
    };
    let steps =
        ((rounds + 1) * n * 2 + cri_steps + exec_runs * n + levels.len() * n + n + 1) as u64;
    let pb = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(200));

    let mut acc: Vec<Acc> = (0..n)
        .map(|_| Acc {
            ctr: Vec::new(),
            phases: vec![Vec::new(); measure::PHASES.len()],
            exec: Vec::new(),
            failures: 0,
            first_error: None,
        })
        .collect();

    // 1. Cold starts: one warm-up round (not counted: first runs page in binaries), then
    //    `rounds` interleaved rounds in a balanced order: each runtime follows every other one
    //    equally often (`order.rs`), so none carries a heavier predecessor's leftovers.
    for round in 0..=rounds {
        pb.set_message(format!("cold start, round {round}/{rounds} (ctr)"));
        for i in order::round_order(round, n) {
            let s = &subjects[i];
            let id = format!("c-{}-{round}", slug(&s.name));
            let r = measure::ctr_run(&ctd, &ns, s, &id);
            if round > 0 {
                if let Some(e) = push_sample(&mut acc[i].ctr, r) {
                    acc[i].fail("ctr run", e);
                }
            }
            pb.inc(1);
        }
        pb.set_message(format!("cold start, round {round}/{rounds} (gRPC phases)"));
        for i in order::round_order(round, n) {
            let s = &subjects[i];
            let id = format!("g-{}-{round}", slug(&s.name));
            let r = s.spec(&ctd, &ns, &id, &["echo", "ready"]).and_then(|spec| {
                rt.block_on(measure::grpc_cold(
                    &client,
                    &ns,
                    s,
                    &id,
                    spec,
                    fifo_dir.path(),
                ))
            });
            if round > 0 {
                match r {
                    Ok(p) => acc[i].phases.iter_mut().zip(p).for_each(|(v, x)| v.push(x)),
                    Err(e) => {
                        acc[i].phases.iter_mut().for_each(|v| v.push(f64::NAN));
                        acc[i].fail("gRPC cold start", e);
                    }
                }
            }
            pb.inc(1);
        }
    }

    // 2. Pods through the CRI API.
    let mut cri_results: Vec<CriResult> = Vec::new();
    if !args.no_cri {
        for s in subjects.iter().filter(|s| s.cri_handler.is_none()) {
            skipped.push(format!(
                "{} through CRI: no CRI runtime handler is registered for it",
                s.name
            ));
        }
        match cri::run(&rt, &ctd, &subjects, cri_rounds, |msg| {
            pb.set_message(msg.to_string());
            pb.inc(1);
        }) {
            Ok(r) => cri_results = r,
            Err(e) => skipped.push(format!("CRI section: {e:#}")),
        }
    }

    // 3. Idle pods: memory per pod, then exec into the first one of each runtime.
    pb.set_message(format!("memory: {pods} idle pods per runtime"));
    let mut memory = Vec::new();
    let mut pod_ids: Vec<Vec<String>> = Vec::new();
    for s in &subjects {
        let ids: Vec<String> = (0..pods)
            .map(|p| format!("m-{}-{p}", slug(&s.name)))
            .collect();
        let mut up = Vec::new();
        for id in &ids {
            let spec = s.spec(&ctd, &ns, id, &["sleep", "600"])?;
            match rt.block_on(measure::start_sandbox(&client, &ns, s, id, spec)) {
                Ok(()) => up.push(id.clone()),
                Err(e) => pb.println(format!("{}: idle pod {id} failed: {e:#}", s.name)),
            }
        }
        pod_ids.push(up);
        pb.inc(1);
    }
    // Idle means idle: every shim gets time to finish what it does after its last request
    // (Airlock's hands freed heap back after 1 s without requests), as a pod that waits for
    // work has had. The same wait for every runtime.
    std::thread::sleep(Duration::from_secs(2));
    for (s, ids) in subjects.iter().zip(&pod_ids) {
        let m = measure::pod_memory(&ctd, &ns, ids);
        memory.push(MemoryResult {
            name: s.name.clone(),
            pods: m.pods,
            shims: m.shims_found,
            shim_rss_kib: m.shim_rss_kib,
            shim_pss_kib: m.shim_pss_kib,
            pod_pss_kib: m.pod_pss_kib,
        });
    }
    pb.set_message("exec into a running sandbox");
    for round in 0..exec_runs {
        for i in order::round_order(round, n) {
            let Some(id) = pod_ids[i].first() else {
                acc[i].exec.push(f64::NAN);
                pb.inc(1);
                continue;
            };
            let r = subjects[i]
                .spec(&ctd, &ns, id, &["true"])
                .and_then(|spec| measure::process_of(&spec))
                .and_then(|p| {
                    rt.block_on(measure::exec_true(
                        &client,
                        &ns,
                        id,
                        &format!("e{round}"),
                        p,
                    ))
                });
            if let Some(e) = push_sample(&mut acc[i].exec, r) {
                acc[i].fail("exec", e);
            }
            pb.inc(1);
        }
    }
    rt.block_on(async {
        for ids in &pod_ids {
            for id in ids {
                measure::remove_sandbox(&client, &ns, id).await;
            }
        }
    });

    // 4. Concurrency sweep.
    let mut sweep = Vec::new();
    for (li, &level) in levels.iter().enumerate() {
        for i in order::round_order(li, n) {
            let s = &subjects[i];
            pb.set_message(format!("concurrency: {level} x {}", s.name));
            let specs = (0..level)
                .map(|j| {
                    // Fixed width: runsc (2022) resolves ids by prefix, so `x-1` would be
                    // "ambiguous" next to `x-11`.
                    let id = format!("s{level}-{}-{j:03}", slug(&s.name));
                    s.spec(&ctd, &ns, &id, &["sleep", "600"])
                        .map(|spec| (id, spec))
                })
                .collect::<Result<Vec<_>>>()?;
            let b = rt.block_on(measure::burst(&client, &ns, s, specs));
            sweep.push(SweepResult {
                name: s.name.clone(),
                n: level,
                all_running_ms: (b.failures == 0)
                    .then(|| b.running_ms.iter().copied().fold(0.0, f64::max)),
                per_sandbox: stats::summarize(&b.running_ms),
                failures: b.failures,
                first_error: b.first_error,
            });
            pb.inc(1);
        }
    }
    sweep.sort_by(|a, b| {
        (a.n, subject_index(&subjects, &a.name)).cmp(&(b.n, subject_index(&subjects, &b.name)))
    });

    // 5. The floor: each OCI runtime alone on a bundle.
    let mut baseline_results = Vec::new();
    if !args.no_baseline {
        pb.set_message("runtime alone on a bundle (no containerd)");
        let mut direct: Vec<(String, PathBuf)> = vec![(
            "airlock-runtime".into(),
            ctd.airlock_bin_dir().join("airlock-runtime"),
        )];
        for (name, bin) in [("runc", "runc"), ("crun", "crun"), ("gvisor", "runsc")] {
            match subjects::which(bin) {
                Some(p) => direct.push((name.into(), p)),
                None => skipped.push(format!("baseline {name}: `{bin}` is not installed")),
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("airlock-bench-bundle-")
            .tempdir()?;
        let bundle = dir.path().join("bundle");
        baseline::make_bundle(&bundle)?;
        match baseline::run(&bundle, rounds, &direct) {
            Ok(series) => {
                for x in series {
                    let phases = baseline::PHASES
                        .iter()
                        .enumerate()
                        .map(|(p, name)| {
                            Metric::new(name, x.samples.iter().map(|s| s[p]).collect())
                        })
                        .collect();
                    baseline_results.push(BaselineResult {
                        name: x.name,
                        phases,
                        failures: x.failures,
                        first_error: x.first_error,
                    });
                }
            }
            Err(e) => pb.println(format!("baseline failed: {e:#}")),
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    // 6. Ratios, per interleaved round.
    let peers: Vec<usize> = (0..n).filter(|&i| !subjects[i].airlock).collect();
    let total = measure::PHASES.len() - 1;
    let fastest_ctr = stats::fastest_per_round(
        &peers
            .iter()
            .map(|&i| acc[i].ctr.as_slice())
            .collect::<Vec<_>>(),
    );
    let fastest_grpc = stats::fastest_per_round(
        &peers
            .iter()
            .map(|&i| acc[i].phases[total].as_slice())
            .collect::<Vec<_>>(),
    );
    let idx = |name: &str| subjects.iter().position(|s| s.name == name);
    let mut results = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        let mut ctr_ratios = Vec::new();
        let mut grpc_ratios = Vec::new();
        for peer in ["runc", "crun"] {
            if let Some(j) = idx(peer) {
                ctr_ratios.extend(stats::ratio(peer, &acc[i].ctr, &acc[j].ctr));
                grpc_ratios.extend(stats::ratio(
                    peer,
                    &acc[i].phases[total],
                    &acc[j].phases[total],
                ));
            }
        }
        ctr_ratios.extend(stats::ratio("fastest peer", &acc[i].ctr, &fastest_ctr));
        grpc_ratios.extend(stats::ratio(
            "fastest peer",
            &acc[i].phases[total],
            &fastest_grpc,
        ));
        results.push(SubjectResult {
            name: s.name.clone(),
            airlock: s.airlock,
            ctr_run: Metric::new("ctr run", acc[i].ctr.clone()),
            phases: measure::PHASES
                .iter()
                .zip(&acc[i].phases)
                .map(|(p, v)| Metric::new(p, v.clone()))
                .collect(),
            exec: Metric::new("exec", acc[i].exec.clone()),
            ctr_ratios,
            grpc_ratios,
            failures: acc[i].failures,
            first_error: acc[i].first_error.take(),
        });
    }
    let goals = goals(&results, &cri_results, &memory);
    // The microVM guest, booted with no container.
    eprintln!("airlock-vm guest boots");
    let vm_boot = match vm::measure(if args.quick { 2 } else { 10 }, ctd.airlock_bin_dir()) {
        Ok(r) => Some(r),
        Err(why) => {
            skipped.push(format!("airlock-vm guest boot: {why}"));
            None
        }
    };
    // The microVM mode through containerd: a VM per container, and one pod's memory.
    let vm_pod = if vm_boot.is_some() {
        eprintln!("airlock-vm through containerd");
        let (runs, burst) = if args.quick { (2, 0) } else { (10, 16) };
        match vm_pod::measure(&ctd, runs, burst) {
            Ok(r) => Some(r),
            Err(why) => {
                skipped.push(format!("airlock-vm through containerd: {why}"));
                None
            }
        }
    } else {
        None
    };
    let report = Report {
        bench_version: env!("CARGO_PKG_VERSION").into(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        quick: args.quick,
        machine: machine(),
        load_before,
        load_after: loadavg(),
        containerd: ctd.version().label().to_string(),
        versions,
        rounds,
        order: "balanced: each runtime runs after every other equally often".into(),
        skipped,
        not_measured: [
            Some("warm start: Airlock has no warm pools yet"),
            args.no_cri.then_some("CRI path: --no-cri"),
            Some("airlock-vm gRPC phases: not in the benchmark yet (its ctr run and CRI pod ready are in its own section)"),
        ]
        .into_iter()
        .flatten()
        .map(String::from)
        .collect(),
        results,
        sweep,
        memory,
        baseline: baseline_results,
        cri: cri_results,
        cri_rounds,
        vm_boot,
        vm_pod,
        goals,
    };
    write_report(&report, &args.out)?;
    println!("in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Writes cold-start.{json,md,svg} into `dir` and prints the Markdown.
fn write_report(report: &Report, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(
        dir.join("cold-start.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let md = report.markdown();
    std::fs::write(dir.join("cold-start.md"), &md)?;
    match report.svg() {
        Ok(svg) => std::fs::write(dir.join("cold-start.svg"), svg)?,
        Err(e) => eprintln!("SVG chart not written: {e}"),
    }
    println!("{md}");
    println!("written: {}/cold-start.{{json,md,svg}}", dir.display());
    Ok(())
}

fn subject_index(subjects: &[Subject], name: &str) -> usize {
    subjects
        .iter()
        .position(|s| s.name == name)
        .unwrap_or(usize::MAX)
}

/// A container-id-safe form of a subject name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The product goals, for airlock/agent-strict.
fn goals(results: &[SubjectResult], cri: &[CriResult], memory: &[MemoryResult]) -> Vec<Goal> {
    const SUBJECT: &str = "airlock/agent-strict";
    let Some(r) = results.iter().find(|r| r.name == SUBJECT) else {
        return Vec::new();
    };
    let ratio = |rs: &[stats::Ratio], to: &str| rs.iter().find(|x| x.to == to).map(|x| x.p50);
    let tail = |m: &Metric| m.summary.as_ref().map(|s| s.p99 / s.p50);
    let total = r.phases.last();
    let cri_ready = cri.iter().find(|c| c.name == SUBJECT);
    let rss = memory
        .iter()
        .find(|m| m.name == SUBJECT)
        .and_then(|m| m.shim_rss_kib)
        .map(|k| k as f64 / 1024.0);
    let goal = |goal: &str, measured: Option<f64>, target: f64| Goal {
        goal: goal.into(),
        measured,
        target,
        pass: measured.map(|m| m <= target),
    };
    vec![
        goal(
            "cold start p50 / runc-v2+runc (ctr run)",
            ratio(&r.ctr_ratios, "runc"),
            0.5,
        ),
        goal(
            "cold start p50 / crun through its shim (ctr run)",
            ratio(&r.ctr_ratios, "crun"),
            0.6,
        ),
        goal("cold start p99 / own p50 (ctr run)", tail(&r.ctr_run), 2.0),
        goal(
            "cold start p50 / runc-v2+runc (gRPC total)",
            ratio(&r.grpc_ratios, "runc"),
            0.5,
        ),
        goal(
            "cold start p50 / crun through its shim (gRPC total)",
            ratio(&r.grpc_ratios, "crun"),
            0.6,
        ),
        goal(
            "cold start p99 / own p50 (gRPC total)",
            total.and_then(tail),
            2.0,
        ),
        goal(
            "pod ready p50 / runc (CRI)",
            cri_ready.and_then(|c| ratio(&c.ready_ratios, "runc")),
            0.5,
        ),
        goal(
            "pod ready p50 / crun (CRI)",
            cri_ready.and_then(|c| ratio(&c.ready_ratios, "crun")),
            0.6,
        ),
        goal("shim RSS per pod, MiB", rss, 4.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/benchmark/cold-start.md is what airlock-bench wrote from the run in
    /// cold-start.json next to it, not a hand-edited page (`airlock-bench render` rewrites it).
    #[test]
    fn the_documented_report_is_the_benchmarks_own() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmark");
        let report: Report =
            serde_json::from_slice(&std::fs::read(dir.join("cold-start.json")).unwrap()).unwrap();
        let page = std::fs::read_to_string(dir.join("cold-start.md")).unwrap();
        assert!(
            page == report.markdown(),
            "docs/benchmark/cold-start.md differs from the report of cold-start.json: run \
             `airlock-bench render docs/benchmark/cold-start.json` instead of editing it"
        );
    }
}
