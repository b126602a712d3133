//! Task API scenarios shared by the host suite (`tests/taskapi.rs`: cgroup v1 on this machine's
//! hybrid host) and the cgroup v2 test node (`tests/cgroupv2.rs`): pause/resume, kill of a paused
//! task, stats, update and block I/O limits. Each scenario observes the effect in the files of
//! the cgroup version the kernel has (`freezer.state` or `cgroup.freeze`, `cpu.cfs_quota_us` or
//! `cpu.max`, `blkio.throttle.*` or `io.max`, ...), so one scenario proves v1 on the host and v2
//! in the node.

use crate::client::{Client, Envelope, EventStream};
use crate::containerd::{Containerd, Version};
use crate::fifo::TaskFifos;
use crate::{leaks, proc_util, shared, Runtime, IMAGE_REF};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Deadline of one ctr or gRPC call, and of every wait (generous: the node may run under
/// software emulation).
pub const T: Duration = Duration::from_secs(60);

/// A shell loop that counts into /tmp/n (the sandbox's root is read-only; /tmp is not) and
/// ends on TERM (a bare PID 1 ignores it).
pub const COUNTER_LOOP: &str =
    "trap 'exit 0' TERM; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; usleep 20000; done";

/// A shell that idles until TERM.
pub const IDLE: &str = "trap 'exit 0' TERM; while :; do usleep 50000; done";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's namespace on the shared containerd of a version, with one runtime.
pub struct Case {
    pub ctd: Arc<Containerd>,
    pub ns: String,
    pub rt: Runtime,
    pub ids: Vec<String>,
}

impl Case {
    pub fn new(rt: Runtime, v: Version, name: &str) -> Self {
        let ctd = shared(v).unwrap_or_else(|e| panic!("start containerd {}: {e:#}", v.label()));
        let ns = ctd
            .new_namespace(&format!("{rt}-{name}"))
            .unwrap_or_else(|e| panic!("namespace: {e:#}"));
        Case {
            ctd,
            ns,
            rt,
            ids: Vec::new(),
        }
    }

    /// A container id unique in this process, remembered for the leak check.
    pub fn id(&mut self, label: &str) -> String {
        let id = format!(
            "{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.ids.push(id.clone());
        id
    }

    /// The pid of the shim that serves container `id` (its own pod: `ctr` containers).
    pub fn shim_pid(&self, id: &str) -> i32 {
        self.ctd
            .shims()
            .into_iter()
            .find(|s| s.namespace == self.ns && s.id == id)
            .unwrap_or_else(|| panic!("no shim serves {id}"))
            .pid
    }

    pub fn ctr(&self, args: &[&str]) -> proc_util::Output {
        self.ctd
            .ctr_timeout(Some(&self.ns), args, T)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn ctr_ok(&self, args: &[&str]) -> proc_util::Output {
        let out = self.ctr(args);
        assert!(
            out.success(),
            "ctr {args:?}: {out:?}\n{}",
            self.ctd.log_tail(30)
        );
        out
    }

    pub fn runtime_args(&self) -> Vec<&'static str> {
        match self.rt {
            Runtime::Runc => vec!["--runtime", "io.containerd.runc.v2"],
            Runtime::Crun => vec![
                "--runtime",
                "io.containerd.runc.v2",
                "--runc-binary",
                "crun",
            ],
            Runtime::Airlock => vec!["--runtime", "io.containerd.airlock.v2"],
        }
    }

    /// `ctr run -d` a shell script; returns the init's host pid once it runs.
    pub fn run_detached(&self, id: &str, script: &str) -> i32 {
        let mut args = vec!["run", "-d"];
        args.extend(self.runtime_args());
        args.extend([IMAGE_REF, id, "sh", "-c", script]);
        self.ctr_ok(&args);
        self.task_pid(id)
    }

    /// Creates and starts `sh -c script` through the gRPC API with `edit` applied to the spec
    /// `ctr` would use (for fields ctr has no flag for, such as `linux.resources.blockIO`);
    /// returns the init's host pid. [`Case::remove`] removes it like any other.
    pub fn run_spec(
        &self,
        id: &str,
        script: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> i32 {
        self.try_run_spec(id, script, edit)
            .unwrap_or_else(|e| panic!("create {id}: {e:#}\n{}", self.ctd.log_grep(id)))
    }

    /// [`Case::run_spec`] that returns the create's error (the container record and snapshot
    /// of a refused create are removed again).
    pub fn try_run_spec(
        &self,
        id: &str,
        script: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<i32> {
        let spec = self
            .ctd
            .spec(&self.ns, id, &["sh", "-c", script])
            .unwrap_or_else(|e| panic!("spec for {id}: {e:#}"));
        let mut spec: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        edit(&mut spec);
        let spec = serde_json::to_vec(&spec).unwrap();
        self.rt().block_on(async {
            let c = self.ctd.client().await.unwrap();
            let pid = c.create(&self.ns, id, self.rt, spec).await?;
            c.start(&self.ns, id).await.unwrap();
            Ok(pid as i32)
        })
    }

    /// The task's pid and status, as `ctr task ls` shows them (through the gRPC API: a ctr
    /// process per poll costs up to a second in the emulated test node).
    pub fn task_line(&self, id: &str) -> Option<(i32, String)> {
        task_state(&self.ctd, &self.ns, id)
    }

    pub fn task_pid(&self, id: &str) -> i32 {
        self.task_line(id).expect("task listed").0
    }

    pub fn status(&self, id: &str) -> String {
        self.task_line(id).map(|l| l.1).unwrap_or_default()
    }

    pub fn wait_status(&self, id: &str, want: &str) {
        let ok = proc_util::wait_until(T, Duration::from_millis(50), || self.status(id) == want);
        assert!(ok, "task {id} never became {want}: {}", self.status(id));
    }

    /// Kill (KILL), wait for STOPPED, delete the task and container.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id]);
        self.wait_status(id, "STOPPED");
        self.ctr_ok(&["tasks", "delete", id]);
        self.ctr_ok(&["containers", "rm", id]);
    }

    /// Airlock leaves nothing behind (processes, cgroups, mounts, state, sockets).
    pub fn assert_no_leaks(&self) {
        if self.rt != Runtime::Airlock {
            return;
        }
        let l = leaks::wait_no_leaks(&self.ctd, &self.ns, &self.ids, Duration::from_secs(10));
        assert!(
            l.is_empty(),
            "leaks in {}: {l:#?}\n{}",
            self.ns,
            leaks::describe_processes(&l)
        );
    }

    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> proc_util::Output {
        let mut a = vec!["tasks", "exec", "--exec-id", exec_id, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Every event of this case's namespace, from now on.
    pub fn subscribe(&self, tokio: &tokio::runtime::Runtime) -> EventStream {
        tokio
            .block_on(async {
                let cl = self.ctd.client().await?;
                cl.subscribe(vec![format!("namespace=={}", self.ns)]).await
            })
            .unwrap()
    }

    /// The spec of `args`, with a terminal or not (ctr run -t sets process.terminal).
    pub fn spec(&self, id: &str, args: &[&str], terminal: bool) -> Vec<u8> {
        let raw = self.ctd.spec(&self.ns, id, args).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        v["process"]["terminal"] = terminal.into();
        serde_json::to_vec(&v).unwrap()
    }

    /// An exec's OCI Process JSON for `args`.
    pub fn process(&self, args: &[&str], terminal: bool) -> Vec<u8> {
        let v: serde_json::Value =
            serde_json::from_slice(&self.spec("exec", args, terminal)).unwrap();
        serde_json::to_vec(&v["process"]).unwrap()
    }

    /// Container + task `id` running `args` with `fifos` as its stdio, started (gRPC).
    pub async fn start_with_io(
        &self,
        cl: &Client,
        id: &str,
        args: &[&str],
        fifos: &TaskFifos,
        terminal: bool,
    ) -> anyhow::Result<()> {
        cl.create_container(&self.ns, id, self.rt, self.spec(id, args, terminal))
            .await?;
        let mounts = cl.prepare_rootfs(&self.ns, id).await?;
        cl.create_task_io(&self.ns, id, mounts, &fifos.stdio(terminal))
            .await?;
        cl.start(&self.ns, id).await?;
        Ok(())
    }

    /// Exec `exec_id` running `args` with `fifos` as its stdio, started (gRPC).
    pub async fn exec_with_io(
        &self,
        cl: &Client,
        id: &str,
        exec_id: &str,
        args: &[&str],
        fifos: &TaskFifos,
        terminal: bool,
    ) -> anyhow::Result<()> {
        let process = self.process(args, terminal);
        cl.exec_io(&self.ns, id, exec_id, process, &fifos.stdio(terminal))
            .await?;
        cl.start_exec(&self.ns, id, exec_id).await?;
        Ok(())
    }

    /// Delete the stopped task and its container.
    pub fn delete_stopped(&self, id: &str) {
        self.wait_status(id, "STOPPED");
        self.ctr_ok(&["tasks", "delete", id]);
        self.ctr_ok(&["containers", "rm", id]);
    }

    pub fn rt(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Task.Update with an OCI LinuxResources JSON.
    pub fn update(&self, id: &str, json: &str) -> anyhow::Result<()> {
        crate::test_rt()
            .block_on(async { self.ctd.client().await?.update(&self.ns, id, json).await })
    }
}

/// Task `id`'s init pid and status (`RUNNING`, `PAUSED`, `STOPPED`, ...) through Tasks.Get;
/// `None` when it has no task.
pub fn task_state(ctd: &Containerd, ns: &str, id: &str) -> Option<(i32, String)> {
    crate::test_rt()
        .block_on(async { ctd.client().await?.task(ns, id).await })
        .unwrap_or_else(|e| panic!("task {id}: {e:#}"))
        .map(|(pid, status)| (pid as i32, status))
}

pub fn topics(evs: &[Envelope]) -> Vec<String> {
    evs.iter().map(|e| e.topic.clone()).collect()
}

/// The value [`COUNTER_LOOP`] last wrote (0 before the first).
pub fn read_counter(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/root/tmp/n"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether this kernel mounts cgroup v2 alone at /sys/fs/cgroup.
pub fn unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The v1 cgroup directory of `controller` for process `pid`, or its v2 directory.
pub fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if unified() {
        let p = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        return Path::new(CGROUP_ROOT).join(p.trim_start_matches('/'));
    }
    let p = text
        .lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, c, p) = (it.next()?, it.next()?, it.next()?);
            c.split(',').any(|c| c == controller).then(|| p.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {text}"));
    Path::new(CGROUP_ROOT)
        .join(controller)
        .join(p.trim_start_matches('/'))
}

/// A cgroup file's content, trimmed; panics naming the file.
pub fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Asserts the freezer state of `pid`'s cgroup: v1 `freezer.state`; v2 `cgroup.freeze` and the
/// kernel's own view, `frozen` in `cgroup.events`.
pub fn assert_frozen(pid: i32, frozen: bool) {
    let dir = cgroup_dir(pid, "freezer");
    if unified() {
        let want = if frozen { "1" } else { "0" };
        assert_eq!(read_file(&dir.join("cgroup.freeze")), want, "cgroup.freeze");
        let events = read_file(&dir.join("cgroup.events"));
        assert!(
            events.lines().any(|l| l == format!("frozen {want}")),
            "cgroup.events says not `frozen {want}`: {events:?}"
        );
    } else {
        let want = if frozen { "FROZEN" } else { "THAWED" };
        assert_eq!(read_file(&dir.join("freezer.state")), want, "freezer.state");
    }
}

/// Pause stops the counter and freezes the cgroup (TaskPaused), resume thaws it and the counter
/// advances again (TaskResumed). Paused again, the task cannot be deleted, and SIGKILL still
/// reaches it (it is thawed to die) and its exit is reported.
pub fn pause_resume(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "pause");
    let id = c.id("pause");
    let tokio = c.rt();
    let mut ev = c.subscribe(&tokio);
    let pid = c.run_detached(&id, COUNTER_LOOP);
    assert!(
        proc_util::wait_until(T, Duration::from_millis(20), || read_counter(pid) > 3),
        "counter never advanced"
    );
    c.ctr_ok(&["tasks", "pause", &id]);
    assert_eq!(c.status(&id), "PAUSED");
    assert_frozen(pid, true);
    let frozen = read_counter(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_counter(pid), frozen, "counter advanced while paused");
    c.ctr_ok(&["tasks", "resume", &id]);
    assert_eq!(c.status(&id), "RUNNING");
    assert_frozen(pid, false);
    assert!(
        proc_util::wait_until(T, Duration::from_millis(20), || {
            read_counter(pid) > frozen + 3
        }),
        "counter did not advance after resume"
    );
    let evs = tokio
        .block_on(ev.collect_until(T, |v| topics(v).iter().any(|t| t == "/tasks/resumed")))
        .unwrap();
    let t = topics(&evs);
    let p = t.iter().position(|t| t == "/tasks/paused");
    let r = t.iter().position(|t| t == "/tasks/resumed");
    assert!(p.is_some() && p < r, "events: {t:?}");
    // Kill while paused (one container for both: a start costs seconds in the emulated node).
    c.ctr_ok(&["tasks", "pause", &id]);
    assert_frozen(pid, true);
    let out = c.ctr(&["tasks", "delete", &id]);
    assert!(!out.success(), "deleting a paused task must fail: {out:?}");
    c.remove(&id);
    c.assert_no_leaks();
}

/// The part of containerd's cgroup v2 `Metrics` message (io.containerd.cgroups.v2, from
/// containerd/cgroups `cgroup2/stats/metrics.proto`) the tests read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct V2Metrics {
    #[prost(message, optional, tag = "1")]
    pub pids: Option<V2Pids>,
    #[prost(message, optional, tag = "2")]
    pub cpu: Option<V2Cpu>,
    #[prost(message, optional, tag = "4")]
    pub memory: Option<V2Memory>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct V2Pids {
    #[prost(uint64, tag = "1")]
    pub current: u64,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct V2Cpu {
    #[prost(uint64, tag = "1")]
    pub usage_usec: u64,
    #[prost(uint64, tag = "2")]
    pub user_usec: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct V2Memory {
    #[prost(uint64, tag = "1")]
    pub anon: u64,
    #[prost(uint64, tag = "32")]
    pub usage: u64,
    #[prost(uint64, tag = "33")]
    pub usage_limit: u64,
}

/// Stats through `ctr task metrics` and Tasks.Metrics: the type containerd expects for the
/// kernel's cgroup version, with real, non-zero figures after some busy work.
pub fn stats(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "stats");
    let id = c.id("stats");
    // Burn a little CPU and memory first, so the figures cannot be zero.
    let pid = c.run_detached(
        &id,
        "trap 'exit 0' TERM; x=$(head -c 2000000 /dev/zero | tr '\\0' a); i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done; echo ready > /tmp/r; while :; do usleep 50000; done",
    );
    assert!(proc_util::wait_until(T, Duration::from_millis(50), || {
        std::fs::metadata(format!("/proc/{pid}/root/tmp/r")).is_ok()
    }));
    let out = c.ctr_ok(&["tasks", "metrics", &id]);
    let figure = |names: &[&str]| -> u64 {
        out.stdout
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let k = f.next()?;
                names.contains(&k).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("none of {names:?} in metrics:\n{}", out.stdout))
    };
    let mem = figure(&["memory.usage_in_bytes", "memory.usage"]);
    let pids = figure(&["pids.current"]);
    let cpu = figure(&["cpuacct.usage", "cpu.usage_usec"]);
    assert!(mem > 0, "memory usage is 0:\n{}", out.stdout);
    assert!(pids >= 1, "pids.current is 0:\n{}", out.stdout);
    assert!(cpu > 0, "cpu usage is 0:\n{}", out.stdout);

    let any = c
        .rt()
        .block_on(async { c.ctd.client().await?.metrics(&c.ns, &id).await })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let want = if unified() {
        "io.containerd.cgroups.v2.Metrics"
    } else {
        "io.containerd.cgroups.v1.Metrics"
    };
    assert_eq!(any.type_url, want, "metrics type for this cgroup version");
    if unified() {
        let m = <V2Metrics as prost::Message>::decode(any.value.as_slice()).unwrap();
        eprintln!("v2 metrics: {m:?}");
        let (p, cpu, mem) = (
            m.pids.clone().unwrap_or_default(),
            m.cpu.clone().unwrap_or_default(),
            m.memory.clone().unwrap_or_default(),
        );
        assert!(p.current >= 1, "pids.current {} in {m:?}", p.current);
        let dir = cgroup_dir(pid, "pids");
        assert_eq!(
            p.limit.to_string(),
            read_file(&dir.join("pids.max")).replace("max", &u64::MAX.to_string()),
            "pids.limit is the container's pids.max"
        );
        assert!(cpu.usage_usec > 0, "cpu.usage_usec is 0: {m:?}");
        assert!(mem.usage > 0, "memory.usage is 0: {m:?}");
        assert!(mem.anon > 0, "memory.stat anon is 0: {m:?}");
    }
    c.remove(&id);
    c.assert_no_leaks();
}

/// cgroup v2 `cpu.weight` for cgroup v1 `cpu.shares` (runc >= 1.3.2 and libcgroups' mapping).
pub fn shares_to_weight(shares: u64) -> u64 {
    let l = (shares as f64).log2();
    let e = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(e).ceil() as u64).clamp(1, 10_000)
}

/// Task.Update changes memory, pids and CPU limits (quota/period and shares) in the
/// container's cgroup; fields left out keep their values; bad input fails without changing
/// anything, with an error that says what was wrong.
pub fn update(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "update");
    let id = c.id("update");
    let pid = c.run_detached(&id, IDLE);
    let mem = cgroup_dir(pid, "memory");
    let pids = cgroup_dir(pid, "pids");
    let cpu = cgroup_dir(pid, "cpu");
    let update = |json: &str| {
        c.update(&id, json)
            .unwrap_or_else(|e| panic!("update {json}: {e:#}"))
    };
    let limit = if unified() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let read_cpu = || {
        if unified() {
            read_file(&cpu.join("cpu.max"))
        } else {
            format!(
                "{} {}",
                read_file(&cpu.join("cpu.cfs_quota_us")),
                read_file(&cpu.join("cpu.cfs_period_us"))
            )
        }
    };

    update(r#"{"memory":{"limit":67108864}}"#);
    assert_eq!(read_file(&mem.join(limit)), "67108864");
    update(r#"{"pids":{"limit":42}}"#);
    assert_eq!(read_file(&pids.join("pids.max")), "42");
    // The memory limit set before is kept (fields left out are not changed).
    assert_eq!(read_file(&mem.join(limit)), "67108864");
    update(r#"{"cpu":{"quota":50000,"period":100000}}"#);
    assert_eq!(read_cpu(), "50000 100000", "cpu quota and period");
    update(r#"{"cpu":{"shares":2048}}"#);
    if unified() {
        let w = shares_to_weight(2048);
        assert_eq!(
            read_file(&cpu.join("cpu.weight")),
            w.to_string(),
            "cpu.weight"
        );
    } else {
        assert_eq!(read_file(&cpu.join("cpu.shares")), "2048", "cpu.shares");
    }
    assert_eq!(read_cpu(), "50000 100000", "shares alone keep the quota");

    // Bad input: not LinuxResources JSON, and a CPU period the kernel refuses (< 1 ms).
    let e = c
        .update(&id, r#"{"memory":{"limit":"lots"}}"#)
        .expect_err("a memory limit that is not a number must be refused");
    let e_json = format!("{e:#}");
    let e = c
        .update(&id, r#"{"cpu":{"quota":20000,"period":100}}"#)
        .expect_err("a CPU period of 100 us must be refused");
    let e_period = format!("{e:#}");
    eprintln!("update errors:\n  {e_json}\n  {e_period}");
    if rt == Runtime::Airlock {
        assert!(
            e_json.contains("InvalidArgument") && e_json.contains("LinuxResources"),
            "unclear error: {e_json}"
        );
        assert!(
            e_period.contains("InvalidArgument")
                && e_period.contains("cpu.period")
                && e_period.contains("1000"),
            "unclear error: {e_period}"
        );
    }
    if rt == Runtime::Airlock {
        // The policy stays a ceiling after create: agent-strict's pids.max is at most 512.
        let e = c
            .update(&id, r#"{"pids":{"limit":100000}}"#)
            .expect_err("pids above the policy's ceiling must be refused");
        let e = format!("{e:#}");
        assert!(
            e.contains("agent-strict") && e.contains("pids.limit") && e.contains("512"),
            "unclear error: {e}"
        );
        assert_eq!(read_file(&pids.join("pids.max")), "42");
    }
    if rt == Runtime::Airlock {
        // Refused as a whole, before any write (runc writes the quota, then fails on the period).
        assert_eq!(read_cpu(), "50000 100000", "a refused update changed cpu");
    }
    assert_eq!(read_file(&mem.join(limit)), "67108864");
    assert_eq!(c.status(&id), "RUNNING");
    c.remove(&id);
    c.assert_no_leaks();
}

/// A block device of this machine as `(major, minor)`: a disk if there is one, else a loop
/// device (`modprobe loop` makes eight). Throttle limits name a device; they do not need I/O.
pub fn block_device() -> (u64, u64) {
    let mut devs: Vec<(bool, String, (u64, u64))> = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
                    let (a, b) = dev.trim().split_once(':')?;
                    let virt = ["loop", "zram", "ram", "nbd"]
                        .iter()
                        .any(|p| name.starts_with(p));
                    Some((virt, name, (a.parse().ok()?, b.parse().ok()?)))
                })
                .collect()
        })
        .unwrap_or_default();
    devs.sort();
    devs.first().map(|d| d.2).unwrap_or_else(|| {
        panic!("no block device in /sys/block: `modprobe loop` (the node's guest.sh does)")
    })
}

/// The pod's `linux.resources.blockIO` (weight 500, read bps and write iops throttles on a
/// device) lands in the container's cgroup: `io.weight` (500 on blkio's 10-1000 scale is 4950 on
/// io.weight's 1-10000; `io.bfq.weight` takes it as it is when BFQ is in use) and `io.max` on
/// cgroup v2, `blkio.weight` or `blkio.bfq.weight` and `blkio.throttle.*` on v1.
///
/// A weight needs an I/O scheduler that shares by weight (BFQ, CFQ, or io.cost on v2), and
/// kernels of one machine kind differ: where the node's cgroup has no weight file
/// ([`airlock_state::blkio::BlockIoProbe`]), Airlock refuses the weight by name before
/// anything is created, runc fails too, and the throttles are tested alone.
pub fn io_limits(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "io");
    let (major, minor) = block_device();
    let dev = format!("{major}:{minor}");
    let throttle =
        |rate: u64| serde_json::json!([{ "major": major, "minor": minor, "rate": rate }]);
    let block_io = |weight: bool| {
        let mut io = serde_json::json!({
            "throttleReadBpsDevice": throttle(1048576),
            "throttleWriteIOPSDevice": throttle(100),
        });
        if weight {
            io["weight"] = serde_json::json!(500);
        }
        io
    };
    let probe = airlock_state::blkio::BlockIoProbe::detect();
    let weighs = probe.cannot_enforce("weight").is_none();
    eprintln!("block I/O probe: {probe:?}; weight enforceable: {weighs}");
    if !weighs {
        let id = c.id("io-weight");
        let e = c
            .try_run_spec(&id, IDLE, |spec| {
                spec["linux"]["resources"]["blockIO"] = block_io(true)
            })
            .expect_err("a weight the node cannot enforce must fail the create");
        let e = format!("{e:#}");
        eprintln!("{rt} refuses the weight: {e}");
        if rt == Runtime::Airlock {
            assert!(
                e.contains("the node's kernel cannot enforce blockIO.weight")
                    && e.contains("leave linux.resources.blockIO.weight unset"),
                "unclear error: {e}"
            );
        }
        assert_eq!(c.status(&id), "", "a refused create left a task");
    }
    let id = c.id("io");
    let pid = c.run_spec(&id, IDLE, |spec| {
        spec["linux"]["resources"]["blockIO"] = block_io(weighs);
    });
    let dir = cgroup_dir(pid, "blkio");
    if unified() {
        let mut w = String::from("no weight asked");
        if weighs {
            let bfq = dir.join("io.bfq.weight");
            let (file, want) = if bfq.exists() {
                (bfq, "default 500")
            } else {
                (dir.join("io.weight"), "default 4950")
            };
            w = read_file(&file);
            assert!(
                w.lines().next() == Some(want),
                "{} is {w:?}, want {want:?}",
                file.display()
            );
        }
        let max = read_file(&dir.join("io.max"));
        let line = max
            .lines()
            .find(|l| l.starts_with(&format!("{dev} ")))
            .unwrap_or_else(|| panic!("no {dev} line in io.max: {max:?}"));
        assert!(
            line.contains("rbps=1048576") && line.contains("wiops=100"),
            "io.max {line:?}"
        );
        eprintln!("weight: {w:?}; io.max {line:?}");
    } else {
        if weighs {
            let weight = dir.join(probe.weight_file.expect("probed"));
            let w = read_file(&weight);
            assert!(
                w.split_whitespace().last() == Some("500"),
                "{} is {w:?}",
                weight.display()
            );
        }
        for (file, want) in [
            ("blkio.throttle.read_bps_device", "1048576"),
            ("blkio.throttle.write_iops_device", "100"),
        ] {
            let s = read_file(&dir.join(file));
            assert!(
                s.lines().any(|l| l == format!("{dev} {want}")),
                "{file} is {s:?}, want `{dev} {want}`"
            );
        }
    }
    c.remove(&id);
    c.assert_no_leaks();
}
