//! containerd gRPC client (the `containerd-client` crate): containers, snapshots, tasks, events.
//!
//! The services used here (containers, snapshots, tasks, events) have the same wire format in
//! containerd 1.6 and 2.x.

use crate::runtime::Runtime;
use anyhow::{anyhow, Context, Result};
use containerd_client::services::v1::{
    container::Runtime as ContainerRuntime,
    containers_client::ContainersClient,
    events_client::EventsClient,
    snapshots::{snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest},
    tasks_client::TasksClient,
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, ResizePtyRequest, StartRequest, SubscribeRequest, WaitRequest,
};
use containerd_client::tonic::{transport::Channel, Request};
use containerd_client::types::Mount;
use prost::Message;
use prost_types::{Any, Timestamp};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Snapshotter used for every container.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Type URL containerd uses for OCI runtime specs.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Type URL containerd uses for OCI process specs (exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Type URL containerd uses for OCI LinuxResources (task updates).
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// A connected client.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

/// The deadline every unary call carries (gRPC `grpc-timeout`): containerd cancels the call's
/// context, and with it its ttrpc call into the shim, so a stuck call ends as DeadlineExceeded
/// instead of holding a test forever. Longer than any wait a test or the benchmark makes.
pub const CALL_DEADLINE: Duration = Duration::from_secs(150);

fn req<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(CALL_DEADLINE);
    r.metadata_mut().insert(
        "containerd-namespace",
        ns.parse().expect("namespace is ASCII"),
    );
    r
}

/// The stdio of a task or exec: FIFO paths ("" = none) and whether it gets a terminal.
#[derive(Debug, Clone, Default)]
pub struct TaskStdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Result of [`Client::run`].
#[derive(Debug, Clone)]
pub struct RunResult {
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<Timestamp>,
}

/// Task lifecycle events (decoded from the events service).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Create {
        container_id: String,
        pid: u32,
    },
    Start {
        container_id: String,
        pid: u32,
    },
    Exit {
        container_id: String,
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<Timestamp>,
    },
    Delete {
        container_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<Timestamp>,
    },
    Oom {
        container_id: String,
    },
    Other {
        topic: String,
    },
}

impl TaskEvent {
    pub fn container_id(&self) -> Option<&str> {
        match self {
            TaskEvent::Create { container_id, .. }
            | TaskEvent::Start { container_id, .. }
            | TaskEvent::Exit { container_id, .. }
            | TaskEvent::Delete { container_id, .. }
            | TaskEvent::Oom { container_id } => Some(container_id),
            TaskEvent::Other { .. } => None,
        }
    }

    fn decode(topic: &str, any: &Any) -> Result<Self> {
        use containerd_client::events as ev;
        let v = any.value.as_slice();
        Ok(match topic {
            "/tasks/create" => {
                let e = ev::TaskCreate::decode(v)?;
                TaskEvent::Create {
                    container_id: e.container_id,
                    pid: e.pid,
                }
            }
            "/tasks/start" => {
                let e = ev::TaskStart::decode(v)?;
                TaskEvent::Start {
                    container_id: e.container_id,
                    pid: e.pid,
                }
            }
            "/tasks/exit" => {
                let e = ev::TaskExit::decode(v)?;
                TaskEvent::Exit {
                    container_id: e.container_id,
                    id: e.id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                    exited_at: e.exited_at,
                }
            }
            "/tasks/delete" => {
                let e = ev::TaskDelete::decode(v)?;
                TaskEvent::Delete {
                    container_id: e.container_id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                    exited_at: e.exited_at,
                }
            }
            "/tasks/oom" => TaskEvent::Oom {
                container_id: ev::TaskOom::decode(v)?.container_id,
            },
            t => TaskEvent::Other { topic: t.into() },
        })
    }
}

/// An event with its envelope data.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub namespace: String,
    pub topic: String,
    pub timestamp: Option<Timestamp>,
    pub event: TaskEvent,
    /// When this process received it (the stream is read by a background task, so this is
    /// the arrival time even when the event is taken from the stream later).
    pub received: std::time::Instant,
}

/// A live subscription; events are buffered by a background task.
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Result<Envelope>>,
    pending: std::collections::VecDeque<Envelope>,
    sync_topic: String,
}

impl EventStream {
    /// Next event, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Result<Envelope>> {
        if let Some(e) = self.pending.pop_front() {
            return Some(Ok(e));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()
                .flatten()?;
            match e {
                Ok(e) if e.topic == self.sync_topic => continue,
                other => return Some(other),
            }
        }
    }

    async fn next_raw(&mut self, timeout: Duration) -> Option<Result<Envelope>> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects events until `done` holds (returns true) or `timeout` passes (returns false);
    /// stream errors end the collection early.
    pub async fn collect_for(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Envelope]) -> bool,
    ) -> (Vec<Envelope>, bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut v = Vec::new();
        while !done(&v) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(e)) => v.push(e),
                _ => return (v, false),
            }
        }
        (v, true)
    }

    /// Collects events until `done` returns true on the collected list, or `timeout` passes.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Envelope]) -> bool,
    ) -> Result<Vec<Envelope>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut v = Vec::new();
        while !done(&v) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(e)) => v.push(e),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(anyhow!(
                        "events: condition not met after {timeout:?}; got {v:#?}"
                    ))
                }
            }
        }
        Ok(v)
    }
}

impl Client {
    /// Connects to containerd's gRPC socket.
    pub async fn connect(path: &Path) -> Result<Self> {
        let channel = containerd_client::connect(path)
            .await
            .with_context(|| format!("connect {}", path.display()))?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Creates the container object (spec, runtime, snapshot key = id).
    pub async fn create_container(
        &self,
        ns: &str,
        id: &str,
        runtime: Runtime,
        spec_json: Vec<u8>,
    ) -> Result<()> {
        self.create_container_as(
            ns,
            id,
            runtime.runtime_type(),
            runtime.options_any(),
            spec_json,
        )
        .await
    }

    /// Creates the container object with any runtime type and options (peers that are not a
    /// [`Runtime`], e.g. gVisor through runc.v2 or `io.containerd.runc.v2-rs`).
    pub async fn create_container_as(
        &self,
        ns: &str,
        id: &str,
        runtime_type: &str,
        options: Option<Any>,
        spec_json: Vec<u8>,
    ) -> Result<()> {
        let c = Container {
            id: id.into(),
            image: crate::IMAGE_REF.into(),
            runtime: Some(ContainerRuntime {
                name: runtime_type.into(),
                options,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        ContainersClient::new(self.channel())
            .create(req(ns, CreateContainerRequest { container: Some(c) }))
            .await
            .context("containers.create")?;
        Ok(())
    }

    /// Prepares the rootfs snapshot `id` on top of the busybox image's layer.
    pub async fn prepare_rootfs(&self, ns: &str, id: &str) -> Result<Vec<Mount>> {
        let parent = crate::image::busybox_chain_id()?;
        let r = SnapshotsClient::new(self.channel())
            .prepare(req(
                ns,
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.into(),
                    parent,
                    ..Default::default()
                },
            ))
            .await
            .context("snapshots.prepare")?;
        Ok(r.into_inner().mounts)
    }

    /// Task.Create with the given rootfs mounts and no stdio; returns the pid.
    pub async fn create_task(&self, ns: &str, id: &str, rootfs: Vec<Mount>) -> Result<u32> {
        self.create_task_stdio(ns, id, rootfs, "", "").await
    }

    /// Task.Create with stdout and stderr going to FIFO paths the caller reads ("" = none; the
    /// runc.v2 shim wants both or neither, the same path for both is fine).
    pub async fn create_task_stdio(
        &self,
        ns: &str,
        id: &str,
        rootfs: Vec<Mount>,
        stdout: &str,
        stderr: &str,
    ) -> Result<u32> {
        let stdio = TaskStdio {
            stdout: stdout.into(),
            stderr: stderr.into(),
            ..Default::default()
        };
        self.create_task_io(ns, id, rootfs, &stdio).await
    }

    /// Task.Create with any stdio (stdin, a terminal); returns the pid. With a terminal the
    /// spec's `process.terminal` must be true too, as containerd's clients set it.
    pub async fn create_task_io(
        &self,
        ns: &str,
        id: &str,
        rootfs: Vec<Mount>,
        stdio: &TaskStdio,
    ) -> Result<u32> {
        self.create_task_with(ns, id, rootfs, stdio, None).await
    }

    /// [`Client::create_task_io`] with task options (`CreateTaskRequest.options`, which
    /// containerd also writes to `shim start`'s stdin, as the Go client's `WithShimCgroup`).
    pub async fn create_task_with(
        &self,
        ns: &str,
        id: &str,
        rootfs: Vec<Mount>,
        stdio: &TaskStdio,
        options: Option<Any>,
    ) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .create(req(
                ns,
                CreateTaskRequest {
                    container_id: id.into(),
                    rootfs,
                    stdin: stdio.stdin.clone(),
                    stdout: stdio.stdout.clone(),
                    stderr: stdio.stderr.clone(),
                    terminal: stdio.terminal,
                    options,
                    ..Default::default()
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.create: {:?}: {}", s.code(), s.message()))?;
        Ok(r.into_inner().pid)
    }

    pub async fn start(&self, ns: &str, id: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .start(req(
                ns,
                StartRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.start: {:?}: {}", s.code(), s.message()))?;
        Ok(r.into_inner().pid)
    }

    /// Waits for the init process's exit (bounded by `timeout`).
    pub async fn wait(
        &self,
        ns: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<(u32, Option<Timestamp>)> {
        let mut tasks = TasksClient::new(self.channel());
        let fut = tasks.wait(req(
            ns,
            WaitRequest {
                container_id: id.into(),
                ..Default::default()
            },
        ));
        let r = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("tasks.wait {id}: no exit after {timeout:?}"))?
            .map_err(|s| anyhow!("tasks.wait: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok((r.exit_status, r.exited_at))
    }

    pub async fn kill(&self, ns: &str, id: &str, signal: u32, all: bool) -> Result<()> {
        TasksClient::new(self.channel())
            .kill(req(
                ns,
                KillRequest {
                    container_id: id.into(),
                    signal,
                    all,
                    ..Default::default()
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.kill: {:?}: {}", s.code(), s.message()))?;
        Ok(())
    }

    /// Exec: adds process `exec_id` running `process_json` (an OCI Process) to task `id`, no
    /// stdio. Start it with [`Client::start_exec`].
    pub async fn exec(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
    ) -> Result<()> {
        self.exec_io(ns, id, exec_id, process_json, &TaskStdio::default())
            .await
    }

    /// Exec with any stdio (stdin, a terminal: then `process.terminal` must be true too).
    pub async fn exec_io(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: &TaskStdio,
    ) -> Result<()> {
        TasksClient::new(self.channel())
            .exec(req(
                ns,
                containerd_client::services::v1::ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    spec: Some(Any {
                        type_url: PROCESS_TYPE_URL.into(),
                        value: process_json,
                    }),
                    stdin: stdio.stdin.clone(),
                    stdout: stdio.stdout.clone(),
                    stderr: stdio.stderr.clone(),
                    terminal: stdio.terminal,
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.exec: {:?}: {}", s.code(), s.message()))?;
        Ok(())
    }

    /// Starts exec `exec_id` of task `id`; returns its pid.
    pub async fn start_exec(&self, ns: &str, id: &str, exec_id: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .start(req(
                ns,
                StartRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.start exec: {:?}: {}", s.code(), s.message()))?;
        Ok(r.into_inner().pid)
    }

    /// Waits for exec `exec_id` of task `id`; returns its exit status.
    pub async fn wait_exec(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<u32> {
        let mut tasks = TasksClient::new(self.channel());
        let fut = tasks.wait(req(
            ns,
            WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
        ));
        let r = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("tasks.wait {id}/{exec_id}: no exit after {timeout:?}"))?
            .map_err(|s| anyhow!("tasks.wait exec: {:?}: {}", s.code(), s.message()))?;
        Ok(r.into_inner().exit_status)
    }

    /// Deletes exec `exec_id` of task `id`.
    pub async fn delete_exec(&self, ns: &str, id: &str, exec_id: &str) -> Result<()> {
        TasksClient::new(self.channel())
            .delete_process(req(
                ns,
                containerd_client::services::v1::DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.delete_process: {:?}: {}", s.code(), s.message()))?;
        Ok(())
    }

    /// Changes the task's resources: `resources_json` is an OCI LinuxResources object (ctr 1.6
    /// has no `tasks update`).
    pub async fn update(&self, ns: &str, id: &str, resources_json: &str) -> Result<()> {
        TasksClient::new(self.channel())
            .update(req(
                ns,
                containerd_client::services::v1::UpdateTaskRequest {
                    container_id: id.into(),
                    resources: Some(Any {
                        type_url: RESOURCES_TYPE_URL.into(),
                        value: resources_json.as_bytes().to_vec(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.update: {:?}: {}", s.code(), s.message()))?;
        Ok(())
    }

    /// Sets the terminal size of the task (or of exec `exec_id`).
    pub async fn resize_pty(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> std::result::Result<(), containerd_client::tonic::Status> {
        TasksClient::new(self.channel())
            .resize_pty(req(
                ns,
                ResizePtyRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    width,
                    height,
                },
            ))
            .await?;
        Ok(())
    }

    /// The task's init pid and status (`RUNNING`, `PAUSED`, `STOPPED`, ... as `ctr tasks ls`
    /// prints them); `None` when the container has no task.
    pub async fn task(&self, ns: &str, id: &str) -> Result<Option<(u32, String)>> {
        let r = TasksClient::new(self.channel())
            .get(req(
                ns,
                containerd_client::services::v1::GetRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            ))
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                let status = containerd_client::types::v1::Status::try_from(p.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                (p.pid, status.to_string())
            })),
            Err(s) if s.code() == containerd_client::tonic::Code::NotFound => Ok(None),
            Err(s) => Err(anyhow!("tasks.get: {:?}: {}", s.code(), s.message())),
        }
    }

    /// The task's cgroup metrics as the shim returned them (Tasks.Metrics): the type URL says
    /// which cgroup version they describe (`io.containerd.cgroups.v1.Metrics` or `...v2...`).
    pub async fn metrics(&self, ns: &str, id: &str) -> Result<Any> {
        let r = TasksClient::new(self.channel())
            .metrics(req(
                ns,
                containerd_client::services::v1::MetricsRequest {
                    filters: vec![format!("id=={id}")],
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.metrics: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        r.metrics
            .into_iter()
            .find(|m| m.id == id)
            .and_then(|m| m.data)
            .ok_or_else(|| anyhow!("tasks.metrics: no metrics for task {id}"))
    }

    /// Closes the stdin of the task (or of exec `exec_id`).
    pub async fn close_stdin(&self, ns: &str, id: &str, exec_id: &str) -> Result<()> {
        TasksClient::new(self.channel())
            .close_io(req(
                ns,
                containerd_client::services::v1::CloseIoRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    stdin: true,
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.close_io: {:?}: {}", s.code(), s.message()))?;
        Ok(())
    }

    /// Deletes the task; returns (pid, exit status).
    pub async fn delete_task(&self, ns: &str, id: &str) -> Result<(u32, u32)> {
        let r = TasksClient::new(self.channel())
            .delete(req(
                ns,
                DeleteTaskRequest {
                    container_id: id.into(),
                },
            ))
            .await
            .map_err(|s| anyhow!("tasks.delete: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok((r.pid, r.exit_status))
    }

    /// Deletes the container object and its snapshot (errors of either are returned).
    pub async fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        let a = ContainersClient::new(self.channel())
            .delete(req(ns, DeleteContainerRequest { id: id.into() }))
            .await;
        let b = SnapshotsClient::new(self.channel())
            .remove(req(
                ns,
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.into(),
                },
            ))
            .await;
        a.context("containers.delete")?;
        match b {
            Ok(_) => Ok(()),
            Err(s) if s.code() == containerd_client::tonic::Code::NotFound => Ok(()),
            Err(s) => Err(anyhow!("snapshots.remove: {s}")),
        }
    }

    /// Container + snapshot + task created (not started); returns the pid. On a failed task
    /// create, the container and snapshot are removed again and the error returned.
    pub async fn create(
        &self,
        ns: &str,
        id: &str,
        runtime: Runtime,
        spec_json: Vec<u8>,
    ) -> Result<u32> {
        self.create_container(ns, id, runtime, spec_json).await?;
        let res = async {
            let mounts = self.prepare_rootfs(ns, id).await?;
            self.create_task(ns, id, mounts).await
        }
        .await;
        if res.is_err() {
            let _ = self.delete_container(ns, id).await;
        }
        res
    }

    /// create, start, wait, delete task, delete container: the whole lifecycle.
    pub async fn run(
        &self,
        ns: &str,
        id: &str,
        runtime: Runtime,
        spec_json: Vec<u8>,
        timeout: Duration,
    ) -> Result<RunResult> {
        let pid = self.create(ns, id, runtime, spec_json).await?;
        let res = async {
            self.start(ns, id).await?;
            self.wait(ns, id, timeout).await
        }
        .await;
        if res.is_err() {
            let _ = self.kill(ns, id, libc::SIGKILL as u32, true).await;
            let _ = self.wait(ns, id, Duration::from_secs(10)).await;
        }
        let del = self.delete_task(ns, id).await;
        let delc = self.delete_container(ns, id).await;
        let (exit_status, exited_at) = res?;
        let (dpid, dstatus) = del?;
        delc?;
        anyhow::ensure!(
            dpid == pid && dstatus == exit_status,
            "tasks.delete reported pid {dpid} status {dstatus}, expected pid {pid} status {exit_status}"
        );
        Ok(RunResult {
            pid,
            exit_status,
            exited_at,
        })
    }

    /// Subscribes to events matching `filters` (containerd filter syntax, e.g.
    /// `namespace==foo`, `topic~="/tasks/"`; entries are OR-ed).
    ///
    /// containerd sends the stream's response headers only with the first event, so the call runs
    /// in a background task; to know the subscription is live before returning, a sync event is
    /// published on a private topic and awaited.
    pub async fn subscribe(&self, mut filters: Vec<String>) -> Result<EventStream> {
        static SYNC: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let sync_topic = format!(
            "/airlock-test/sync{}x{}",
            std::process::id(),
            SYNC.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        filters.push(format!("topic==\"{sync_topic}\""));
        let (tx, rx) = mpsc::unbounded_channel();
        let channel = self.channel();
        tokio::spawn(async move {
            let stream = EventsClient::new(channel)
                .subscribe(Request::new(SubscribeRequest { filters }))
                .await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("events.subscribe: {e}")));
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(env)) => {
                        let ev = match env.event.as_ref() {
                            Some(a) => TaskEvent::decode(&env.topic, a),
                            None => Ok(TaskEvent::Other {
                                topic: env.topic.clone(),
                            }),
                        };
                        let item = ev.map(|event| Envelope {
                            namespace: env.namespace,
                            topic: env.topic,
                            timestamp: env.timestamp,
                            event,
                            received: std::time::Instant::now(),
                        });
                        if tx.send(item).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("event stream: {e}")));
                        break;
                    }
                }
            }
        });
        let mut es = EventStream {
            rx,
            pending: Default::default(),
            sync_topic: sync_topic.clone(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.publish_sync(&sync_topic).await?;
            match es.next_raw(Duration::from_millis(300)).await {
                Some(Ok(e)) if e.topic == sync_topic => return Ok(es),
                Some(Ok(e)) => es.pending.push_back(e),
                Some(Err(e)) => return Err(e),
                None if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("event subscription not live after 10s")
                }
                None => {}
            }
        }
    }

    async fn publish_sync(&self, topic: &str) -> Result<()> {
        use containerd_client::services::v1::PublishRequest;
        let ev = containerd_client::events::TaskOom {
            container_id: "airlock-test-sync".into(),
        };
        EventsClient::new(self.channel())
            .publish(req(
                "default",
                PublishRequest {
                    topic: topic.into(),
                    event: Some(Any {
                        type_url: "containerd.events.TaskOOM".into(),
                        value: ev.encode_to_vec(),
                    }),
                },
            ))
            .await
            .context("events.publish")?;
        Ok(())
    }
}

/// OCI spec for `args` in container `id` of `ns`, starting from `ctr oci spec`'s default.
pub fn spec_for(default_spec: &serde_json::Value, ns: &str, id: &str, args: &[&str]) -> Vec<u8> {
    let mut s = default_spec.clone();
    s["process"]["args"] = serde_json::json!(args);
    s["process"]["env"] =
        serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
    s["process"]["terminal"] = serde_json::json!(false);
    s["root"] = serde_json::json!({ "path": "rootfs" });
    s["linux"]["cgroupsPath"] = serde_json::json!(format!("/{ns}/{id}"));
    serde_json::to_vec(&s).expect("spec serializes")
}
