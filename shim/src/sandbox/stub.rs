//! A stub [`Sandbox`] for the task core's unit tests: processes that exit when a test (or a
//! fatal signal) says so, OOM kills a test counts, output that ends when a test ends it, and
//! a log of every sandbox operation. No root, no runtime, no containerd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::{oneshot, watch, Notify};

use super::{CleanupTimes, Created, ExitInfo, Process, Sandbox, SandboxContainer, Started};
use crate::error::{Error, Result};
use crate::stdio::{Copier, StdioPaths};

/// What the sandbox was asked to do, in order (`"start c1"`, `"kill-all c1 9"`, ...).
pub type Calls = Arc<Mutex<Vec<String>>>;

fn record(calls: &Calls, call: String) {
    calls.lock().unwrap().push(call);
}

/// A process that runs until [`StubProcess::exit`] or a fatal signal.
pub struct StubProcess {
    pid: u32,
    exit: watch::Sender<Option<ExitInfo>>,
    /// Signals received, in order.
    pub signals: Mutex<Vec<i32>>,
}

impl StubProcess {
    fn new(pid: u32) -> Arc<Self> {
        Arc::new(StubProcess {
            pid,
            exit: watch::channel(None).0,
            signals: Mutex::new(Vec::new()),
        })
    }

    /// Ends the process with `status` (no-op once it has ended).
    pub fn exit(&self, status: u32) {
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(ExitInfo {
                status,
                at: SystemTime::now(),
            });
            true
        });
    }

    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

#[async_trait]
impl Process for StubProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        if self.exited() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        self.signals.lock().unwrap().push(signal);
        if [libc::SIGKILL, libc::SIGTERM, libc::SIGINT].contains(&signal) {
            self.exit(128 + signal as u32);
        }
        Ok(())
    }

    async fn wait(&self) -> std::io::Result<ExitInfo> {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return Ok(e);
            }
            rx.changed()
                .await
                .map_err(|_| std::io::Error::other("stub process dropped"))?;
        }
    }
}

/// A copier whose output copy ends when the returned sender is used or dropped.
fn held_output() -> (Copier, oneshot::Sender<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let copier = Copier::with_output(tokio::spawn(async move {
        let _ = rx.await;
    }));
    (copier, tx)
}

/// One container of the [`StubSandbox`].
pub struct StubContainer {
    id: String,
    calls: Calls,
    pids: Arc<AtomicU32>,
    pub init: Arc<StubProcess>,
    pub execs: Mutex<HashMap<String, Arc<StubProcess>>>,
    /// The end of the init's output copy; the exit path waits for it (up to its limit).
    pub init_output: Mutex<Option<oneshot::Sender<()>>>,
    oom_kills: AtomicU64,
    oom: Notify,
}

impl StubContainer {
    /// Counts an OOM kill and, with `notify`, tells the core's watcher.
    pub fn oom_kill(&self, notify: bool) {
        self.oom_kills.fetch_add(1, Ordering::SeqCst);
        if notify {
            self.oom.notify_one();
        }
    }

    /// Ends the init's output copy.
    pub fn close_output(&self) {
        self.init_output.lock().unwrap().take();
    }

    pub fn exec(&self, exec_id: &str) -> Arc<StubProcess> {
        self.execs.lock().unwrap()[exec_id].clone()
    }
}

#[async_trait]
impl SandboxContainer for StubContainer {
    async fn start(&self) -> Result<()> {
        record(&self.calls, format!("start {}", self.id));
        Ok(())
    }

    async fn exec(
        &self,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        _stdio: &StdioPaths,
    ) -> Result<Started> {
        record(
            &self.calls,
            format!("exec {} {exec_id} {:?}", self.id, process.args()),
        );
        let p = StubProcess::new(self.pids.fetch_add(1, Ordering::SeqCst));
        self.execs
            .lock()
            .unwrap()
            .insert(exec_id.to_owned(), p.clone());
        Ok(Started {
            process: p,
            copier: Copier::default(),
            console: None,
        })
    }

    async fn kill_all(&self, signal: u32) -> Result<()> {
        record(&self.calls, format!("kill-all {} {signal}", self.id));
        let execs: Vec<_> = self.execs.lock().unwrap().values().cloned().collect();
        for p in execs.iter().chain([&self.init]) {
            let _ = p.signal(signal as i32);
        }
        Ok(())
    }

    async fn pause(&self) -> Result<()> {
        record(&self.calls, format!("pause {}", self.id));
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        record(&self.calls, format!("resume {}", self.id));
        Ok(())
    }

    async fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let pids = resources.pids().as_ref().map(|p| p.limit());
        record(&self.calls, format!("update {} pids {pids:?}", self.id));
        Ok(())
    }

    async fn stats(&self) -> Result<Any> {
        Ok(Any::default())
    }

    async fn pids(&self) -> Result<Vec<u32>> {
        let execs = self.execs.lock().unwrap();
        Ok([&self.init]
            .into_iter()
            .chain(execs.values())
            .filter(|p| !p.exited())
            .map(|p| p.pid)
            .collect())
    }

    fn oom_kills(&self) -> Option<u64> {
        Some(self.oom_kills.load(Ordering::SeqCst))
    }

    async fn oom_notice(&self) -> std::io::Result<()> {
        self.oom.notified().await;
        Ok(())
    }

    async fn clean_up_stopped(&self) -> Result<CleanupTimes> {
        record(&self.calls, format!("clean-up {}", self.id));
        Ok(CleanupTimes::default())
    }

    async fn release(&self) {
        record(&self.calls, format!("release {}", self.id));
    }
}

/// A sandbox whose containers are [`StubContainer`]s.
#[derive(Default)]
pub struct StubSandbox {
    pub calls: Calls,
    pids: Arc<AtomicU32>,
    containers: Mutex<HashMap<String, Arc<StubContainer>>>,
    /// The error the next create fails with.
    pub refuse_next: Mutex<Option<Error>>,
}

impl StubSandbox {
    pub fn container(&self, id: &str) -> Arc<StubContainer> {
        self.containers.lock().unwrap()[id].clone()
    }
}

#[async_trait]
impl Sandbox for StubSandbox {
    async fn create(&self, req: &CreateTaskRequest) -> Result<Created> {
        record(&self.calls, format!("create {}", req.id));
        if let Some(e) = self.refuse_next.lock().unwrap().take() {
            return Err(e);
        }
        self.pids.fetch_max(100, Ordering::SeqCst);
        let init = StubProcess::new(self.pids.fetch_add(1, Ordering::SeqCst));
        let (copier, output) = held_output();
        let c = Arc::new(StubContainer {
            id: req.id.clone(),
            calls: self.calls.clone(),
            pids: self.pids.clone(),
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            init_output: Mutex::new(Some(output)),
            oom_kills: AtomicU64::new(0),
            oom: Notify::new(),
        });
        self.containers
            .lock()
            .unwrap()
            .insert(req.id.clone(), c.clone());
        Ok(Created {
            container: c,
            init,
            copier,
            console: None,
            update_rules: airlock_policies::builtin("agent-strict")
                .expect("a built-in policy")
                .update_rules(),
        })
    }
}
