//! One container of the VM sandbox, and its processes (the init and execs) as the core's
//! `Process`: each runs in the guest under a name (`ID` for the init, `ID/EXEC` for an exec),
//! chrooted to the container's rootfs on the pod's share.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use airlock_agent::protocol::{Confinement, Limits, Request, Response};
use airlock_contract::ErrorKind;
use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::oneshot;

use super::pod::{PodVm, Route, CALL_LIMIT, GUEST_SHARED};
use super::VmSandbox;
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

/// Sets up `name`'s stdio (containerd's FIFOs, through pipes) and its route in the pod.
fn routed(
    pod: &Arc<PodVm>,
    name: &str,
    paths: &StdioPaths,
    bundle: &std::path::Path,
) -> Result<(stdio::Copier, oneshot::Receiver<ExitInfo>)> {
    if paths.terminal {
        return Err(Error::FailedPrecondition(
            "terminals are not available in the microVM mode yet; run without -t".into(),
        ));
    }
    let (child, copier) = stdio::setup(paths, bundle)?;
    let (tx, rx) = oneshot::channel();
    pod.route(
        name,
        Route {
            stdout: child.stdout.map(File::from),
            stderr: child.stderr.map(File::from),
            exited: Some(tx),
        },
    );
    Ok((copier, rx))
}

/// Makes container `id`'s guest cgroup if needed and sets its limits.
pub async fn set_limits(pod: &Arc<PodVm>, id: &str, limits: Limits) -> Result<()> {
    let req = Request::Limits {
        cgroup: id.to_string(),
        limits,
    };
    match call(pod, req).await? {
        Response::Ok => Ok(()),
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(Error::Runtime(format!("limits of {id}: {other:?}"))),
    }
}

/// Removes container `id`'s guest cgroup.
pub async fn remove_cgroup(pod: &Arc<PodVm>, id: &str) -> Result<()> {
    let req = Request::RemoveCgroup {
        cgroup: id.to_string(),
    };
    match call(pod, req).await? {
        Response::Ok => Ok(()),
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(Error::Runtime(format!("remove cgroup {id}: {other:?}"))),
    }
}

/// Starts `cmd` as `name` in the container rooted at `root` (a guest path), confined.
async fn run(
    pod: &Arc<PodVm>,
    name: &str,
    cmd: &Command,
    root: &str,
    confine: Confinement,
) -> Result<u32> {
    let req = Request::Run {
        process: name.to_string(),
        args: cmd.args.clone(),
        env: cmd.env.clone(),
        root: root.to_string(),
        cwd: cmd.cwd.clone(),
        confine,
    };
    match call(pod, req).await {
        Ok(Response::Started { pid }) => Ok(pid),
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
    ) -> Result<(Arc<VmProcess>, stdio::Copier)> {
        let (copier, rx) = routed(pod, id, paths, bundle)?;
        Ok((
            Arc::new(VmProcess {
                pod: pod.clone(),
                name: id.to_string(),
                pid: std::process::id(),
                exited: Mutex::new(Some(rx)),
            }),
            copier,
        ))
    }
}

fn not_in_vm_mode(what: &str) -> Error {
    Error::FailedPrecondition(format!("{what} is not available in the microVM mode yet"))
}

#[async_trait]
impl SandboxContainer for VmContainer {
    async fn start(&self) -> Result<()> {
        let confine = self.confine_init.clone();
        run(&self.pod, &self.id, &self.init, &self.guest_root(), confine).await?;
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
        let (copier, rx) = routed(&self.pod, &name, paths, &self.bundle)?;
        let pid = run(&self.pod, &name, &cmd, &self.guest_root(), confine).await?;
        Ok(Started {
            process: Arc::new(VmProcess {
                pod: self.pod.clone(),
                name,
                pid,
                exited: Mutex::new(Some(rx)),
            }),
            copier,
            console: None,
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
        Err(not_in_vm_mode("pause"))
    }

    async fn resume(&self) -> Result<()> {
        Err(not_in_vm_mode("resume"))
    }

    async fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        set_limits(&self.pod, &self.id, super::confine::limits(Some(resources))).await
    }

    fn stats(&self) -> Result<Any> {
        Err(not_in_vm_mode("stats"))
    }

    fn pids(&self) -> Result<Vec<u32>> {
        Err(not_in_vm_mode("pids"))
    }

    fn oom_kills(&self) -> Option<u64> {
        None
    }

    async fn oom_notice(&self) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "no OOM notices in the microVM mode yet",
        ))
    }

    async fn clean_up_stopped(&self) -> Result<CleanupTimes> {
        if let Err(e) = remove_cgroup(&self.pod, &self.id).await {
            tracing::warn!(id = %self.id, "the container's guest cgroup stays: {e}");
        }
        let (shared, rootfs) = (self.shared_root.clone(), self.bundle.join("rootfs"));
        tokio::task::spawn_blocking(move || {
            unmount(&shared);
            let _ = std::fs::remove_dir(&shared);
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
