//! Pod start through the CRI API, the way the kubelet starts a pod: RunPodSandbox,
//! CreateContainer, StartContainer, the container's exit, StopPodSandbox, RemovePodSandbox, each
//! timed, per runtime handler, in interleaved rounds; "pod ready" (RunPodSandbox called ->
//! StartContainer returned) is the headline.
//!
//! The bench's containerd runs with the CRI plugin on (its own network namespace, a CNI bridge);
//! the pods use the pod network. The container runs `echo ready`; its exit is taken from
//! containerd's TaskExit event (subscribed once, read by a background task, so the arrival time
//! is exact) and the `ready` line is checked in its CRI log afterwards (not timed).

use std::future::Future;
use std::time::{Duration, Instant};

use airlock_integration::client::EventStream;
use airlock_integration::containerd::CRI_NAMESPACE;
use airlock_integration::cri::{self, api::NamespaceMode, Cri};
use airlock_integration::{Containerd, TaskEvent};
use anyhow::{bail, Context, Result};

use crate::measure::ms;
use crate::report::{CriResult, Metric};
use crate::stats;
use crate::subjects::Subject;

/// Phases of one pod through CRI, in the report's order.
pub const PHASES: [&str; 8] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "exit",
    "StopPodSandbox",
    "RemovePodSandbox",
    "pod ready",
    "total",
];
/// Index of "pod ready" (RunPodSandbox called -> StartContainer returned) in [`PHASES`].
pub const READY: usize = 6;
/// Index of "total" (the sum of the six calls and the exit) in [`PHASES`].
pub const TOTAL: usize = 7;

/// Deadline of each CRI call (containerd's own deadline is longer: the call is abandoned here).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the `echo ready` container may take to exit after StartContainer returned (it
/// takes milliseconds; this is short so a handler whose exits never arrive fails fast).
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of StopPodSandbox and RemovePodSandbox after a failed step: they may hang on the
/// container that failed; the pod is then left to the containerd's teardown.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A CRI call with a deadline; the error names the call and what containerd said.
async fn call<T>(what: &str, f: impl Future<Output = Result<T, cri::Status>>) -> Result<T> {
    call_within(CALL_TIMEOUT, what, f).await
}

async fn call_within<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, cri::Status>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => bail!("{what}: {:?}: {}", s.code(), s.message()),
        Err(_) => bail!("{what}: no answer within {limit:?}"),
    }
}

/// Per-phase durations of one pod, in [`PHASES`] order, from the instants the calls returned.
/// `exited` is when the TaskExit event arrived, which may precede StartContainer's return
/// (the exit phase is then 0).
#[allow(clippy::too_many_arguments)]
pub fn phases(
    t0: Instant,
    run: Instant,
    create: Instant,
    start: Instant,
    exited: Instant,
    stop_from: Instant,
    stop: Instant,
    remove: Instant,
) -> [f64; 8] {
    let p = [
        ms(run - t0),
        ms(create - run),
        ms(start - create),
        ms(exited.saturating_duration_since(start)),
        ms(stop - stop_from),
        ms(remove - stop),
    ];
    [
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        ms(start - t0),
        p.iter().sum(),
    ]
}

/// A CRI client and a subscription to the TaskExit events of CRI's namespace.
pub struct CriBench {
    cri: Cri,
    exits: EventStream,
}

impl CriBench {
    pub async fn connect(ctd: &Containerd) -> Result<Self> {
        let cri = Cri::connect(ctd).await?;
        let c = ctd.client().await?;
        let exits = c
            .subscribe(vec![format!(
                "namespace==\"{CRI_NAMESPACE}\",topic==\"/tasks/exit\""
            )])
            .await
            .context("subscribe to containerd's TaskExit events")?;
        Ok(Self { cri, exits })
    }

    /// When the TaskExit event of container `id`'s init process arrived; fails on a non-zero
    /// exit status.
    async fn exited(&mut self, id: &str) -> Result<Instant> {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = match self.exits.next(left).await {
                Some(e) => e?,
                None => bail!(
                    "containerd reported no exit of the app container (`echo ready`) within \
                     {EXIT_TIMEOUT:?} of StartContainer"
                ),
            };
            if let TaskEvent::Exit {
                container_id,
                id: exec_id,
                exit_status,
                ..
            } = &e.event
            {
                if container_id == id && (exec_id.is_empty() || exec_id == id) {
                    anyhow::ensure!(*exit_status == 0, "container exited with {exit_status}");
                    return Ok(e.received);
                }
            }
        }
    }

    /// StopPodSandbox + RemovePodSandbox after a failed step, each with a short deadline (they
    /// may hang on the failed container); whether both succeeded.
    async fn remove_briefly(&mut self, pod: &str) -> bool {
        call_within(CLEANUP_TIMEOUT, "", self.cri.stop_pod(pod))
            .await
            .is_ok()
            && call_within(CLEANUP_TIMEOUT, "", self.cri.remove_pod(pod))
                .await
                .is_ok()
    }

    /// One pod of subject `s` (handler `handler`) running `echo ready`, named after `label`:
    /// the phase times in ms ([`PHASES`]). The pod is removed also when a step fails.
    pub async fn pod(
        &mut self,
        ctd: &Containerd,
        s: &Subject,
        handler: &str,
        label: &str,
    ) -> Result<[f64; 8]> {
        let annotations: Vec<(&str, &str)> = s
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let pc = self.cri.pod_config(label, &annotations, NamespaceMode::Pod);
        let t0 = Instant::now();
        let pod = call("RunPodSandbox", self.cri.run_pod(&pc, handler)).await?;
        let t_run = Instant::now();
        let app = async {
            let cfg = self.cri.container_config("app", &["echo", "ready"]);
            let id = call("CreateContainer", self.cri.create_container(&pod, &pc, cfg)).await?;
            let t_create = Instant::now();
            call("StartContainer", self.cri.start(&id)).await?;
            let t_start = Instant::now();
            let t_exit = self.exited(&id).await?;
            anyhow::Ok((t_create, t_start, t_exit))
        }
        .await;
        let (t_create, t_start, t_exit) = match app {
            Ok(t) => t,
            Err(e) => {
                if !self.remove_briefly(&pod).await {
                    // The stop hangs on the failed container: end the pod's shim (and what
                    // runs under it) by pid; containerd then cleans up and removes the pod.
                    kill_shim(ctd, &pod);
                    if !self.remove_briefly(&pod).await {
                        bail!(
                            "{e:#} (pod {pod} could not be removed, even after its shim was \
                             killed; the benchmark's containerd removes it at the end)"
                        );
                    }
                }
                return Err(e);
            }
        };
        let t_stop_from = Instant::now();
        call("StopPodSandbox", self.cri.stop_pod(&pod)).await?;
        let t_stop = Instant::now();
        call("RemovePodSandbox", self.cri.remove_pod(&pod)).await?;
        let t_remove = Instant::now();
        // The log is written by containerd's CRI I/O, which may finish after the exit event.
        let log = cri::log_file(&pc, "app");
        let end = Instant::now() + Duration::from_secs(2);
        while !cri::log_has_line(
            &std::fs::read_to_string(&log).unwrap_or_default(),
            "stdout",
            "ready",
        ) {
            if Instant::now() >= end {
                bail!(
                    "no `ready` line in the container's CRI log {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(phases(
            t0,
            t_run,
            t_create,
            t_start,
            t_exit,
            t_stop_from,
            t_stop,
            t_remove,
        ))
    }
}

/// SIGKILLs the shim serving CRI pod `pod` (its `-id` is the sandbox id) and every process
/// under it: processes this benchmark started through containerd, found by pid.
fn kill_shim(ctd: &Containerd, pod: &str) {
    use airlock_integration::proc_util::{alive, descendants, signal, wait_until};
    let mut pids = Vec::new();
    for shim in ctd
        .shims()
        .into_iter()
        .filter(|x| x.namespace == CRI_NAMESPACE && x.id == pod)
    {
        pids.extend(descendants(shim.pid));
        pids.push(shim.pid);
    }
    for &p in &pids {
        signal(p, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        pids.iter().all(|&p| !alive(p))
    });
}

/// Samples of one subject through CRI while the rounds run (NaN = failed round).
struct Acc {
    phases: Vec<Vec<f64>>,
    failures: usize,
    first_error: Option<String>,
    skipped: Option<String>,
}

/// The CRI section: one warm-up round (not counted; a handler whose warm-up pod fails twice is
/// not measured further and is reported with the error), then `rounds` interleaved rounds in a
/// balanced order ([`crate::order`]). `step` is called after every pod (progress).
pub fn run(
    rt: &tokio::runtime::Runtime,
    ctd: &Containerd,
    subjects: &[Subject],
    rounds: usize,
    mut step: impl FnMut(&str),
) -> Result<Vec<CriResult>> {
    let subjects: Vec<(&Subject, &str)> = subjects
        .iter()
        .filter_map(|s| s.cri_handler.as_deref().map(|h| (s, h)))
        .collect();
    let n = subjects.len();
    let mut bench = rt.block_on(CriBench::connect(ctd))?;
    let mut acc: Vec<Acc> = (0..n)
        .map(|_| Acc {
            phases: vec![Vec::new(); PHASES.len()],
            failures: 0,
            first_error: None,
            skipped: None,
        })
        .collect();
    for round in 0..=rounds {
        for i in crate::order::round_order(round, n) {
            let (s, handler) = subjects[i];
            if acc[i].skipped.is_some() {
                continue;
            }
            step(&format!("CRI, round {round}/{rounds}: {}", s.name));
            let label = format!("cri-{}-{round}", crate::slug(&s.name));
            let mut r = rt.block_on(bench.pod(ctd, s, handler, &label));
            if round == 0 && r.is_err() && hint(handler).is_empty() {
                // A warm-up pod can fail for a reason of its own (runc.v2 on containerd 2.1
                // lost its ttrpc connection in StopPodSandbox about once in 20 pods here): one
                // more before the handler is given up. Not for a handler known not to work here.
                step(&format!("CRI, warm-up again: {}", s.name));
                r = rt.block_on(bench.pod(ctd, s, handler, &format!("{label}-again")));
            }
            let a = &mut acc[i];
            match r {
                Err(e) if round == 0 => {
                    a.skipped = Some(format!("its warm-up pod failed: {e:#}{}", hint(handler)));
                }
                Err(e) => {
                    a.phases.iter_mut().for_each(|v| v.push(f64::NAN));
                    a.failures += 1;
                    a.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Ok(_) if round == 0 => {}
                Ok(p) => a.phases.iter_mut().zip(p).for_each(|(v, x)| v.push(x)),
            }
        }
    }
    let idx = |name: &str| subjects.iter().position(|(s, _)| s.name == name);
    let mut out = Vec::new();
    for (i, (s, handler)) in subjects.iter().enumerate() {
        let mut ready_ratios = Vec::new();
        let mut total_ratios = Vec::new();
        for peer in ["runc", "crun"] {
            if let Some(j) = idx(peer) {
                let (a, b) = (&acc[i].phases, &acc[j].phases);
                ready_ratios.extend(stats::ratio(peer, &a[READY], &b[READY]));
                total_ratios.extend(stats::ratio(peer, &a[TOTAL], &b[TOTAL]));
            }
        }
        out.push(CriResult {
            name: s.name.clone(),
            handler: handler.to_string(),
            phases: PHASES
                .iter()
                .zip(&acc[i].phases)
                .map(|(p, v)| Metric::new(p, v.clone()))
                .collect(),
            ready_ratios,
            total_ratios,
            failures: acc[i].failures,
            first_error: acc[i].first_error.take(),
            skipped: acc[i].skipped.take(),
        });
    }
    Ok(out)
}

/// What is known about a handler's failure on this kind of machine (ARCHITECTURE.md).
fn hint(handler: &str) -> &'static str {
    match handler {
        "runsc" => {
            ". gVisor runs here under the runc.v2 shim with a runsc wrapper (no runsc shim is \
             packaged): a pod's app container then runs inside the pause container's gVisor \
             sandbox, and the shim's pid for it is the sandbox's (measured), so its exit never \
             reaches containerd; gVisor through CRI needs its own shim (containerd-shim-runsc-v1)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_and_an_early_exit_counts_zero() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Run 100, create 20, start 10, exit 5, (2 ms not timed), stop 30, remove 15.
        let p = phases(
            t0,
            at(100),
            at(120),
            at(130),
            at(135),
            at(137),
            at(167),
            at(182),
        );
        assert_eq!(p, [100.0, 20.0, 10.0, 5.0, 30.0, 15.0, 130.0, 180.0]);
        // The exit event arrived before StartContainer returned.
        let p = phases(
            t0,
            at(100),
            at(120),
            at(130),
            at(125),
            at(130),
            at(160),
            at(175),
        );
        assert_eq!(p[3], 0.0);
        assert_eq!(p[TOTAL], 175.0);
        assert_eq!(PHASES[READY], "pod ready");
        assert_eq!(PHASES[TOTAL], "total");
    }
}
