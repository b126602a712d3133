//! One container of the process sandbox: `airlock-runtime` for start (or the init's notify
//! socket), exec, signals to all, pause, update and the cleanup; its cgroup for stats, pids
//! and OOM kills.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use super::create::read_pid;
use super::{release_userns, unmount, ProcessSandbox};
use crate::error::{Error, Result};
use crate::process::cgroup::Cgroup;
use crate::process::oom::{Notifier, OomSource};
use crate::process::pidfd::PidFd;
use crate::process::runtime::Runtime;
use crate::process::userns::RangeAllocator;
use crate::sandbox::{CleanupTimes, SandboxContainer, Started};
use crate::stdio::{self, StdioPaths};

/// How long a failed exec waits for the process it killed.
const REAP_LIMIT: Duration = Duration::from_secs(2);

pub struct ProcessContainer {
    id: String,
    bundle: PathBuf,
    pid: i32,
    runtime: Runtime,
    namespace: String,
    userns: RangeAllocator,
    inits: Arc<std::sync::Mutex<HashMap<String, u32>>>,
    /// The shim mounted the rootfs (or the runtime mounted the idmapped overlay for it).
    rootfs_mounted: bool,
    /// The spec has poststart hooks (the runtime runs them, so it also does the start).
    poststart_hooks: bool,
    /// Found on first use (the OOM watcher, Pids, Stats), never on the start path.
    cgroup: OnceLock<Cgroup>,
    oom: OnceLock<Option<OomSource>>,
    notifier: tokio::sync::Mutex<Option<Notifier>>,
}

impl ProcessContainer {
    pub(super) fn new(
        sandbox: &ProcessSandbox,
        id: &str,
        bundle: PathBuf,
        pid: i32,
        rootfs_mounted: bool,
        poststart_hooks: bool,
    ) -> Self {
        ProcessContainer {
            id: id.to_owned(),
            bundle,
            pid,
            runtime: sandbox.runtime.clone(),
            namespace: sandbox.namespace.clone(),
            userns: sandbox.userns.clone(),
            inits: sandbox.inits.clone(),
            rootfs_mounted,
            poststart_hooks,
            cgroup: OnceLock::new(),
            oom: OnceLock::new(),
            notifier: tokio::sync::Mutex::new(None),
        }
    }

    fn cgroup(&self) -> Result<&Cgroup> {
        if let Some(c) = self.cgroup.get() {
            return Ok(c);
        }
        let cg = Cgroup::of_pid(self.pid).map_err(|_| {
            Error::FailedPrecondition(format!(
                "container {} has exited; its cgroup is gone",
                self.id
            ))
        })?;
        Ok(self.cgroup.get_or_init(|| cg))
    }

    /// The counter of the container's memory cgroup, found once.
    fn oom_source(&self) -> Option<&OomSource> {
        self.oom
            .get_or_init(|| self.cgroup().ok().and_then(OomSource::of))
            .as_ref()
    }
}

#[async_trait]
impl SandboxContainer for ProcessContainer {
    async fn start(&self) -> Result<()> {
        self.runtime.start(&self.id, self.poststart_hooks).await
    }

    async fn exec(
        &self,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        stdio: &StdioPaths,
    ) -> Result<Started> {
        let spec = self.bundle.join(format!("exec-{exec_id}.json"));
        let raw = serde_json::to_vec(process)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise exec spec: {e}")))?;
        tokio::fs::write(&spec, raw)
            .await
            .map_err(|e| Error::io(format!("write {}", spec.display()), e))?;
        let (child, mut copier) = stdio::setup(stdio, &self.bundle)?;
        let pid_file = self.bundle.join(format!("exec-{exec_id}.pid"));
        let log = self.bundle.join(format!("exec-{exec_id}.log"));
        let r = self
            .runtime
            .exec(&self.id, &spec, &pid_file, &log, child)
            .await;
        let _ = tokio::fs::remove_file(&spec).await;
        if let Err(err) = r {
            let _ = tokio::fs::remove_file(&pid_file).await;
            return Err(err);
        }
        let pid = read_pid(&pid_file).await;
        let _ = tokio::fs::remove_file(&pid_file).await;
        let pid = pid?;
        let pidfd =
            PidFd::open(pid).map_err(|err| Error::io(format!("open pidfd of {pid}"), err))?;
        let console = match copier.connect_console().await {
            Ok(console) => console,
            Err(err) => {
                let _ = pidfd.signal(libc::SIGKILL);
                // Our child now (we are its subreaper): reap it.
                let _ = tokio::time::timeout(REAP_LIMIT, pidfd.wait()).await;
                return Err(err);
            }
        };
        Ok(Started {
            process: Arc::new(pidfd),
            copier,
            console,
        })
    }

    async fn kill_all(&self, signal: u32) -> Result<()> {
        self.runtime.kill(&self.id, signal, true).await
    }

    async fn pause(&self) -> Result<()> {
        self.runtime.pause(&self.id).await
    }

    async fn resume(&self) -> Result<()> {
        self.runtime.resume(&self.id).await
    }

    async fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let raw = serde_json::to_vec(resources)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise the resources: {e}")))?;
        let file = self.bundle.join("update-resources.json");
        tokio::fs::write(&file, raw)
            .await
            .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        let r = self.runtime.update(&self.id, &file).await;
        let _ = tokio::fs::remove_file(&file).await;
        r
    }

    async fn stats(&self) -> Result<Any> {
        self.cgroup()?.metrics()
    }

    async fn pids(&self) -> Result<Vec<u32>> {
        self.cgroup()?.procs()
    }

    fn oom_kills(&self) -> Option<u64> {
        self.oom.get()?.as_ref().map(OomSource::kills)
    }

    async fn oom_notice(&self) -> std::io::Result<()> {
        let mut notifier = self.notifier.lock().await;
        if notifier.is_none() {
            let source = self.oom_source().ok_or(std::io::ErrorKind::Unsupported)?;
            *notifier = Some(source.notifications()?);
        }
        notifier.as_mut().expect("set above").next().await
    }

    /// Removes the container's cgroup and runtime state ([`Runtime::delete_stopped`]), its
    /// rootfs mount and its bind sources. The unmount (~1 ms, the overlay syncs its upper
    /// filesystem) runs on a blocking thread, off the shim's event loop.
    async fn clean_up_stopped(&self) -> Result<CleanupTimes> {
        let t0 = Instant::now();
        self.runtime.delete_stopped(&self.id).await?;
        let state_us = t0.elapsed().as_micros() as u64;
        let t1 = Instant::now();
        let (bundle, mounted) = (self.bundle.clone(), self.rootfs_mounted);
        let _ = tokio::task::spawn_blocking(move || {
            if mounted {
                unmount(&bundle.join("rootfs"));
            }
            crate::process::bind_sources::cleanup(&bundle);
        })
        .await;
        Ok(CleanupTimes {
            state_us,
            unmount_us: t1.elapsed().as_micros() as u64,
        })
    }

    async fn release(&self) {
        self.inits.lock().unwrap().remove(&self.id);
        release_userns(&self.userns, &self.namespace, &self.id).await;
    }
}
