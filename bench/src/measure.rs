//! Measurements through containerd: the whole `ctr run`, the per-phase gRPC path, exec into a
//! running sandbox, the concurrency sweep and memory per pod.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use airlock_integration::client::Client;
use airlock_integration::runtime::runc_options_any;
use airlock_integration::{Containerd, IMAGE_REF};
use anyhow::{bail, Context, Result};

use crate::subjects::Subject;

/// Phases of one cold start through the gRPC API, in the report's order.
pub const PHASES: [&str; 7] = [
    "create",
    "start",
    "start→first output",
    "exit",
    "delete",
    "first output",
    "total",
];

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The whole `ctr run --rm <subject> IMAGE ID true`, in ms.
pub fn ctr_run(ctd: &Containerd, ns: &str, s: &Subject, id: &str) -> Result<f64> {
    let mut args = vec!["run".to_string(), "--rm".to_string()];
    args.extend(s.ctr_args());
    args.extend([IMAGE_REF.to_string(), id.to_string(), "true".to_string()]);
    let mut cmd = ctd.ctr_command(Some(ns));
    cmd.args(&args);
    let (status, elapsed, stderr) = timed(cmd, Duration::from_secs(60))?;
    if !status.success() {
        bail!("ctr run: {status}: {}", stderr.trim());
    }
    Ok(ms(elapsed))
}

/// Runs `cmd` (stdin and stdout /dev/null) and times it with a blocking wait: the harness's
/// `proc_util::run` polls every 10 ms, too coarse here. Killed after `timeout`.
pub fn timed(mut cmd: Command, timeout: Duration) -> Result<(ExitStatus, Duration, String)> {
    let err = tempfile::tempfile()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?);
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            airlock_integration::proc_util::signal(pid, libc::SIGKILL);
        }
    });
    let status = child.wait()?;
    let elapsed = t0.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let mut stderr = String::new();
    let mut err = err;
    use std::io::Seek;
    err.seek(std::io::SeekFrom::Start(0))?;
    err.read_to_string(&mut stderr)?;
    Ok((status, elapsed, stderr))
}

async fn create_container(
    c: &Client,
    ns: &str,
    id: &str,
    s: &Subject,
    spec: Vec<u8>,
) -> Result<()> {
    c.create_container_as(
        ns,
        id,
        &s.runtime_type,
        s.runc_binary.as_deref().map(runc_options_any),
        spec,
    )
    .await
}

/// Reads a FIFO on a thread: reports when the first byte arrived, drains it until EOF.
struct FifoReader {
    path: PathBuf,
    first: tokio::sync::oneshot::Receiver<Instant>,
}

impl FifoReader {
    fn new(path: PathBuf) -> Result<Self> {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {}", path.display()))?;
        let (tx, first) = tokio::sync::oneshot::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            // Blocks until the shim opens the write side.
            let Ok(mut f) = std::fs::File::open(&p) else {
                return;
            };
            let mut tx = Some(tx);
            let mut buf = [0u8; 4096];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Instant::now());
                }
            }
        });
        Ok(Self { path, first })
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        // Unblock a reader still waiting in open() (create failed): open and close a writer.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One cold start through gRPC: create (container, snapshot, task with a stdout FIFO), start,
/// first byte of output, exit (wait), delete (task, container, snapshot). Times in ms, in
/// [`PHASES`] order.
pub async fn grpc_cold(
    c: &Client,
    ns: &str,
    s: &Subject,
    id: &str,
    spec: Vec<u8>,
    fifo_dir: &Path,
) -> Result<[f64; 7]> {
    let mut fifo = FifoReader::new(fifo_dir.join(format!("{id}.out")))?;
    let fifo_path = fifo.path.to_string_lossy().into_owned();
    let t0 = Instant::now();
    create_container(c, ns, id, s, spec).await?;
    let res = async {
        let mounts = c.prepare_rootfs(ns, id).await?;
        c.create_task_stdio(ns, id, mounts, &fifo_path, &fifo_path)
            .await
    }
    .await;
    if let Err(e) = res {
        let _ = c.delete_container(ns, id).await;
        return Err(e);
    }
    let t_created = Instant::now();
    let started = async {
        c.start(ns, id).await?;
        let t_started = Instant::now();
        let first = tokio::time::timeout(Duration::from_secs(30), &mut fifo.first)
            .await
            .context("no output within 30 s")?
            .context("stdout closed without output")?;
        let (status, _) = c.wait(ns, id, Duration::from_secs(30)).await?;
        let t_exited = Instant::now();
        anyhow::ensure!(status == 0, "exit status {status}");
        Ok((t_started, first, t_exited))
    }
    .await;
    if started.is_err() {
        let _ = c.kill(ns, id, libc::SIGKILL as u32, true).await;
        let _ = c.wait(ns, id, Duration::from_secs(10)).await;
    }
    let del = c.delete_task(ns, id).await;
    let delc = c.delete_container(ns, id).await;
    let t_deleted = Instant::now();
    let (t_started, first, t_exited) = started?;
    del?;
    delc?;
    Ok([
        ms(t_created - t0),
        ms(t_started - t_created),
        ms(first.saturating_duration_since(t_created)),
        ms(t_exited - t_started),
        ms(t_deleted - t_exited),
        ms(first - t0),
        ms(t_deleted - t0),
    ])
}

/// Creates and starts a sandbox running `spec`; returns after Task.Start.
pub async fn start_sandbox(
    c: &Client,
    ns: &str,
    s: &Subject,
    id: &str,
    spec: Vec<u8>,
) -> Result<()> {
    create_container(c, ns, id, s, spec).await?;
    let res = async {
        let mounts = c.prepare_rootfs(ns, id).await?;
        c.create_task(ns, id, mounts).await?;
        c.start(ns, id).await
    }
    .await;
    if res.is_err() {
        remove_sandbox(c, ns, id).await;
    }
    res.map(|_| ())
}

/// Kills (SIGKILL), waits for and deletes a sandbox; errors are ignored (best effort).
pub async fn remove_sandbox(c: &Client, ns: &str, id: &str) {
    let _ = c.kill(ns, id, libc::SIGKILL as u32, true).await;
    let _ = c.wait(ns, id, Duration::from_secs(20)).await;
    let _ = c.delete_task(ns, id).await;
    let _ = c.delete_container(ns, id).await;
}

/// One exec of `true` into running sandbox `id`: exec, start, wait, delete; ms.
pub async fn exec_true(
    c: &Client,
    ns: &str,
    id: &str,
    exec_id: &str,
    process: Vec<u8>,
) -> Result<f64> {
    let t0 = Instant::now();
    c.exec(ns, id, exec_id, process).await?;
    let res = async {
        c.start_exec(ns, id, exec_id).await?;
        c.wait_exec(ns, id, exec_id, Duration::from_secs(30)).await
    }
    .await;
    let del = c.delete_exec(ns, id, exec_id).await;
    let t = ms(t0.elapsed());
    let status = res?;
    del?;
    anyhow::ensure!(status == 0, "exec exit status {status}");
    Ok(t)
}

/// The OCI process of `spec` (JSON), for exec.
pub fn process_of(spec: &[u8]) -> Result<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(spec)?;
    Ok(serde_json::to_vec(&v["process"])?)
}

/// Result of starting `n` sandboxes at once.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Per sandbox that started: ms from the common start to its Task.Start returning.
    pub running_ms: Vec<f64>,
    pub failures: usize,
    pub first_error: Option<String>,
}

/// Starts `specs.len()` sleeping sandboxes at once (one tokio task each), then removes them.
pub async fn burst(c: &Client, ns: &str, s: &Subject, specs: Vec<(String, Vec<u8>)>) -> Burst {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (id, spec) in specs.iter().cloned() {
        let (c, ns, s) = (c.clone(), ns.to_string(), s.clone());
        set.spawn(async move {
            let r = start_sandbox(&c, &ns, &s, &id, spec).await;
            r.map(|_| ms(t0.elapsed()))
        });
    }
    let mut b = Burst {
        running_ms: Vec::new(),
        failures: 0,
        first_error: None,
    };
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|x| x) {
            Ok(t) => b.running_ms.push(t),
            Err(e) => {
                b.failures += 1;
                b.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (id, _) in specs {
        let (c, ns) = (c.clone(), ns.to_string());
        set.spawn(async move { remove_sandbox(&c, &ns, &id).await });
    }
    while set.join_next().await.is_some() {}
    b
}

/// RSS and PSS (KiB) of a process, from /proc.
pub fn memory_kib(pid: i32) -> (Option<u64>, Option<u64>) {
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

/// Memory of the pods `ids` (each its own shim): mean shim RSS, shim PSS per pod, and PSS of
/// everything per pod (shim plus every process under it: runtime helpers such as gVisor's
/// sentry and gofer, and the sleeping workload).
#[derive(Debug, Clone, Default)]
pub struct PodMemory {
    pub pods: usize,
    /// Shim processes found for the pods (fewer than `pods` if some exited).
    pub shims_found: usize,
    pub shim_rss_kib: Option<u64>,
    pub shim_pss_kib: Option<u64>,
    pub pod_pss_kib: Option<u64>,
}

pub fn pod_memory(ctd: &Containerd, ns: &str, ids: &[String]) -> PodMemory {
    let shims: Vec<_> = ctd
        .shims()
        .into_iter()
        .filter(|s| s.namespace == ns && ids.contains(&s.id))
        .collect();
    let mut m = PodMemory {
        pods: ids.len(),
        shims_found: shims.len(),
        ..Default::default()
    };
    if shims.is_empty() {
        return m;
    }
    let (mut rss, mut pss, mut all) = (0u64, 0u64, 0u64);
    for s in &shims {
        let (r, p) = memory_kib(s.pid);
        rss += r.unwrap_or(0);
        pss += p.unwrap_or(0);
        all += p.unwrap_or(0);
        for d in airlock_integration::proc_util::descendants(s.pid) {
            all += memory_kib(d).1.unwrap_or(0);
        }
    }
    let n = ids.len() as u64;
    m.shim_rss_kib = Some(rss / shims.len() as u64);
    m.shim_pss_kib = Some(pss / n);
    m.pod_pss_kib = Some(all / n);
    m
}
