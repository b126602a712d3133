//! The VM sandbox (handler `airlock-vm`, binary `containerd-shim-airlock-vm-v2`): a pod's
//! containers run in one VM of the pod's own, booted by QEMU with Airlock's guest
//! (`airlock-vm`, `airlock-agent`). It fails closed: without an accelerator the node config
//! allows, a create fails and says what is missing; it never runs a container on the host.
//!
//! | module | job |
//! | --- | --- |
//! | `pod.rs` | the pod's VM: boot on the first create, its share, the router of the agent's messages, shutdown |
//! | `network.rs` | the pod's network namespace attached (taps and redirects) through `airlock-runtime` |
//! | `hostcg.rs` | the host cgroup of the VM's processes (QEMU, virtiofsd): the guest's RAM plus the VMM's allowance, a pids limit |
//! | `container.rs` | one container and its processes in the guest: start, exec, signals, update, cleanup |
//! | `io.rs` | a guest process's stdio on the host: output into the core's pipes or pty, input relayed, terminal size |
//! | `confine.rs` | the spec, as the policy left it, lowered onto the guest's confinement and cgroup limits |
//! | `share.rs` | what the pod's virtio-fs share holds of each container: its rootfs and its bind mounts' sources |
//!
//! The policy is applied to the spec as a ceiling (a container that asks for more than its
//! policy allows is refused, and the report is written beside the spec). Inside the guest the
//! agent confines each process as the process sandbox does on the host: its own mount, PID,
//! UTS and IPC namespaces, a guest cgroup with the container's limits, the spec's user and
//! capabilities, no_new_privs and the same seccomp programs (`agent/src/confine.rs`). Pause
//! and resume freeze that cgroup, Update rewrites its limits, Stats and Pids read it, and the
//! agent reports its OOM kills before the exits they cause. stdin and terminals go through
//! the agent too (`io.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tracing::info;

use crate::error::{Error, Result};
use crate::process::runtime::Runtime;
use crate::process::unmount;
use crate::process::userns::RangeAllocator;
use crate::sandbox::{Created, Sandbox};
use crate::stdio::StdioPaths;
use airlock_vm::RunAs;

mod confine;
mod container;
mod hostcg;
mod io;
mod network;
mod pod;
mod share;

use container::{Command, VmContainer};
use hostcg::HostCgroup;
use pod::PodVm;

/// The shim binary's name that selects this sandbox.
pub const VM_SHIM_BINARY: &str = "containerd-shim-airlock-vm-v2";
/// Where pods' VM directories go (short: their unix socket paths must fit in 108 bytes).
const VM_ROOT: &str = "/run/airlock/vm";

#[derive(Clone)]
pub struct VmSandbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// containerd's namespace (the user id range's members are `<namespace>/<id>`).
    namespace: String,
    /// The VMM's uid: the first id of a range of the node's user id pool, held by the pod's
    /// containers (`shim delete` releases a crashed shim's, as for the process sandbox).
    ids: RangeAllocator,
    /// `airlock-runtime`, which attaches the pod's network.
    runtime: Runtime,
    config: Arc<crate::config::ConfigCache>,
    pod: tokio::sync::Mutex<Option<Arc<PodVm>>>,
    containers: tokio::sync::Mutex<HashSet<String>>,
}

impl VmSandbox {
    pub fn new(namespace: String, runtime: Runtime) -> Self {
        VmSandbox {
            inner: Arc::new(Inner {
                namespace,
                ids: RangeAllocator::default(),
                runtime,
                config: Default::default(),
                pod: Default::default(),
                containers: Default::default(),
            }),
        }
    }

    /// The pod's VM, booted on first use, with the network of the first container's network
    /// namespace (the CRI sandbox's, made by CNI) where it names one.
    async fn pod(
        &self,
        config: &airlock_policies::Loaded,
        first_id: &str,
        netns: Option<PathBuf>,
        cgroup: PathBuf,
        run_as: RunAs,
    ) -> Result<Arc<PodVm>> {
        let mut pod = self.inner.pod.lock().await;
        if let Some(p) = pod.as_ref() {
            return Ok(p.clone());
        }
        let vm = config.config.vm.clone();
        let accelerator =
            airlock_vm::accel::select(vm.accelerator, &airlock_vm::accel::Host::probe())
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        // One directory per shim (one pod), named short: the shim's pid (in hex) first, so
        // that a cleanup after a killed shim knows whether its owner is gone.
        let dir = Path::new(VM_ROOT).join(format!(
            "{:x}-{}",
            std::process::id(),
            &first_id[..first_id.len().min(12)]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create the VM's directory", e))?;
        let d = dir.clone();
        let runtime = self.inner.runtime.clone();
        let booted = tokio::task::spawn_blocking(move || {
            let cg = HostCgroup::create(&cgroup, vm.memory_mib)?;
            let listed: Vec<String> = cg.made().iter().map(|p| p.display().to_string()).collect();
            let _ = std::fs::write(d.join(pod::CGROUP_FILE), listed.join("\n"));
            let network = match netns {
                Some(ns) => match network::attach(&runtime, &ns) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        cg.remove();
                        return Err(e);
                    }
                },
                None => None,
            };
            PodVm::boot(vm, accelerator, d, network, run_as, cg)
        })
        .await
        .map_err(|e| Error::Runtime(format!("VM boot thread: {e}")))?;
        let booted = match booted {
            Ok(b) => Arc::new(b),
            Err(e) => {
                pod::remove_dir(&dir);
                return Err(e);
            }
        };
        *pod = Some(booted.clone());
        Ok(booted)
    }

    /// The VMM's uid and gid: the pod's range of the node's id pool, with container `id` as
    /// one of its holders.
    fn hold_ids(&self, id: &str) -> Result<RunAs> {
        let pod = format!("{}/vm-{:x}", self.inner.namespace, std::process::id());
        let member = crate::process::userns_member(&self.inner.namespace, id);
        let first = self
            .inner
            .ids
            .acquire(&pod, &member, 1)
            .map_err(|e| Error::FailedPrecondition(format!("a uid for the pod's VMM: {e}")))?;
        Ok(RunAs {
            uid: first,
            gid: first,
        })
    }

    /// Forgets container `id`; the pod's VM goes with its last container.
    async fn release(&self, id: &str) {
        let member = crate::process::userns_member(&self.inner.namespace, id);
        if let Err(e) = self.inner.ids.release(&member) {
            tracing::warn!("release the VMM's uid: {e}");
        }
        let mut containers = self.inner.containers.lock().await;
        containers.remove(id);
        if !containers.is_empty() {
            return;
        }
        if let Some(pod) = self.inner.pod.lock().await.take() {
            let _ = tokio::task::spawn_blocking(move || pod.shutdown()).await;
            info!("the pod's VM is shut down (its last container was deleted)");
        }
    }

    async fn create_checked(&self, req: &CreateTaskRequest) -> Result<Created> {
        let bundle = PathBuf::from(&req.bundle);
        let config_path = crate::config::config_path_from_options(req.options.as_ref())?;
        let config = self.inner.config.get(config_path.as_deref())?;
        let mut spec: Spec = crate::sandbox::read_spec(&bundle.join("config.json")).await?;
        // The policy is a ceiling here too: what it refuses is refused.
        let policy = config.select(spec.annotations().as_ref())?;
        // Only the first container's network namespace reaches the guest (the pod's, made by
        // CNI; the node's own is refused, since its interfaces would be redirected into the
        // VM). The rest are the guest's: a path in them (a pod's containers joining the
        // sandbox's namespaces, by a pid that is the guest's) names nothing on the host.
        let first = self.inner.pod.lock().await.is_none();
        let report = policy.apply_on_node(&mut spec, &|typ, path| {
            first
                && typ == LinuxNamespaceType::Network
                && crate::process::is_node_namespace(typ, path)
        })?;
        let seccomp = confine::seccomp(&spec, policy)?;
        let confine_init = confine::init(&spec, &req.id, seccomp.clone())?;
        let limits = confine::limits(spec.linux().as_ref().and_then(|l| l.resources().as_ref()));
        let process = spec.process().as_ref().ok_or_else(|| {
            Error::InvalidArgument("the spec has no process: nothing to run".into())
        })?;
        let init = Command::of(process)?;
        // The spec as the policy left it, for the execs (held to the init's capabilities)
        // and readers outside the shim; the report beside it.
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise the OCI spec: {e}")))?;
        tokio::fs::write(bundle.join("config.json"), spec_json)
            .await
            .map_err(|e| Error::io("write the bundle's config.json", e))?;
        let _ = tokio::fs::write(
            bundle.join(airlock_policies::REPORT_FILE),
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
        )
        .await;

        let run_as = self.hold_ids(&req.id)?;
        let cgroup = hostcg::path_of(
            spec.linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_deref()),
        );
        let pod = self
            .pod(&config, &req.id, network_namespace(&spec), cgroup, run_as)
            .await?;
        // containerd's snapshot, mounted on the bundle's rootfs; without one (`ctr run
        // --rootfs DIR`), the spec's root path as it is.
        let rootfs = match spec.root().as_ref().map(|r| r.path()) {
            Some(path) if req.rootfs.is_empty() => bundle.join(path),
            _ => bundle.join("rootfs"),
        };
        let mounted = crate::sandbox::mount_rootfs(&req.rootfs, &rootfs).await?;
        let unmount_rootfs = |rootfs: &Path| {
            if mounted {
                unmount(rootfs);
            }
        };
        let shared = pod.dir.join("shared");
        let shared_root = shared.join(&req.id);
        if let Err(e) = share::add(&shared, &req.id, &rootfs, &spec) {
            unmount_rootfs(&rootfs);
            return Err(e);
        }
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let routed = match container::set_limits(&pod, &req.id, limits).await {
            Ok(()) => VmContainer::init_process(&pod, &req.id, &paths, &bundle),
            Err(e) => Err(e),
        };
        let (init_process, copier, console) = match routed {
            Ok(v) => v,
            Err(e) => {
                let _ = container::remove_cgroup(&pod, &req.id).await;
                share::remove(&shared, &req.id);
                unmount_rootfs(&rootfs);
                return Err(e);
            }
        };
        self.inner.containers.lock().await.insert(req.id.clone());
        info!(policy = %report.policy, enforced = %report.enforced.join("; "), "policy applied (microVM)");
        Ok(Created {
            container: Arc::new(VmContainer {
                sandbox: self.clone(),
                pod: pod.clone(),
                id: req.id.clone(),
                bundle,
                shared_root,
                init,
                confine_init,
                seccomp,
                init_process: init_process.clone(),
                oom: pod.oom_count(&req.id),
            }),
            init: init_process,
            copier,
            console,
            update_rules: policy.update_rules(),
        })
    }
}

/// The network namespace the spec joins, where it names one (a CRI pod's, made by CNI);
/// a new namespace or none gives the VM no NIC.
fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

#[async_trait]
impl Sandbox for VmSandbox {
    fn warm_up(&self) {
        let cache = self.inner.config.clone();
        tokio::task::spawn_blocking(move || {
            let _ = cache.get(None);
        });
    }

    async fn create(&self, req: &CreateTaskRequest) -> Result<Created> {
        let r = self.create_checked(req).await;
        if r.is_err() {
            if self.inner.containers.lock().await.is_empty() {
                self.release(&req.id).await;
            } else {
                let member = crate::process::userns_member(&self.inner.namespace, &req.id);
                let _ = self.inner.ids.release(&member);
            }
        }
        r
    }
}

/// Whether this shim runs as `containerd-shim-airlock-vm-v2` (the name selects the mode, so
/// containerd 1.6, which does not tell a shim its CRI handler, still gets the VM sandbox).
pub fn selected() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == VM_SHIM_BINARY))
        .unwrap_or(false)
}

/// After a shim that is gone (`shim delete`): unbinds container `id`'s rootfs from its VM's
/// share, and removes the VM directories whose shims are gone (their VMM and virtiofsd died
/// with them: `PR_SET_PDEATHSIG`). Whether anything of `id` was found.
pub fn clean_up_after_shim(id: &str) -> bool {
    let Ok(dirs) = std::fs::read_dir(VM_ROOT) else {
        return false;
    };
    let mut found = false;
    for dir in dirs.flatten().map(|e| e.path()) {
        found |= share::remove(&dir.join("shared"), id);
        let owner = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|pid| u32::from_str_radix(pid, 16).ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            // Its QEMU and virtiofsd died with it; their cgroup stays until removed.
            if let Ok(listed) = std::fs::read_to_string(dir.join(pod::CGROUP_FILE)) {
                let dirs: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
                hostcg::remove_dirs(&dirs);
            }
            pod::remove_dir(&dir);
        }
    }
    found
}

/// Whether process `pid` runs (a zombie does not: a killed shim may not be reaped yet).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}
