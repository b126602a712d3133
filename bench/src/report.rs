//! The report: what was measured (JSON), rendered as Markdown for people and an SVG chart.

use serde::{Deserialize, Serialize};

use crate::stats::{Ratio, Summary};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub cgroups: String,
}

/// One metric of one subject: its samples (ms) and their summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    pub name: String,
    pub summary: Option<Summary>,
    /// Per interleaved round; `null` where that round failed.
    pub samples: Vec<Option<f64>>,
    /// Rounds that failed.
    pub failures: usize,
}

impl Metric {
    pub fn new(name: &str, samples: Vec<f64>) -> Self {
        let ok: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        Self {
            name: name.into(),
            summary: crate::stats::summarize(&ok),
            failures: samples.len() - ok.len(),
            samples: samples
                .into_iter()
                .map(|x| x.is_finite().then_some(x))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubjectResult {
    pub name: String,
    pub airlock: bool,
    /// Whole `ctr run --rm IMAGE ID true`.
    pub ctr_run: Metric,
    /// Per-phase gRPC path (`measure::PHASES`).
    pub phases: Vec<Metric>,
    pub exec: Metric,
    /// Ratios of the `ctr run` p50 (per-round medians) to runc, crun and the fastest peer.
    pub ctr_ratios: Vec<Ratio>,
    /// Same for the gRPC total.
    pub grpc_ratios: Vec<Ratio>,
    pub failures: usize,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepResult {
    pub name: String,
    pub n: usize,
    /// Time until all sandboxes of the burst were running (Task.Start returned), ms.
    pub all_running_ms: Option<f64>,
    /// Per sandbox, ms from the burst's start to its own Task.Start returning.
    pub per_sandbox: Option<Summary>,
    pub failures: usize,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryResult {
    pub name: String,
    pub pods: usize,
    /// Shim processes found for those pods.
    pub shims: usize,
    pub shim_rss_kib: Option<u64>,
    pub shim_pss_kib: Option<u64>,
    /// PSS of the shim and every process under it (runtime helpers and the idle workload).
    pub pod_pss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaselineResult {
    pub name: String,
    /// `baseline::PHASES`.
    pub phases: Vec<Metric>,
    pub failures: usize,
    pub first_error: Option<String>,
}

/// One subject through the CRI API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CriResult {
    pub name: String,
    /// CRI runtime handler (`airlock`, `runc`, `crun`, `runsc`).
    pub handler: String,
    /// `cri::PHASES`.
    pub phases: Vec<Metric>,
    /// Ratios of the "pod ready" p50 (per-round medians) to runc and crun.
    pub ready_ratios: Vec<Ratio>,
    /// Same for the total.
    pub total_ratios: Vec<Ratio>,
    pub failures: usize,
    pub first_error: Option<String>,
    /// Why it was not measured (its warm-up pod failed), if so.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Goal {
    pub goal: String,
    pub measured: Option<f64>,
    pub target: f64,
    pub pass: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub bench_version: String,
    pub unix_time: u64,
    pub quick: bool,
    pub machine: Machine,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub containerd: String,
    pub versions: Vec<(String, String)>,
    pub rounds: usize,
    pub order: String,
    pub skipped: Vec<String>,
    pub not_measured: Vec<String>,
    pub results: Vec<SubjectResult>,
    pub sweep: Vec<SweepResult>,
    pub memory: Vec<MemoryResult>,
    pub baseline: Vec<BaselineResult>,
    /// Pods through the CRI API (absent in reports from before it existed).
    #[serde(default)]
    pub cri: Vec<CriResult>,
    /// Interleaved rounds of the CRI section.
    #[serde(default)]
    pub cri_rounds: usize,
    /// The microVM mode's guest booted with no container (absent in reports from before).
    #[serde(default)]
    pub vm_boot: Option<crate::vm::VmBootResult>,
    /// The microVM mode through containerd (absent in reports from before).
    #[serde(default)]
    pub vm_pod: Option<crate::vm_pod::VmPodResult>,
    pub goals: Vec<Goal>,
}

fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

fn opt_mib(v: Option<u64>) -> String {
    v.map(|x| format!("{:.1}", x as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn ratio_cell(rs: &[Ratio], to: &str) -> String {
    rs.iter()
        .find(|r| r.to == to)
        .map(|r| format!("{:.2} ({:.2}–{:.2})", r.p50, r.p25, r.p75))
        .unwrap_or_else(|| "-".into())
}

fn p50_p99(m: &Metric) -> String {
    m.summary
        .as_ref()
        .map(|s| format!("{} / {}", f1(s.p50), f1(s.p99)))
        .unwrap_or_else(|| "-".into())
}

/// `| name | runs | fail | min | p50 | p95 | p99 | max | CV |` then `extra` cells, for a
/// distribution table (dashes when every run failed).
fn summary_row(name: &str, m: &Metric, extra: &[String]) -> String {
    let mut row = match &m.summary {
        Some(c) => format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
            c.runs,
            m.failures,
            f1(c.min),
            f1(c.p50),
            f1(c.p95),
            f1(c.p99),
            f1(c.max),
            c.cv * 100.0,
        ),
        None => format!("| {name} | 0 | {} | - | - | - | - | - | - |", m.failures),
    };
    for e in extra {
        row.push_str(&format!(" {e} |"));
    }
    row.push('\n');
    row
}

/// Header of a [`summary_row`] table with `extra` column names.
fn summary_header(extra: &[&str]) -> String {
    let mut h = "| runtime | runs | fail | min | p50 | p95 | p99 | max | CV |".to_string();
    let mut sep = "| --- | --- | --- | --- | --- | --- | --- | --- | --- |".to_string();
    for e in extra {
        h.push_str(&format!(" {e} |"));
        sep.push_str(" --- |");
    }
    format!("{h}\n{sep}\n")
}

/// A per-phase table: p50 / p99 of every phase, the failed rounds (of the last phase, the
/// total) and the total's ratios to runc and crun.
fn phase_table(phases: &[&str], rows: &[(&str, &[Metric], &[Ratio])]) -> String {
    let mut s = String::from("| runtime | fail |");
    for p in phases {
        s.push_str(&format!(" {p} |"));
    }
    s.push_str(" total / runc | total / crun |\n|---|---|");
    for _ in phases {
        s.push_str("---|");
    }
    s.push_str("---|---|\n");
    for (name, metrics, ratios) in rows {
        let fail = metrics.last().map(|m| m.failures).unwrap_or(0);
        s.push_str(&format!("| {name} | {fail} |"));
        for p in *metrics {
            s.push_str(&format!(" {} |", p50_p99(p)));
        }
        s.push_str(&format!(
            " {} | {} |\n",
            ratio_cell(ratios, "runc"),
            ratio_cell(ratios, "crun")
        ));
    }
    s
}

impl Report {
    /// Median coefficient of variation of the `ctr run` samples: one figure for "how noisy".
    pub fn noise_cv(&self) -> Option<f64> {
        let mut cvs: Vec<f64> = self
            .results
            .iter()
            .filter_map(|r| r.ctr_run.summary.as_ref().map(|s| s.cv))
            .collect();
        cvs.sort_by(|a, b| a.total_cmp(b));
        (!cvs.is_empty()).then(|| crate::stats::percentile(&cvs, 50.0))
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        s.push_str(&format!(
            "Machine: {} cores ({}), {} MiB, kernel {}, cgroups {}. containerd {}. {} interleaved \
             rounds ({}){}. Load average before {:.2} {:.2} {:.2}, after {:.2} {:.2} {:.2}; \
             median CV of `ctr run` samples {}.\n\n",
            m.cores,
            m.cpu,
            m.mem_total_mib,
            m.kernel,
            m.cgroups,
            self.containerd,
            self.rounds,
            self.order,
            if self.quick {
                ", --quick smoke run: not a measurement"
            } else {
                ""
            },
            self.load_before[0],
            self.load_before[1],
            self.load_before[2],
            self.load_after[0],
            self.load_after[1],
            self.load_after[2],
            self.noise_cv()
                .map(|c| format!("{:.0}%", c * 100.0))
                .unwrap_or_else(|| "-".into()),
        ));
        s.push_str("Versions: ");
        s.push_str(
            &self
                .versions
                .iter()
                .map(|(n, v)| format!("{n} `{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push_str(".\n\n");

        s.push_str("**Cold start, whole `ctr run --rm IMAGE ID true`** (ms; ratios: median of per-round ratios, p25–p75 in brackets)\n\n");
        s.push_str(&summary_header(&[
            "p50 / runc",
            "p50 / crun",
            "p50 / fastest peer",
        ]));
        for r in &self.results {
            s.push_str(&summary_row(
                &r.name,
                &r.ctr_run,
                &[
                    ratio_cell(&r.ctr_ratios, "runc"),
                    ratio_cell(&r.ctr_ratios, "crun"),
                    ratio_cell(&r.ctr_ratios, "fastest peer"),
                ],
            ));
        }

        s.push_str("\n**Cold start by phase, gRPC client** (ms, p50 / p99; `first output` = request to the first byte on the stdout FIFO; create includes shim start and snapshot)\n\n");
        let rows: Vec<(&str, &[Metric], &[Ratio])> = self
            .results
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.phases.as_slice(),
                    r.grpc_ratios.as_slice(),
                )
            })
            .collect();
        s.push_str(&phase_table(&crate::measure::PHASES, &rows));

        s.push_str(&self.cri_markdown());

        s.push_str(
            "\n**Exec `true` into a running sandbox, gRPC** (exec, start, wait, delete; ms)\n\n",
        );
        s.push_str("| runtime | runs | fail | p50 | p95 | p99 | max |\n| --- | --- | --- | --- | --- | --- | --- |\n");
        for r in &self.results {
            if let Some(e) = &r.exec.summary {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    r.name,
                    e.runs,
                    r.exec.failures,
                    f1(e.p50),
                    f1(e.p95),
                    f1(e.p99),
                    f1(e.max)
                ));
            } else {
                s.push_str(&format!(
                    "| {} | 0 | {} | - | - | - | - |\n",
                    r.name, r.exec.failures
                ));
            }
        }

        if !self.sweep.is_empty() {
            let mut levels: Vec<usize> = self.sweep.iter().map(|w| w.n).collect();
            levels.sort_unstable();
            levels.dedup();
            s.push_str("\n**Concurrency: N sandboxes started at once, gRPC** (ms until all were running, and per sandbox p50 / p99 from the burst's start to its Task.Start returning)\n\n| runtime |");
            for n in &levels {
                s.push_str(&format!(" N={n} |"));
            }
            s.push_str(" failures |\n|---|");
            for _ in &levels {
                s.push_str("---|");
            }
            s.push_str("---|\n");
            for r in &self.results {
                s.push_str(&format!("| {} |", r.name));
                let mut failures = 0;
                for n in &levels {
                    let cell = match self.sweep.iter().find(|w| w.name == r.name && w.n == *n) {
                        Some(w) => {
                            failures += w.failures;
                            match (w.all_running_ms, &w.per_sandbox) {
                                (Some(all), Some(p)) => {
                                    format!("{} ({} / {})", f1(all), f1(p.p50), f1(p.p99))
                                }
                                _ => format!("{} failed", w.failures),
                            }
                        }
                        None => "-".into(),
                    };
                    s.push_str(&format!(" {cell} |"));
                }
                s.push_str(&format!(" {failures} |\n"));
            }
        }

        if !self.memory.is_empty() {
            s.push_str("\n**Memory per idle pod** (MiB; one shim per pod; pod = shim + every process under it, workload included)\n\n");
            s.push_str("| runtime | pods | shim RSS | shim PSS | pod PSS |\n| --- | --- | --- | --- | --- |\n");
            for x in &self.memory {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    x.name,
                    x.pods,
                    opt_mib(x.shim_rss_kib),
                    opt_mib(x.shim_pss_kib),
                    opt_mib(x.pod_pss_kib)
                ));
            }
        }

        if !self.baseline.is_empty() {
            s.push_str("\n**Floor without containerd: the OCI runtime alone on a bundle** (ms, p50 / p99; create, start, wait, delete as a shim does; `containerd + shim` = gRPC total p50 − this total p50)\n\n");
            s.push_str("| runtime |");
            for p in crate::baseline::PHASES {
                s.push_str(&format!(" {p} |"));
            }
            s.push_str(" containerd + shim |\n|---|");
            for _ in crate::baseline::PHASES {
                s.push_str("---|");
            }
            s.push_str("---|\n");
            for b in &self.baseline {
                s.push_str(&format!("| {} |", b.name));
                for p in &b.phases {
                    s.push_str(&format!(" {} |", p50_p99(p)));
                }
                let share = self.containerd_share(&b.name);
                s.push_str(&format!(
                    " {} |\n",
                    match share {
                        Some((ms, frac)) if ms >= 0.0 =>
                            format!("{} ({:.0}%)", f1(ms), frac * 100.0),
                        // gVisor: `runsc delete` outside a shim waits for its gofer (~1.5 s here).
                        Some(_) => "n/a (runtime alone is slower)".into(),
                        None => "-".into(),
                    }
                ));
            }
            if self.baseline.iter().any(|b| b.name == "airlock-runtime") {
                s.push_str("\nAirlock's shim starts a container without poststart hooks and deletes a stopped one without executing `airlock-runtime` (docs/design/start-path.md, \"Start and delete without a process\"): on its containerd path only create runs the runtime, so the floor's start and delete for `airlock-runtime` are not part of that path, and its `containerd + shim` figure is understated by about their sum.\n");
            }
        }

        if let Some(vm) = &self.vm_boot {
            s.push('\n');
            s.push_str(&crate::vm::markdown(vm));
        }
        if let Some(vm) = &self.vm_pod {
            s.push_str(&crate::vm_pod::markdown(vm));
        }

        if !self.goals.is_empty() {
            s.push_str("\n**Product goals** (airlock/agent-strict)\n\n| goal | target | measured | verdict |\n| --- | --- | --- | --- |\n");
            for g in &self.goals {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    g.goal,
                    g.target,
                    g.measured
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    match g.pass {
                        Some(true) => "met",
                        Some(false) => "NOT met",
                        None => "not measured",
                    }
                ));
            }
        }
        for r in &self.results {
            if let Some(e) = &r.first_error {
                s.push_str(&format!(
                    "\n{} failed {} time(s); first error: {e}\n",
                    r.name, r.failures
                ));
            }
        }
        for w in &self.sweep {
            if let Some(e) = &w.first_error {
                s.push_str(&format!(
                    "\n{} x {}: {} failed; first error: {e}\n",
                    w.n, w.name, w.failures
                ));
            }
        }
        for b in &self.baseline {
            if let Some(e) = &b.first_error {
                s.push_str(&format!(
                    "\nbaseline {} failed {} time(s); first error: {e}\n",
                    b.name, b.failures
                ));
            }
        }
        if !self.skipped.is_empty() || !self.not_measured.is_empty() {
            s.push('\n');
            for x in &self.skipped {
                s.push_str(&format!("- skipped {x}\n"));
            }
            for x in &self.not_measured {
                s.push_str(&format!("- not measured: {x}\n"));
            }
        }
        s
    }

    /// The CRI section (empty when it did not run).
    fn cri_markdown(&self) -> String {
        if self.cri.is_empty() {
            return String::new();
        }
        let mut s = format!(
            "\n**Pod start through the CRI API** (ms; {} interleaved rounds; RunPodSandbox, \
             CreateContainer, StartContainer of `echo ready` on the CNI bridge network, as a \
             kubelet starts a pod; `pod ready` = RunPodSandbox called → StartContainer returned)\n\n",
            self.cri_rounds
        );
        s.push_str(&summary_header(&["handler", "p50 / runc", "p50 / crun"]));
        for r in &self.cri {
            if let Some(ready) = r.phases.get(crate::cri::READY) {
                s.push_str(&summary_row(
                    &r.name,
                    ready,
                    &[
                        format!("`{}`", r.handler),
                        ratio_cell(&r.ready_ratios, "runc"),
                        ratio_cell(&r.ready_ratios, "crun"),
                    ],
                ));
            }
        }
        s.push_str("\n**CRI by phase** (ms, p50 / p99; `exit` = StartContainer returned → containerd's TaskExit event arrived, 0 when it came first; `total` = the sum of the six phases before `pod ready`)\n\n");
        let rows: Vec<(&str, &[Metric], &[Ratio])> = self
            .cri
            .iter()
            .filter(|r| r.skipped.is_none())
            .map(|r| {
                (
                    r.name.as_str(),
                    r.phases.as_slice(),
                    r.total_ratios.as_slice(),
                )
            })
            .collect();
        s.push_str(&phase_table(&crate::cri::PHASES, &rows));
        for r in &self.cri {
            if let Some(why) = &r.skipped {
                s.push_str(&format!(
                    "\n{} through CRI (handler `{}`) not measured: {why}\n",
                    r.name, r.handler
                ));
            }
            if let Some(e) = &r.first_error {
                s.push_str(&format!(
                    "\n{} through CRI failed {} time(s); first error: {e}\n",
                    r.name, r.failures
                ));
            }
        }
        s
    }

    /// For a baseline runtime, the matching subject's gRPC total p50 minus the runtime's own
    /// total p50 (ms) and that share of the gRPC total.
    pub fn containerd_share(&self, baseline_name: &str) -> Option<(f64, f64)> {
        let subject = match baseline_name {
            "airlock-runtime" => "airlock/agent-strict",
            n => n,
        };
        let r = self.results.iter().find(|r| r.name == subject)?;
        let grpc = r.phases.last()?.summary.as_ref()?.p50;
        let base = self
            .baseline
            .iter()
            .find(|b| b.name == baseline_name)?
            .phases
            .last()?
            .summary
            .as_ref()?
            .p50;
        (grpc > 0.0).then(|| (grpc - base, (grpc - base) / grpc))
    }

    /// Box plots (p25–p75 box, p50 line, min–max whiskers) per runtime, one panel per metric.
    pub fn svg(&self) -> Result<String, String> {
        use plotters::prelude::*;
        let mut panels: Vec<(String, Vec<(String, Summary)>)> = Vec::new();
        let mut add = |title: &str, rows: Vec<(String, Option<Summary>)>| {
            let rows: Vec<(String, Summary)> = rows
                .into_iter()
                .filter_map(|(n, s)| s.map(|s| (n, s)))
                .collect();
            if !rows.is_empty() {
                panels.push((title.to_string(), rows));
            }
        };
        add(
            "ctr run --rm (whole command)",
            self.results
                .iter()
                .map(|r| (r.name.clone(), r.ctr_run.summary.clone()))
                .collect(),
        );
        for (i, p) in crate::measure::PHASES.iter().enumerate() {
            add(
                &format!("gRPC: {p}"),
                self.results
                    .iter()
                    .map(|r| {
                        (
                            r.name.clone(),
                            r.phases.get(i).and_then(|m| m.summary.clone()),
                        )
                    })
                    .collect(),
            );
        }
        add(
            "exec true",
            self.results
                .iter()
                .map(|r| (r.name.clone(), r.exec.summary.clone()))
                .collect(),
        );
        for (i, title) in [
            (
                crate::cri::READY,
                "CRI: pod ready (RunPodSandbox → StartContainer)",
            ),
            (
                crate::cri::TOTAL,
                "CRI: total (pod ready, exit, stop, remove)",
            ),
        ] {
            add(
                title,
                self.cri
                    .iter()
                    .map(|r| {
                        (
                            r.name.clone(),
                            r.phases.get(i).and_then(|m| m.summary.clone()),
                        )
                    })
                    .collect(),
            );
        }
        add(
            "runtime alone (no containerd): total",
            self.baseline
                .iter()
                .map(|b| {
                    (
                        b.name.clone(),
                        b.phases.last().and_then(|m| m.summary.clone()),
                    )
                })
                .collect(),
        );
        let cols = 2usize;
        let rows = panels.len().div_ceil(cols).max(1);
        let (w, h) = (1400u32, 340 * rows as u32 + 40);
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let root = root
                .titled(
                    &format!(
                        "Airlock cold-start benchmark: containerd {}, {} rounds, {} cores (ms)",
                        self.containerd, self.rounds, self.machine.cores
                    ),
                    ("sans-serif", 22),
                )
                .map_err(|e| e.to_string())?;
            let areas = root.split_evenly((rows, cols));
            for ((title, data), area) in panels.iter().zip(areas.iter()) {
                let ymax = data.iter().map(|(_, s)| s.max).fold(0.0, f64::max) * 1.1 + 0.1;
                let n = data.len();
                // Short labels so six runtimes fit under one panel.
                let names: Vec<String> = data
                    .iter()
                    .map(|(n, _)| n.replace("airlock/agent-", "airlock-"))
                    .collect();
                let mut chart = ChartBuilder::on(area)
                    .caption(title, ("sans-serif", 16))
                    .margin(8)
                    .x_label_area_size(40)
                    .y_label_area_size(50)
                    .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
                    .map_err(|e| e.to_string())?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .light_line_style(WHITE)
                    .x_labels(n)
                    .x_label_formatter(&|x| {
                        let i = x.round();
                        if (x - i).abs() < 0.01 && i >= 0.0 {
                            names.get(i as usize).cloned().unwrap_or_default()
                        } else {
                            String::new()
                        }
                    })
                    .x_label_style(("sans-serif", 11))
                    .draw()
                    .map_err(|e| e.to_string())?;
                for (i, (name, s)) in data.iter().enumerate() {
                    let x = i as f64;
                    let color = if name.starts_with("airlock") {
                        RGBColor(0x1f, 0x77, 0xb4)
                    } else {
                        RGBColor(0x7f, 0x7f, 0x7f)
                    };
                    let d = 0.3;
                    chart
                        .draw_series([
                            PathElement::new(vec![(x, s.min), (x, s.p25)], color.stroke_width(1)),
                            PathElement::new(vec![(x, s.p75), (x, s.max)], color.stroke_width(1)),
                            PathElement::new(
                                vec![(x - d / 2.0, s.min), (x + d / 2.0, s.min)],
                                color.stroke_width(1),
                            ),
                            PathElement::new(
                                vec![(x - d / 2.0, s.max), (x + d / 2.0, s.max)],
                                color.stroke_width(1),
                            ),
                            PathElement::new(
                                vec![(x - d, s.p50), (x + d, s.p50)],
                                BLACK.stroke_width(2),
                            ),
                        ])
                        .map_err(|e| e.to_string())?;
                    chart
                        .draw_series([Rectangle::new(
                            [(x - d, s.p25), (x + d, s.p75)],
                            color.mix(0.35).filled(),
                        )])
                        .map_err(|e| e.to_string())?;
                }
            }
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> Report {
        let metric =
            |name: &str, base: f64| Metric::new(name, (0..10).map(|i| base + i as f64).collect());
        let subject = |name: &str, base: f64| SubjectResult {
            name: name.into(),
            airlock: name.starts_with("airlock"),
            ctr_run: metric("ctr run", base),
            phases: crate::measure::PHASES
                .iter()
                .map(|p| metric(p, base / 5.0))
                .collect(),
            exec: metric("exec", base / 2.0),
            ctr_ratios: vec![Ratio {
                to: "runc".into(),
                p50: 0.5,
                p25: 0.45,
                p75: 0.55,
            }],
            grpc_ratios: vec![],
            failures: 0,
            first_error: None,
        };
        Report {
            bench_version: "0.1.0".into(),
            unix_time: 0,
            quick: false,
            machine: Machine {
                cores: 2,
                cpu: "Test CPU".into(),
                mem_total_mib: 1024,
                kernel: "6.1.0".into(),
                cgroups: "hybrid".into(),
            },
            load_before: [1.0, 2.0, 3.0],
            load_after: [1.5, 2.0, 3.0],
            containerd: "1.6".into(),
            versions: vec![("runc".into(), "runc version 1.1.5".into())],
            rounds: 10,
            order: "rotated".into(),
            skipped: vec!["gvisor: `runsc` is not installed".into()],
            not_measured: vec!["warm start: no warm pools yet".into()],
            results: vec![
                subject("airlock/agent-strict", 50.0),
                subject("runc", 100.0),
            ],
            sweep: vec![SweepResult {
                name: "runc".into(),
                n: 4,
                all_running_ms: Some(200.0),
                per_sandbox: crate::stats::summarize(&[100.0, 150.0, 180.0, 200.0]),
                failures: 0,
                first_error: None,
            }],
            memory: vec![MemoryResult {
                name: "runc".into(),
                pods: 2,
                shims: 2,
                shim_rss_kib: Some(13 * 1024),
                shim_pss_kib: Some(12 * 1024),
                pod_pss_kib: Some(12 * 1024 + 512),
            }],
            baseline: vec![BaselineResult {
                name: "runc".into(),
                phases: crate::baseline::PHASES
                    .iter()
                    .map(|p| metric(p, 5.0))
                    .collect(),
                failures: 0,
                first_error: None,
            }],
            cri: vec![
                cri_result("airlock/agent-strict", 60.0, None),
                cri_result("runc", 120.0, None),
                cri_result(
                    "gvisor",
                    0.0,
                    Some("its warm-up pod failed: RunPodSandbox: Unknown: no network"),
                ),
            ],
            cri_rounds: 10,
            vm_boot: None,
            vm_pod: None,
            goals: vec![Goal {
                goal: "p50 / runc".into(),
                measured: Some(0.5),
                target: 0.5,
                pass: Some(true),
            }],
        }
    }

    /// A CRI result with 10 samples per phase from `base` (no samples when `skipped`).
    fn cri_result(name: &str, base: f64, skipped: Option<&str>) -> CriResult {
        let samples = |b: f64| -> Vec<f64> {
            if skipped.is_some() {
                Vec::new()
            } else {
                (0..10).map(|i| b + i as f64).collect()
            }
        };
        CriResult {
            name: name.into(),
            handler: match name {
                "gvisor" => "runsc".into(),
                n if n.starts_with("airlock") => "airlock".into(),
                n => n.into(),
            },
            phases: crate::cri::PHASES
                .iter()
                .enumerate()
                .map(|(i, p)| Metric::new(p, samples(base + i as f64)))
                .collect(),
            ready_ratios: skipped
                .is_none()
                .then(|| Ratio {
                    to: "runc".into(),
                    p50: 0.4,
                    p25: 0.35,
                    p75: 0.45,
                })
                .into_iter()
                .collect(),
            total_ratios: vec![],
            failures: 0,
            first_error: None,
            skipped: skipped.map(String::from),
        }
    }

    #[test]
    fn cri_section_has_both_tables_and_says_what_was_skipped() {
        let md = fixed().markdown();
        for want in [
            "**Pod start through the CRI API** (ms; 10 interleaved rounds;",
            // pod ready = phase 6: 60 + 6 .. 60 + 6 + 9.
            "| airlock/agent-strict | 10 | 0 | 66.0 | 70.0 | 75.0 | 75.0 | 75.0 | 4% | `airlock` | 0.40 (0.35–0.45) | - |",
            "| gvisor | 0 | 0 | - | - | - | - | - | - | `runsc` | - | - |",
            "| runtime | fail | RunPodSandbox | CreateContainer | StartContainer | exit | StopPodSandbox | RemovePodSandbox | pod ready | total | total / runc | total / crun |",
            "| runc | 0 | 124.0 / 129.0 | 125.0 / 130.0 |",
            "gvisor through CRI (handler `runsc`) not measured: its warm-up pod failed: RunPodSandbox: Unknown: no network",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        // A skipped handler has no row in the phase table.
        assert!(!md.contains("| gvisor | 0 | - |"), "{md}");
        // Sections in order: gRPC phases, CRI, exec.
        let at = |x: &str| md.find(x).unwrap();
        assert!(at("by phase, gRPC") < at("CRI API") && at("CRI API") < at("**Exec"));
    }

    #[test]
    fn reports_from_before_the_cri_section_still_load() {
        let mut v = serde_json::to_value(fixed()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("cri");
        o.remove("cri_rounds");
        let r: Report = serde_json::from_value(v).unwrap();
        assert!(r.cri.is_empty());
        assert!(!r.markdown().contains("CRI API"));
    }

    #[test]
    fn markdown_renders_every_section() {
        let md = fixed().markdown();
        for want in [
            "| airlock/agent-strict | 10 | 0 | 50.0 | 54.0 | 59.0 | 59.0 | 59.0 |",
            "0.50 (0.45–0.55)",
            "| runc | 200.0 (150.0 / 200.0) | 0 |",
            "| runc | 2 | 13.0 | 12.0 | 12.5 |",
            "| p50 / runc | 0.5 | 0.50 | met |",
            "- skipped gvisor: `runsc` is not installed",
            "- not measured: warm start: no warm pools yet",
            "Load average before 1.00 2.00 3.00, after 1.50 2.00 3.00",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        // runc's gRPC total p50 is 24 (20 + 4), its baseline total 9: 15 ms, 62%.
        assert!(md.contains("| 15.0 (62%) |"), "{md}");
    }

    #[test]
    fn svg_has_a_panel_per_metric_and_a_box_per_runtime() {
        let svg = fixed().svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("ctr run --rm (whole command)"));
        assert!(svg.contains("gRPC: first output"));
        assert!(svg.contains("runtime alone (no containerd): total"));
        assert!(svg.contains("airlock-strict"));
        assert!(svg.contains("CRI: pod ready (RunPodSandbox → StartContainer)"));
        // The background plus 12 panels (ctr, 7 phases, exec, 2 CRI, baseline) holding 23
        // boxes (the skipped CRI handler has none).
        assert_eq!(svg.matches("<rect").count(), 1 + 23, "{svg}");
    }

    #[test]
    fn json_round_trips() {
        let r = fixed();
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.markdown(), r.markdown());
    }
}
