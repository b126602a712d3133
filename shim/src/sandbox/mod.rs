//! The seam between the task core (`service/`, the Task API) and the place that runs a pod's
//! containers.
//!
//! The core owns what every way of running a container shares: the lifecycle checks
//! (`lifecycle.rs`), the container and exec tables, the events and their order, the exit
//! path (exec exits before the init's, output drained, TaskOOM before TaskExit), the copy of
//! stdio to containerd's FIFOs, and the record of containers for the orphan sweep. A
//! [`Sandbox`] does the rest: it prepares a container for its node (the policy lowered onto
//! the spec, the node-side edits), creates it, and hands back a [`SandboxContainer`] that
//! starts, signals, pauses, updates, measures and cleans up that one container, and
//! [`Process`]es the core waits for.
//!
//! The process sandbox (`process/`: `airlock-runtime` and libcontainer on this host) is one
//! implementation, the VM sandbox (`vm/`: one VM per pod, the guest's agent) another; the
//! unit tests of the task core run against a stub (`stub.rs`), with no root and no containerd.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use crate::console::Console;
use crate::error::{Error, Result};
use crate::stdio::{Copier, StdioPaths};

#[cfg(test)]
pub mod stub;

/// How a process ended, in containerd's terms (128 + signal for a killed process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

impl ExitInfo {
    /// What a process whose end nobody saw reports (as a killed one does).
    pub fn lost() -> ExitInfo {
        ExitInfo {
            status: 255,
            at: SystemTime::now(),
        }
    }
}

/// A process of a container (its init or an exec) that the core signals and waits for.
#[async_trait]
pub trait Process: Send + Sync + 'static {
    /// The pid containerd is told.
    fn pid(&self) -> u32;
    /// Sends `signal`; an error of kind ESRCH (`raw_os_error`) means it has already exited.
    fn signal(&self, signal: i32) -> std::io::Result<()>;
    /// Waits for the process's end (once; the core keeps the result).
    async fn wait(&self) -> std::io::Result<ExitInfo>;
}

/// A container the sandbox has created: its init waits for [`SandboxContainer::start`].
pub struct Created {
    pub container: Arc<dyn SandboxContainer>,
    pub init: Arc<dyn Process>,
    /// The copy of the init's stdio to and from containerd's FIFOs.
    pub copier: Copier,
    /// The pty master of an init created with a terminal.
    pub console: Option<Arc<Console>>,
    /// The policy's ceilings, checked on every Task.Update.
    pub update_rules: airlock_policies::UpdateRules,
}

/// An exec the sandbox has started.
pub struct Started {
    pub process: Arc<dyn Process>,
    pub copier: Copier,
    pub console: Option<Arc<Console>>,
}

/// How long the parts of a stopped container's cleanup took, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanupTimes {
    pub state_us: u64,
    pub unmount_us: u64,
}

/// A place that runs one pod's containers (one per shim).
#[async_trait]
pub trait Sandbox: Send + Sync + 'static {
    /// Work worth doing before the pod's first Create, off its path (a config read, say).
    fn warm_up(&self) {}

    /// Applies the container's policy, prepares the node for it and creates it (containerd's
    /// Task.Create; the core has checked the id). On error nothing of it is left: no mount,
    /// no process, no claim on a shared resource.
    async fn create(&self, req: &CreateTaskRequest) -> Result<Created>;
}

/// One container of a [`Sandbox`], from its create to its delete.
#[async_trait]
pub trait SandboxContainer: Send + Sync + 'static {
    /// Lets the created init run its workload.
    async fn start(&self) -> Result<()>;
    /// Starts `process` (already confined to the init's privileges) in the running container.
    async fn exec(
        &self,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        stdio: &StdioPaths,
    ) -> Result<Started>;
    /// Signals every process of the container.
    async fn kill_all(&self, signal: u32) -> Result<()>;
    async fn pause(&self) -> Result<()>;
    async fn resume(&self) -> Result<()>;
    /// Applies new limits (an OCI LinuxResources, checked against the policy by the core).
    async fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()>;
    /// The container's metrics, as containerd's cgroups v1 or v2 `Metrics` type.
    async fn stats(&self) -> Result<Any>;
    /// The pids of every process of the container.
    async fn pids(&self) -> Result<Vec<u32>>;
    /// OOM kills counted so far; None when the container's memory is not watched (yet).
    fn oom_kills(&self) -> Option<u64>;
    /// Returns at the next notice that the OOM count may have changed; an error when no
    /// notice will come (no memory controller, or it could not be watched).
    async fn oom_notice(&self) -> std::io::Result<()>;
    /// Removes what the container leaves once all its processes are gone (state, cgroup,
    /// rootfs mount). Safe to repeat.
    async fn clean_up_stopped(&self) -> Result<CleanupTimes>;
    /// Gives back what the container held of the pod's or the node's (Task.Delete, after
    /// [`SandboxContainer::clean_up_stopped`]).
    async fn release(&self);
}

/// The bundle's OCI spec (`config.json`), with errors that name the file.
pub async fn read_spec(path: &std::path::Path) -> Result<oci_spec::runtime::Spec> {
    let raw = tokio::fs::read(path).await.map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read the bundle's OCI spec {}: {e}",
            path.display()
        ))
    })?;
    serde_json::from_slice(&raw).map_err(|e| {
        Error::InvalidArgument(format!(
            "the bundle's OCI spec {} is malformed: {e}; fix config.json",
            path.display()
        ))
    })
}

/// Mounts containerd's rootfs `mounts` on `target`, in order; on a failure, what was mounted
/// is unmounted again. Whether anything was mounted.
pub async fn mount_rootfs(
    mounts: &[containerd_shim::protos::api::Mount],
    target: &std::path::Path,
) -> Result<bool> {
    let mut mounted = false;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, target).await {
            if mounted {
                crate::process::unmount(target);
            }
            return Err(Error::InvalidArgument(format!(
                "cannot mount the container's rootfs ({} {}): {e}",
                m.type_, m.source
            )));
        }
        mounted = true;
    }
    Ok(mounted)
}
