//! The task core: containerd's Task API over a [`Sandbox`] (`sandbox/mod.rs`).
//!
//! This file holds the service, its containers and execs, and the Task API's entry points;
//! each request's work is in one module beside it:
//!
//! | module | requests |
//! | --- | --- |
//! | `create.rs` | Create: the sandbox's create, the container registered, its watchers |
//! | `exec.rs` | Exec, and Start and Delete of an exec |
//! | `exit.rs` | exit and OOM watchers, cleanup after the exit, Delete |
//! | `control.rs` | Pause, Resume, Update, CloseIO, ResizePty, Kill |
//!
//! Which request a process's phase allows is decided in `lifecycle.rs`. The process sandbox
//! (`process/`) runs the containers on this host; `tests.rs` drives this core against a stub
//! sandbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::Spec;
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::console::Console;
use crate::error::{Error, Result};
use crate::events::{publish, EventSink, TaskEvent};
use crate::lifecycle::{Check, Phase, Subject, Transition};
use crate::sandbox::{CleanupTimes, ExitInfo, Process, Sandbox, SandboxContainer};
use crate::stdio::{Copier, StdioPaths};
use crate::trim::IdleTrim;

mod control;
mod create;
mod exec;
mod exit;
#[cfg(test)]
mod tests;

pub(crate) use exec::check_terminal;
use exit::{wait_watch, OomCounter};

/// How long an exit waits for the container's output to be copied out.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// An extra process started in a container (`ctr task exec`).
struct Exec {
    id: String,
    /// The OCI process, confined to the init's privileges.
    process: oci_spec::runtime::Process,
    stdio: StdioPaths,
    started: std::sync::OnceLock<Arc<dyn Process>>,
    phase: Mutex<Phase>,
    exited_tx: watch::Sender<Option<ExitInfo>>,
    exited: watch::Receiver<Option<ExitInfo>>,
    copier: Arc<Mutex<Copier>>,
    /// The pty master, once started with a terminal.
    console: std::sync::OnceLock<Arc<Console>>,
}

impl Exec {
    fn pid(&self) -> u32 {
        self.started.get().map(|p| p.pid()).unwrap_or(0)
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    stdio: StdioPaths,
    init: Arc<dyn Process>,
    /// The container in its sandbox.
    sandbox: Arc<dyn SandboxContainer>,
    phase: Mutex<Phase>,
    exited: watch::Receiver<Option<ExitInfo>>,
    copier: Arc<Mutex<Copier>>,
    /// The pty master of an init created with a terminal.
    console: Option<Arc<Console>>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// OOM kills reported; held while a TaskOOM is being published, so the exit path
    /// publishes TaskExit only after it.
    oom: Mutex<OomCounter>,
    /// The policy's ceilings, checked on every Task.Update.
    update_rules: airlock_policies::UpdateRules,
    /// The removal of the cgroup, state and rootfs mount that the exit watcher starts as soon
    /// as the init has exited; Delete waits for it (see [`TaskService::clean_up_stopped`]).
    cleanup: Mutex<Cleanup>,
}

/// The cleanup after the init's exit.
enum Cleanup {
    NotStarted,
    Running(tokio::task::JoinHandle<Result<CleanupTimes>>),
    /// Its outcome (an error as text: Delete retries it, so that the caller gets it).
    Done(std::result::Result<CleanupTimes, String>),
}

impl Container {
    /// Waits for the cleanup the exit watcher started, if any, and returns its outcome.
    async fn cleanup_outcome(&self) -> Option<std::result::Result<CleanupTimes, String>> {
        let mut state = self.cleanup.lock().await;
        if let Cleanup::Running(h) = &mut *state {
            let outcome = match h.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("cleanup task: {e}")),
            };
            *state = Cleanup::Done(outcome);
        }
        match &*state {
            Cleanup::Done(outcome) => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Waits until no Start is writing the runtime's state file (Start holds the phase lock
    /// while it records the start there; the write is not atomic for a reader).
    async fn start_settled(&self) {
        drop(self.phase.lock().await);
    }

    fn pid(&self) -> u32 {
        self.init.pid()
    }

    /// Whether the container's phase lets `check` go on (see `lifecycle.rs`).
    async fn allows(&self, check: Check) -> Result<()> {
        self.phase
            .lock()
            .await
            .allows(check, Subject::Container(&self.id), self.pid())
    }

    async fn exec(&self, exec_id: &str) -> Result<Arc<Exec>> {
        self.execs
            .lock()
            .await
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }
}

/// One shim serves all containers of one pod.
pub struct TaskService {
    namespace: String,
    events: Arc<dyn EventSink>,
    exit: Arc<ExitSignal>,
    sandbox: Arc<dyn Sandbox>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Returns what a burst of requests freed to the kernel once the shim is idle.
    trim: IdleTrim,
}

fn timestamp(t: SystemTime) -> Timestamp {
    containerd_shim::util::convert_to_timestamp(Some(t.into()))
}

impl TaskService {
    pub fn new(
        namespace: String,
        events: Arc<dyn EventSink>,
        exit: Arc<ExitSignal>,
        sandbox: Arc<dyn Sandbox>,
    ) -> Self {
        sandbox.warm_up();
        TaskService {
            namespace,
            events,
            exit,
            sandbox,
            containers: Mutex::new(HashMap::new()),
            trim: IdleTrim::default(),
        }
    }

    async fn publish<E: TaskEvent>(&self, topic: &str, event: E) {
        publish(&*self.events, &self.namespace, topic, event).await
    }

    async fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }
}

fn validate_id(id: &str) -> Result<()> {
    airlock_contract::validate_id(id).map_err(|e| Error::InvalidArgument(e.to_string()))
}

fn state_response(
    c: &Container,
    exec_id: &str,
    phase: Phase,
    pid: u32,
    stdio: &StdioPaths,
) -> StateResponse {
    let mut resp = StateResponse {
        id: c.id.clone(),
        exec_id: exec_id.to_string(),
        bundle: c.bundle.display().to_string(),
        pid,
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        terminal: stdio.terminal,
        ..Default::default()
    };
    if let Some(e) = phase.exit() {
        resp.exit_status = e.status;
        resp.exited_at = MessageField::some(timestamp(e.at));
    }
    resp.status = EnumOrUnknown::new(phase.status());
    resp
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let span = info_span!("create", id = %req.id);
        let _idle = self.trim.busy();
        self.do_create(req).instrument(span).await.map_err(|e| {
            warn!("create failed: {e}");
            e.into()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let span = info_span!("start", id = %req.id);
        let _idle = self.trim.busy();
        async {
            let c = self.get(&req.id).await?;
            if !req.exec_id.is_empty() {
                let pid = self.start_exec(&c, &req.exec_id).await?;
                return Ok(StartResponse {
                    pid,
                    ..Default::default()
                });
            }
            let t0 = Instant::now();
            {
                let mut phase = c.phase.lock().await;
                let started = phase.next(Transition::Start, Subject::Container(&c.id))?;
                c.sandbox.start().await?;
                *phase = started;
            }
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: c.id.clone(),
                    pid: c.pid(),
                    ..Default::default()
                },
            )
            .await;
            info!(
                pid = c.pid(),
                start_us = t0.elapsed().as_micros() as u64,
                "container started"
            );
            Ok::<_, Error>(StartResponse {
                pid: c.pid(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
        .map_err(Into::into)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let c = self.get(&req.id).await?;
        if req.exec_id.is_empty() {
            let phase = *c.phase.lock().await;
            return Ok(state_response(&c, "", phase, c.pid(), &c.stdio));
        }
        let e = c.exec(&req.exec_id).await?;
        let phase = *e.phase.lock().await;
        Ok(state_response(&c, &e.id, phase, e.pid(), &e.stdio))
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let span = info_span!("pause", id = %req.id);
        self.do_pause(&req.id, true).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let span = info_span!("resume", id = %req.id);
        self.do_pause(&req.id, false).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let span = info_span!("exec", id = %req.id, exec_id = %req.exec_id);
        let _idle = self.trim.busy();
        self.do_exec(req).instrument(span).await.map_err(|e| {
            warn!("exec failed: {e}");
            e
        })?;
        Ok(Empty::default())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let span = info_span!("close_io", id = %req.id, exec_id = %req.exec_id);
        self.do_close_io(req).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let span = info_span!("resize_pty", id = %req.id, exec_id = %req.exec_id);
        self.do_resize_pty(req).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let span = info_span!("update", id = %req.id);
        let _idle = self.trim.busy();
        self.do_update(req).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let _idle = self.trim.busy();
        let c = self.get(&req.id).await?;
        let stats = c.sandbox.stats().await?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let span = info_span!("kill", id = %req.id, signal = req.signal, all = req.all);
        self.do_kill(req).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let c = self.get(&req.id).await?;
        let exit = if req.exec_id.is_empty() {
            Self::wait_exit(&c).await
        } else {
            let e = c.exec(&req.exec_id).await?;
            wait_watch(&e.exited).await
        };
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let span = info_span!("delete", id = %req.id);
        let _idle = self.trim.busy();
        Ok(self.do_delete(req).instrument(span).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let c = self.get(&req.id).await?;
        let pids = c.sandbox.pids().await?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        debug!(id = %req.id, "connect request");
        let task_pid = match self.get(&req.id).await {
            Ok(c) => c.pid(),
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.containers.lock().await.is_empty() {
            info!("no containers left; shim exits");
            self.exit.signal();
        }
        Ok(Empty::default())
    }
}
