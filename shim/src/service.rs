//! The containerd Task service: translates Task API calls into `airlock-runtime` steps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, WaitRequest, WaitResponse,
};
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{Context, ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::Spec;
use tokio::sync::{watch, Mutex};
use tracing::{info, info_span, warn, Instrument};

use crate::error::{Error, Result};
use crate::pidfd::{ExitInfo, PidFd};
use crate::runtime::Runtime;
use crate::stdio::{self, Copier, StdioPaths};

/// How long an exit waits for the container's output to be copied out.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopped(ExitInfo),
}

struct Container {
    id: String,
    bundle: PathBuf,
    stdio: StdioPaths,
    pidfd: Arc<PidFd>,
    rootfs_mounted: bool,
    phase: Mutex<Phase>,
    exited: watch::Receiver<Option<ExitInfo>>,
    copier: Arc<Mutex<Copier>>,
}

impl Container {
    fn pid(&self) -> u32 {
        self.pidfd.pid() as u32
    }
}

/// One shim serves all containers of one pod.
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    runtime: Runtime,
    default_policy: String,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

impl TaskService {
    pub fn new(
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        runtime: Runtime,
        default_policy: String,
    ) -> Self {
        TaskService {
            namespace,
            publisher: Arc::new(publisher),
            exit,
            runtime,
            default_policy,
            containers: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event).await
    }

    async fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let t0 = Instant::now();
        validate_id(&req.id)?;
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::InvalidArgument(
                "restoring from a checkpoint is not supported by airlock".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        self.apply_policy(&bundle).await?;
        let t_policy = t0.elapsed();

        let rootfs = bundle.join("rootfs");
        let mut rootfs_mounted = false;
        for m in &req.rootfs {
            if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs).await {
                if rootfs_mounted {
                    unmount(&rootfs);
                }
                return Err(Error::InvalidArgument(format!(
                    "cannot mount the container's rootfs ({} {}): {e}",
                    m.type_, m.source
                )));
            }
            rootfs_mounted = true;
        }
        let t_mount = t0.elapsed();

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let fail = |e: Error| {
            if rootfs_mounted {
                unmount(&rootfs);
            }
            e
        };
        let (child, copier) = stdio::setup(&paths).map_err(fail)?;
        let pid_file = bundle.join("init.pid");
        if let Err(e) = self
            .runtime
            .create(&req.id, &bundle, &pid_file, child)
            .await
        {
            drop(copier);
            // The runtime cleans up after itself; make sure, since a leak outlives us.
            let _ = self.runtime.delete(&req.id, true).await;
            return Err(fail(e));
        }
        let t_runtime = t0.elapsed();
        let pidfd = match read_pid(&pid_file).await.and_then(|pid| {
            PidFd::open(pid).map_err(|e| Error::io(format!("open pidfd of {pid}"), e))
        }) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = self.runtime.delete(&req.id, true).await;
                return Err(fail(e));
            }
        };
        let (tx, rx) = watch::channel(None);
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            stdio: paths,
            pidfd: pidfd.clone(),
            rootfs_mounted,
            phase: Mutex::new(Phase::Created),
            exited: rx,
            copier: Arc::new(Mutex::new(copier)),
        });
        self.containers
            .lock()
            .await
            .insert(req.id.clone(), container.clone());
        self.spawn_exit_watcher(container.clone(), tx);

        let pid = container.pid();
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        info!(
            pid,
            policy_us = t_policy.as_micros() as u64,
            mount_us = (t_mount - t_policy).as_micros() as u64,
            runtime_create_us = (t_runtime - t_mount).as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            "container created"
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Resolve the container's policy and write it into the bundle's config.json.
    async fn apply_policy(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join("config.json");
        let raw = tokio::fs::read(&path).await.map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot read the bundle's OCI spec {}: {e}",
                path.display()
            ))
        })?;
        let mut spec: Spec = serde_json::from_slice(&raw).map_err(|e| {
            Error::InvalidArgument(format!(
                "the bundle's OCI spec {} is malformed: {e}; fix config.json",
                path.display()
            ))
        })?;
        let policy = airlock_policies::select(spec.annotations().as_ref(), &self.default_policy)?;
        let enforced = policy.apply(&mut spec)?;
        info!(policy = %policy.name, enforced = %enforced.join("; "), "policy applied");
        let out = serde_json::to_vec(&spec)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise the OCI spec: {e}")))?;
        tokio::fs::write(&path, out)
            .await
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    fn spawn_exit_watcher(&self, c: Arc<Container>, tx: watch::Sender<Option<ExitInfo>>) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let exit = match c.pidfd.wait().await {
                Ok(e) => e,
                Err(e) => {
                    warn!(id = %c.id, "waiting for the container's init failed: {e}");
                    ExitInfo {
                        status: 255,
                        at: SystemTime::now(),
                    }
                }
            };
            c.copier.lock().await.drain(DRAIN_LIMIT).await;
            *c.phase.lock().await = Phase::Stopped(exit);
            let _ = tx.send(Some(exit));
            info!(id = %c.id, pid = c.pid(), status = exit.status, "container exited");
            publish(
                &publisher,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid: c.pid(),
                    exit_status: exit.status,
                    exited_at: MessageField::some(timestamp(exit.at)),
                    ..Default::default()
                }),
            )
            .await;
        });
    }

    async fn wait_exit(c: &Container) -> ExitInfo {
        let mut rx = c.exited.clone();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The watcher is gone without a result; report what a killed process reports.
                return ExitInfo {
                    status: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return Err(Error::NotFound(format!(
                "exec {} in {}",
                req.exec_id, req.id
            )));
        }
        let c = self.get(&req.id).await?;
        let phase = *c.phase.lock().await;
        match phase {
            Phase::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is running; kill it before deleting it",
                    c.id
                )))
            }
            Phase::Created => {
                // Never started: end the waiting init first, so its exit is reported in order.
                let _ = c.pidfd.signal(libc::SIGKILL);
            }
            Phase::Stopped(_) => {}
        }
        let exit = Self::wait_exit(&c).await;
        self.runtime.delete(&c.id, true).await?;
        if c.rootfs_mounted {
            unmount(&c.bundle.join("rootfs"));
        }
        c.copier.lock().await.close_stdin();
        self.containers.lock().await.remove(&c.id);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: c.pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse {
            pid: c.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        if !req.exec_id.is_empty() {
            return Err(Error::NotFound(format!(
                "exec {} in {}",
                req.exec_id, req.id
            )));
        }
        let c = self.get(&req.id).await?;
        if req.all {
            return self.runtime.kill(&c.id, req.signal, true).await;
        }
        if let Phase::Stopped(_) = *c.phase.lock().await {
            return Err(Error::NotFound(format!(
                "process {} of container {}: already finished",
                c.pid(),
                c.id
            )));
        }
        match c.pidfd.signal(req.signal as i32) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Error::NotFound(format!(
                "process {} of container {}: already finished",
                c.pid(),
                c.id
            ))),
            Err(e) => Err(Error::io(format!("signal {} to {}", req.signal, c.id), e)),
        }
    }
}

async fn publish(
    publisher: &RemotePublisher,
    namespace: &str,
    topic: &str,
    event: Box<dyn MessageDyn>,
) {
    if let Err(e) = publisher
        .publish(Context::default(), topic, namespace, event)
        .await
    {
        warn!(topic, "publish event failed: {e}");
    }
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "container id {id:?} is invalid: use letters, digits, '-', '_', '.', '+'"
        )))
    }
}

async fn read_pid(path: &Path) -> Result<i32> {
    let s = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::io(format!("read pid file {}", path.display()), e))?;
    s.trim().parse().map_err(|_| {
        Error::Runtime(format!(
            "pid file {} holds {:?}, not a pid",
            path.display(),
            s.trim()
        ))
    })
}

/// Lazily unmount the container's rootfs (it may still be busy for a moment).
pub fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            warn!("unmount {}: {e}", target.display());
        }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let span = info_span!("create", id = %req.id);
        self.do_create(req).instrument(span).await.map_err(|e| {
            warn!("create failed: {e}");
            e.into()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let span = info_span!("start", id = %req.id);
        async {
            if !req.exec_id.is_empty() {
                return Err(Error::NotFound(format!(
                    "exec {} in {}",
                    req.exec_id, req.id
                )));
            }
            let c = self.get(&req.id).await?;
            let t0 = Instant::now();
            {
                let mut phase = c.phase.lock().await;
                if *phase != Phase::Created {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} was already started",
                        c.id
                    )));
                }
                self.runtime.start(&c.id).await?;
                *phase = Phase::Running;
            }
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: c.id.clone(),
                    pid: c.pid(),
                    ..Default::default()
                }),
            )
            .await;
            info!(
                pid = c.pid(),
                start_us = t0.elapsed().as_micros() as u64,
                "container started"
            );
            Ok(StartResponse {
                pid: c.pid(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
        .map_err(Into::into)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        if !req.exec_id.is_empty() {
            return Err(Error::NotFound(format!("exec {} in {}", req.exec_id, req.id)).into());
        }
        let c = self.get(&req.id).await?;
        let phase = *c.phase.lock().await;
        let mut resp = StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: c.stdio.terminal,
            ..Default::default()
        };
        let status = match phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped(e) => {
                resp.exit_status = e.status;
                resp.exited_at = MessageField::some(timestamp(e.at));
                Status::STOPPED
            }
        };
        resp.status = EnumOrUnknown::new(status);
        Ok(resp)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let span = info_span!("kill", id = %req.id, signal = req.signal, all = req.all);
        self.do_kill(req).instrument(span).await?;
        Ok(Empty::default())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        if !req.exec_id.is_empty() {
            return Err(Error::NotFound(format!("exec {} in {}", req.exec_id, req.id)).into());
        }
        let c = self.get(&req.id).await?;
        let exit = Self::wait_exit(&c).await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let span = info_span!("delete", id = %req.id);
        Ok(self.do_delete(req).instrument(span).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let c = self.get(&req.id).await?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: c.pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("a/b").is_err());
    }

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(5, 7);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }
}
