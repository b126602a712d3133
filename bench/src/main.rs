//! `airlock-bench`: cold start of Airlock against the runtimes users would pick instead, all
//! through ONE private containerd in ONE run, interleaved (A B C A B C ...), same image.
//!
//! What it measures today: the whole `ctr run --rm <image> id true` (create, start, wait,
//! delete, shim start/stop) per runtime, and the idle memory of one shim per runtime. The
//! per-phase, concurrency and CRI paths are the benchmark issue's to add. Never used as a timed
//! assertion: CI runs `--quick` only to prove the harness works.

mod stats;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use airlock_integration::{Containerd, Runtime, Version, IMAGE_REF};
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "airlock-bench",
    about = "Cold-start benchmark through one containerd"
)]
struct Args {
    /// Interleaved rounds (each round runs every runtime once).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// A short smoke run (5 rounds) that proves the harness works.
    #[arg(long)]
    quick: bool,
    /// containerd to drive: 1.6 or 2.1.
    #[arg(long, default_value = "1.6")]
    containerd: String,
    /// Where to write results (JSON and Markdown).
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct RuntimeResult {
    runtime: &'static str,
    cold_start_ms: stats::Summary,
    ratio_to_runc_p50: Option<f64>,
    ratio_to_crun_p50: Option<f64>,
    shim_rss_kib: Option<u64>,
    shim_pss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    containerd: String,
    rounds: usize,
    command: &'static str,
    results: Vec<RuntimeResult>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    kernel: String,
    cgroups: &'static str,
}

fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
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
        kernel,
        cgroups,
    }
}

/// RSS and PSS (KiB) of a process, from /proc.
fn memory_kib(pid: i32) -> (Option<u64>, Option<u64>) {
    let field = |file: &str, key: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()?
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

/// Memory of the shim serving one idle, sleeping container.
fn idle_shim_memory(ctd: &Containerd, ns: &str, rt: Runtime) -> Result<(Option<u64>, Option<u64>)> {
    let id = format!("idle-{}", rt.name());
    let mut args = vec!["run".to_string(), "-d".to_string()];
    args.extend(rt.ctr_args());
    args.extend([
        IMAGE_REF.to_string(),
        id.clone(),
        "sh".into(),
        "-c".into(),
        "trap 'exit 0' TERM; while :; do sleep 1; done".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctd.ctr_ok(Some(ns), &args)?;
    std::thread::sleep(Duration::from_millis(500));
    let mem = ctd
        .shims()
        .into_iter()
        .find(|s| s.namespace == ns && s.id == id)
        .map(|s| memory_kib(s.pid))
        .unwrap_or((None, None));
    ctd.ctr_ok(Some(ns), &["tasks", "kill", "-s", "KILL", &id])?;
    for _ in 0..200 {
        if ctd.ctr(Some(ns), &["tasks", "rm", &id])?.code == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    ctd.ctr_ok(Some(ns), &["containers", "rm", &id])?;
    Ok(mem)
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "`{}` through containerd {}, {} interleaved rounds; {} cores, kernel {}, cgroups {}.\n\n",
        r.command, r.containerd, r.rounds, r.machine.cores, r.machine.kernel, r.machine.cgroups
    );
    s.push_str("| runtime | min | p50 | p95 | p99 | max | p50 / runc | p50 / crun | idle shim RSS | PSS |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let ratio = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let kib = |v: Option<u64>| {
        v.map(|x| format!("{:.1} MiB", x as f64 / 1024.0))
            .unwrap_or_else(|| "-".into())
    };
    for x in &r.results {
        let c = &x.cold_start_ms;
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            x.runtime,
            c.min,
            c.p50,
            c.p95,
            c.p99,
            c.max,
            ratio(x.ratio_to_runc_p50),
            ratio(x.ratio_to_crun_p50),
            kib(x.shim_rss_kib),
            kib(x.shim_pss_kib)
        ));
    }
    s.push_str("\nTimes in ms, wall clock of the whole `ctr` command. Ratios are medians of per-round ratios.\n");
    s
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rounds = if args.quick { 5 } else { args.runs };
    let version = match args.containerd.as_str() {
        "1.6" => Version::V1_6,
        "2.1" => Version::V2_1,
        other => bail!("--containerd {other}: use 1.6 or 2.1"),
    };
    let runtimes: Vec<Runtime> = [Runtime::Airlock, Runtime::Runc, Runtime::Crun]
        .into_iter()
        .filter(|rt| {
            let bin = match rt {
                Runtime::Runc => "runc",
                Runtime::Crun => "crun",
                Runtime::Airlock => return true,
            };
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
                .unwrap_or(false);
            if !found {
                eprintln!("skipping {}: `{bin}` is not installed", rt.name());
            }
            found
        })
        .collect();
    let ctd = Containerd::builder()
        .version(version)
        .start()
        .context("start a private containerd")?;
    let ns = ctd.new_namespace("bench")?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runtimes.len()];
    // One warm-up round, not counted: first runs page in binaries.
    for round in 0..=rounds {
        for (i, rt) in runtimes.iter().enumerate() {
            let id = format!("b-{}-{round}", rt.name());
            let out = ctd.ctr_run(&ns, *rt, &id, &["true"])?;
            if out.code != Some(0) {
                bail!(
                    "{} run {round} failed: {:?} {}",
                    rt.name(),
                    out.code,
                    out.stderr
                );
            }
            if round > 0 {
                samples[i].push(out.elapsed.as_secs_f64() * 1000.0);
            }
        }
        eprint!("\rround {round}/{rounds}");
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let find = |want: Runtime| runtimes.iter().position(|r| *r == want);
    let mut results = Vec::new();
    for (i, rt) in runtimes.iter().enumerate() {
        let (rss, pss) = idle_shim_memory(&ctd, &ns, *rt)?;
        results.push(RuntimeResult {
            runtime: rt.name(),
            cold_start_ms: stats::summarize(&samples[i]).expect("rounds >= 1"),
            ratio_to_runc_p50: find(Runtime::Runc)
                .and_then(|j| stats::median_ratio(&samples[i], &samples[j])),
            ratio_to_crun_p50: find(Runtime::Crun)
                .and_then(|j| stats::median_ratio(&samples[i], &samples[j])),
            shim_rss_kib: rss,
            shim_pss_kib: pss,
        });
    }
    let report = Report {
        machine: machine(),
        containerd: ctd.version().label().to_string(),
        rounds,
        command: "ctr run --rm airlock.test/busybox:latest ID true",
        results,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("cold-start.json"), &json)?;
    let md = markdown(&report);
    std::fs::write(args.out.join("cold-start.md"), &md)?;
    println!("{md}");
    println!("written: {}/cold-start.{{json,md}}", args.out.display());
    Ok(())
}
