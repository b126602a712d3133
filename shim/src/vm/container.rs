//! One container of the VM sandbox, and its processes (the init and execs) as the core's
//! `Process`: each runs in the guest under a name (`ID` for the init, `ID/EXEC` for an exec),
//! chrooted to the container's rootfs on the pod's share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use airlock_agent::protocol::{Confinement, Limits, Request, Response};
use airlock_contract::ErrorKind;
use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::oneshot;

use super::io::Input;
use super::pod::{OomCount, PodVm, CALL_LIMIT, GUEST_SHARED};
use super::VmSandbox;
use crate::console::Console;
use crate::error::{Error, Result};
use crate::process::unmount;
use crate::sandbox::{CleanupTimes, ExitInfo, Process, SandboxContainer, Started};
use crate::stdio::{self, StdioPaths};

/// What a process runs: its argv, environment and working directory (from the OCI spec).
#[derive(Debug, Clone)]
pub struct Command {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

impl Command {
    pub fn of(process: &oci_spec::runtime::Process) -> Result<Command> {
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(Error::InvalidArgument(
                "the process has no args: nothing to run".into(),
            ));
        }
        Ok(Command {
            args,
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().display().to_string(),
        })
    }
}

fn refused(kind: ErrorKind, message: String) -> Error {
    match kind {
        ErrorKind::InvalidArgument => Error::InvalidArgument(message),
        ErrorKind::NotFound => Error::NotFound(message),
        ErrorKind::AlreadyExists => Error::AlreadyExists(message),
        ErrorKind::FailedPrecondition => Error::FailedPrecondition(message),
        ErrorKind::Unknown => Error::Runtime(message),
    }
}

/// Calls the agent on a blocking thread.
pub async fn call(pod: &Arc<PodVm>, req: Request) -> Result<Response> {
    let pod = pod.clone();
    tokio::task::spawn_blocking(move || pod.vm.call(&req, CALL_LIMIT))
        .await
        .map_err(|e| Error::Runtime(format!("VM call thread: {e}")))?
        .map_err(|e| Error::Runtime(e.to_string()))
}

/// A process in the guest.
pub struct VmProcess {
    pod: Arc<PodVm>,
    name: String,
    pid: u32,
    exited: Mutex<Option<oneshot::Receiver<ExitInfo>>>,
    /// The init's input until its start (an exec's goes straight to [`run`]).
    input: Mutex<Option<Input>>,
}

#[async_trait]
impl Process for VmProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        let req = Request::Signal {
            process: self.name.clone(),
            signal,
        };
        match self.pod.vm.call(&req, CALL_LIMIT) {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }) => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
            Ok(other) => Err(std::io::Error::other(format!("signal: {other:?}"))),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    async fn wait(&self) -> std::io::Result<ExitInfo> {
        let rx = self.exited.lock().unwrap().take();
        match rx {
            Some(rx) => Ok(rx.await.unwrap_or_else(|_| ExitInfo::lost())),
            None => Err(std::io::Error::other("waited for twice")),
        }
    }
}

/// Calls the agent with a request answered by Ok.
async fn call_ok(pod: &Arc<PodVm>, req: Request, what: &str) -> Result<()> {
    match call(pod, req).await? {
        Response::Ok => Ok(()),
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(Error::Runtime(format!("{what}: {other:?}"))),
    }
}

/// Makes container `id`'s guest cgroup if needed and sets its limits.
pub async fn set_limits(pod: &Arc<PodVm>, id: &str, limits: Limits) -> Result<()> {
    let req = Request::Limits {
        cgroup: id.to_string(),
        limits,
    };
    call_ok(pod, req, &format!("limits of {id}")).await
}

/// Freezes (or thaws) container `id`'s guest cgroup.
async fn freeze(pod: &Arc<PodVm>, id: &str, frozen: bool) -> Result<()> {
    let req = Request::Freeze {
        cgroup: id.to_string(),
        frozen,
    };
    call_ok(pod, req, &format!("freeze {id}")).await
}

/// The files of container `id`'s guest cgroup that metrics and pids read.
async fn read_cgroup(pod: &Arc<PodVm>, id: &str) -> Result<BTreeMap<String, String>> {
    let req = Request::ReadCgroup {
        cgroup: id.to_string(),
    };
    match call(pod, req).await? {
        Response::Cgroup { files } => Ok(files),
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(Error::Runtime(format!("read cgroup {id}: {other:?}"))),
    }
}

/// Removes container `id`'s guest cgroup.
pub async fn remove_cgroup(pod: &Arc<PodVm>, id: &str) -> Result<()> {
    let req = Request::RemoveCgroup {
        cgroup: id.to_string(),
    };
    call_ok(pod, req, &format!("remove cgroup {id}")).await
}

/// Starts `cmd` as `name` in the container rooted at `root` (a guest path), confined.
async fn run(
    pod: &Arc<PodVm>,
    name: &str,
    cmd: &Command,
    root: &str,
    confine: Confinement,
    input: Input,
) -> Result<u32> {
    let req = Request::Run {
        process: name.to_string(),
        args: cmd.args.clone(),
        env: cmd.env.clone(),
        root: root.to_string(),
        cwd: cmd.cwd.clone(),
        io: input.io,
        confine: Box::new(confine),
    };
    match call(pod, req).await {
        Ok(Response::Started { pid }) => {
            input.relay(pod.clone(), name.to_string());
            Ok(pid)
        }
        Ok(Response::Error { kind, message }) => {
            pod.unroute(name);
            Err(refused(kind, message))
        }
        Ok(other) => {
            pod.unroute(name);
            Err(Error::Runtime(format!("run {name}: {other:?}")))
        }
        Err(e) => {
            pod.unroute(name);
            Err(e)
        }
    }
}

pub struct VmContainer {
    pub(super) sandbox: VmSandbox,
    pub(super) pod: Arc<PodVm>,
    pub(super) id: String,
    pub(super) bundle: PathBuf,
    /// The container's rootfs bound into the pod's share.
    pub(super) shared_root: PathBuf,
    pub(super) init: Command,
    /// How the init is confined in the guest.
    pub(super) confine_init: Confinement,
    /// The seccomp programs of every process of the container.
    pub(super) seccomp: Vec<Vec<u8>>,
    pub(super) init_process: Arc<VmProcess>,
    /// The OOM kills of its guest cgroup.
    pub(super) oom: Arc<OomCount>,
}

impl VmContainer {
    fn guest_root(&self) -> String {
        format!("{GUEST_SHARED}/{}", self.id)
    }

    /// The init's process, routed (stdio set up) but not started.
    pub(super) fn init_process(
        pod: &Arc<PodVm>,
        id: &str,
        paths: &StdioPaths,
        bundle: &std::path::Path,
    ) -> Result<(Arc<VmProcess>, stdio::Copier, Option<Arc<Console>>)> {
        let r = super::io::route(pod, id, paths, bundle)?;
        Ok((
            Arc::new(VmProcess {
                pod: pod.clone(),
                name: id.to_string(),
                pid: std::process::id(),
                exited: Mutex::new(Some(r.exited)),
                input: Mutex::new(Some(r.input)),
            }),
            r.copier,
            r.console,
        ))
    }
}

#[async_trait]
impl SandboxContainer for VmContainer {
    async fn start(&self) -> Result<()> {
        let confine = self.confine_init.clone();
        let input = self.init_process.input.lock().unwrap().take();
        let input = input.ok_or_else(|| Error::FailedPrecondition("started twice".into()))?;
        let root = self.guest_root();
        run(&self.pod, &self.id, &self.init, &root, confine, input).await?;
        Ok(())
    }

    async fn exec(
        &self,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        paths: &StdioPaths,
    ) -> Result<Started> {
        let cmd = Command::of(process)?;
        let confine = super::confine::exec(process, &self.id, self.seccomp.clone())?;
        let name = format!("{}/{exec_id}", self.id);
        let r = super::io::route(&self.pod, &name, paths, &self.bundle)?;
        let pid = run(&self.pod, &name, &cmd, &self.guest_root(), confine, r.input).await?;
        Ok(Started {
            process: Arc::new(VmProcess {
                pod: self.pod.clone(),
                name,
                pid,
                exited: Mutex::new(Some(r.exited)),
                input: Mutex::new(None),
            }),
            copier: r.copier,
            console: r.console,
        })
    }

    async fn kill_all(&self, signal: u32) -> Result<()> {
        let p = self.init_process.clone();
        tokio::task::spawn_blocking(move || p.signal(signal as i32))
            .await
            .map_err(|e| Error::Runtime(format!("signal thread: {e}")))?
            .or_else(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(()),
                _ => Err(Error::Runtime(e.to_string())),
            })
    }

    async fn pause(&self) -> Result<()> {
        freeze(&self.pod, &self.id, true).await
    }

    async fn resume(&self) -> Result<()> {
        freeze(&self.pod, &self.id, false).await
    }

    async fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        set_limits(&self.pod, &self.id, super::confine::limits(Some(resources))).await
    }

    async fn stats(&self) -> Result<Any> {
        let files = read_cgroup(&self.pod, &self.id).await?;
        crate::metrics_v2::any(&crate::metrics_v2::metrics(&files)?)
    }

    /// The guest's pids of the container's processes.
    async fn pids(&self) -> Result<Vec<u32>> {
        let files = read_cgroup(&self.pod, &self.id).await?;
        let procs = files.get("cgroup.procs").map(String::as_str).unwrap_or("");
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    fn oom_kills(&self) -> Option<u64> {
        Some(self.oom.kills.load(std::sync::atomic::Ordering::SeqCst))
    }

    async fn oom_notice(&self) -> std::io::Result<()> {
        self.oom.notify.notified().await;
        Ok(())
    }

    async fn clean_up_stopped(&self) -> Result<CleanupTimes> {
        if let Err(e) = remove_cgroup(&self.pod, &self.id).await {
            tracing::warn!(id = %self.id, "the container's guest cgroup stays: {e}");
        }
        let (shared, rootfs) = (self.shared_root.clone(), self.bundle.join("rootfs"));
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(share) = shared.parent() {
                super::share::remove(share, &id);
            }
            unmount(&rootfs);
        })
        .await
        .map_err(|e| Error::Runtime(format!("cleanup thread: {e}")))?;
        Ok(CleanupTimes::default())
    }

    async fn release(&self) {
        self.sandbox.release(&self.id).await;
    }
}
