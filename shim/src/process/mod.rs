//! The process sandbox: a pod's containers run on this host, created by `airlock-runtime`
//! (youki's libcontainer) in user, pid, mount, IPC, UTS and cgroup namespaces, under the
//! policy's seccomp filters, with no capabilities.
//!
//! | module | job |
//! | --- | --- |
//! | `prepare.rs` | the policy lowered onto the spec, and every node-side edit at Create (network namespace, bind sources, cgroup path, user namespace range, seccomp programs) |
//! | `pod.rs` | the pod's user namespace range and its own mappings |
//! | `create.rs` | rootfs mount, the runtime's create, the init's pidfd and console |
//! | `container.rs` | one container's operations: start, exec, signals, pause, update, stats, cleanup |
//! | `runtime.rs` | `airlock-runtime` as the shim drives it (its command line: `airlock_contract::cli`), and the zygote |
//! | `setup_limit.rs` | the time limit of an exec's setup, and the kill of a held one |
//! | `pidfd.rs` | a container process as the core's `Process`: pidfd, signal, exit status |
//! | `cgroup.rs`, `oom.rs` | the container's cgroup: stats, pids, OOM kills and their notices |
//! | `userns.rs` | the node's registry of per-pod host id ranges |
//! | `netns.rs` | a pod network namespace made outside the container's user namespace (sysfs, sysctls, `lo`) |
//! | `bind_sources.rs` | bind sources the container's root cannot reach, bound into the bundle |
//! | `seccomp_cache.rs` | the node's cache of compiled seccomp programs |
//!
//! The seccomp filters are compiled in `prepare.rs` (through the node's cache,
//! `seccomp_cache.rs`) and installed by the runtime (`runtime/src/executor.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use tracing::{info, warn};

use crate::error::Result;
use crate::process::runtime::Runtime;
use crate::process::seccomp_cache::SeccompCache;
use crate::process::userns::RangeAllocator;
use crate::sandbox::{Created, Sandbox};

pub mod bind_sources;
pub mod cgroup;
mod container;
mod create;
pub mod netns;
pub mod oom;
pub mod pidfd;
mod pod;
mod prepare;
pub mod runtime;
pub mod seccomp_cache;
pub mod setup_limit;
pub mod userns;

pub use container::ProcessContainer;
pub(crate) use prepare::is_node_namespace;

/// The process sandbox of one shim (one pod).
pub struct ProcessSandbox {
    namespace: String,
    runtime: Runtime,
    config: Arc<crate::config::ConfigCache>,
    /// Seccomp programs, compiled once per node (see seccomp_cache.rs).
    seccomp: SeccompCache,
    /// The node's per-pod user namespace ranges.
    userns: RangeAllocator,
    /// The sysfs mounted for a pod network namespace (by its identity), for its later
    /// containers to bind.
    pod_sysfs: std::sync::Mutex<HashMap<(u64, u64), PathBuf>>,
    /// The init pid of each of this shim's containers: a container that joins one of their
    /// namespaces joins the pod, and its user namespace range.
    inits: Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

impl ProcessSandbox {
    pub fn new(namespace: String, runtime: Runtime) -> Self {
        ProcessSandbox {
            namespace,
            runtime,
            config: Default::default(),
            seccomp: SeccompCache::new(crate::process::seccomp_cache::DEFAULT_DIR),
            userns: RangeAllocator::default(),
            pod_sysfs: Default::default(),
            inits: Default::default(),
        }
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    /// Loads the node config (the default path, which is also what the containerd drop-in
    /// names) on a blocking thread, so that the pod's first Create, 2-4 ms away when a shim
    /// starts, finds it parsed (0.25 ms of a create). Errors are left for the Create to report.
    fn warm_up(&self) {
        let cache = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let _ = cache.get(None);
        });
    }

    async fn create(&self, req: &CreateTaskRequest) -> Result<Created> {
        let r = self.create_prepared(req).await;
        if r.is_err() {
            release_userns(&self.userns, &self.namespace, &req.id).await;
            crate::process::bind_sources::cleanup(Path::new(&req.bundle));
        }
        r
    }
}

/// Gives `id`'s claim on its pod's user namespace range back (no-op without one).
async fn release_userns(userns: &RangeAllocator, namespace: &str, id: &str) {
    let (a, member) = (userns.clone(), userns_member(namespace, id));
    match tokio::task::spawn_blocking(move || a.release(&member)).await {
        Ok(Ok(Some(host))) => info!(host, "user namespace range released (last container)"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => warn!("release user namespace range: {e}"),
        Err(e) => warn!("release user namespace range: {e}"),
    }
}

/// How a container is named among the users of a pod's user namespace range.
pub fn userns_member(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// Lazily unmount the container's rootfs (it may still be busy for a moment): every mount
/// stacked there (an idmapped overlay sits on the one the shim mounted, see
/// `runtime/src/idmap.rs`; so does an idmapped clone the runtime could not remove in a crash).
/// Whether anything was mounted there.
pub fn unmount(target: &Path) -> bool {
    let mut unmounted = false;
    for _ in 0..4 {
        if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                warn!("unmount {}: {e}", target.display());
            }
            break;
        }
        unmounted = true;
    }
    unmounted
}
