//! The containerd Task service: translates Task API calls into `airlock-runtime` steps.

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
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::bind_sources;
use crate::cgroup::Cgroup;
use crate::console::Console;
use crate::error::{Error, Result};
use crate::events::{publish, TaskEvent};
use crate::lifecycle::{Check, Phase, Subject, Transition};
use crate::oom::{OomCounter, OomSource};
use crate::pidfd::{ExitInfo, PidFd};
use crate::runtime::{IdmapRootfs, Runtime};
use crate::seccomp_cache::SeccompCache;
use crate::stdio::{self, Copier, StdioPaths};
use crate::trim::IdleTrim;
use crate::userns::RangeAllocator;
use airlock_policies::IdRange;

/// How long an exit waits for the container's output to be copied out.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// An extra process started in a container (`ctr task exec`).
struct Exec {
    id: String,
    /// The OCI Process JSON handed to the runtime.
    spec: PathBuf,
    stdio: StdioPaths,
    pidfd: std::sync::OnceLock<Arc<PidFd>>,
    phase: Mutex<Phase>,
    exited_tx: watch::Sender<Option<ExitInfo>>,
    exited: watch::Receiver<Option<ExitInfo>>,
    copier: Arc<Mutex<Copier>>,
    /// The pty master, once started with a terminal.
    console: std::sync::OnceLock<Arc<Console>>,
}

impl Exec {
    fn pid(&self) -> u32 {
        self.pidfd.get().map(|p| p.pid() as u32).unwrap_or(0)
    }
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
    /// The pty master of an init created with a terminal.
    console: Option<Arc<Console>>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// Found on first use (the OOM watcher, Pids, Stats), never on the start path.
    cgroup: std::sync::OnceLock<Cgroup>,
    /// OOM kills reported; held while a TaskOOM is being published, so the exit path
    /// publishes TaskExit only after it.
    oom: Mutex<OomCounter>,
    /// The policy's ceilings, checked on every Task.Update.
    update_rules: airlock_policies::UpdateRules,
    /// See [`Applied::poststart_hooks`].
    poststart_hooks: bool,
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

/// How long the parts of a stopped container's cleanup took, in microseconds.
#[derive(Debug, Clone, Copy)]
struct CleanupTimes {
    state_us: u64,
    unmount_us: u64,
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
        self.pidfd.pid() as u32
    }

    fn cgroup(&self) -> Result<&Cgroup> {
        if let Some(c) = self.cgroup.get() {
            return Ok(c);
        }
        let cg = Cgroup::of_pid(self.pidfd.pid()).map_err(|_| {
            Error::FailedPrecondition(format!(
                "container {} has exited; its cgroup is gone",
                self.id
            ))
        })?;
        Ok(self.cgroup.get_or_init(|| cg))
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

/// Whether the namespace at `path` is the node's own (this shim's or PID 1's), as opposed to
/// a pod's namespace that a container joins. Unknown paths count as the node's: refuse.
fn is_node_namespace(typ: LinuxNamespaceType, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let name = match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        _ => return true,
    };
    let Ok(target) = std::fs::metadata(path) else {
        return true;
    };
    ["/proc/self/ns", "/proc/1/ns"].iter().any(|dir| {
        std::fs::metadata(Path::new(dir).join(name))
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    })
}

/// One shim serves all containers of one pod.
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    runtime: Runtime,
    config: Arc<crate::config::ConfigCache>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Seccomp programs, compiled once per node (see seccomp_cache.rs).
    seccomp: SeccompCache,
    /// The node's per-pod user namespace ranges.
    userns: RangeAllocator,
    /// Returns what a burst of requests freed to the kernel once the shim is idle.
    trim: IdleTrim,
    /// The sysfs mounted for a pod network namespace (by its identity), for its later
    /// containers to bind.
    pod_sysfs: std::sync::Mutex<HashMap<(u64, u64), PathBuf>>,
}

/// What applying the policy produced for the runtime.
struct Applied {
    seccomp: Vec<PathBuf>,
    /// What the policy keeps enforcing on Task.Update.
    update_rules: airlock_policies::UpdateRules,
    /// The policy mapped the container to its pod's host range: idmap the rootfs to it.
    idmap_rootfs: bool,
    /// The spec has poststart hooks (the runtime runs them, so it also does the start).
    poststart_hooks: bool,
    /// A CRI pod sandbox: the pod's app containers come next.
    pod_sandbox: bool,
    /// The runtime makes the container a network namespace of its own (its `lo` starts down).
    new_netns: bool,
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
    ) -> Self {
        TaskService {
            namespace,
            publisher: Arc::new(publisher),
            exit,
            runtime,
            config: Default::default(),
            containers: Mutex::new(HashMap::new()),
            seccomp: SeccompCache::new(crate::seccomp_cache::DEFAULT_DIR),
            userns: RangeAllocator::default(),
            trim: IdleTrim::default(),
            pod_sysfs: Default::default(),
        }
    }

    /// Loads the node config (the default path, which is also what the containerd drop-in
    /// names) on a blocking thread, so that the pod's first Create, 2-4 ms away when a shim
    /// starts, finds it parsed (0.25 ms of a create). Errors are left for the Create to report.
    pub fn warm_config(&self) {
        let cache = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let _ = cache.get(None);
        });
    }

    /// Gives `id`'s claim on its pod's user namespace range back (no-op without one).
    async fn release_userns(&self, id: &str) {
        let (a, member) = (self.userns.clone(), userns_member(&self.namespace, id));
        match tokio::task::spawn_blocking(move || a.release(&member)).await {
            Ok(Ok(Some(host))) => info!(host, "user namespace range released (last container)"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!("release user namespace range: {e}"),
            Err(e) => warn!("release user namespace range: {e}"),
        }
    }

    async fn publish<E: TaskEvent>(&self, topic: &str, event: E) {
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
        debug!(bundle = %req.bundle, "create request");
        validate_id(&req.id)?;
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::InvalidArgument(
                "restoring from a checkpoint is not supported by airlock".into(),
            ));
        }
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let r = self.create_checked(req, t0).await;
        if r.is_err() {
            self.release_userns(&id).await;
            bind_sources::cleanup(&bundle);
        }
        r
    }

    /// [`Self::do_create`] once the id is known to be new here: on error, the caller gives
    /// back the user namespace range claim.
    async fn create_checked(
        &self,
        req: CreateTaskRequest,
        t0: Instant,
    ) -> Result<CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        // Runs while the policy is applied; the rootfs is mounted only after it is done.
        let stale_work = tokio::task::spawn_blocking({
            let rootfs = req.rootfs.clone();
            move || remove_stale_overlay_work(&rootfs)
        });
        let applied = self
            .apply_policy(&bundle, &req.id, req.terminal, req.options.as_ref())
            .await;
        let _ = stale_work.await;
        let Applied {
            seccomp,
            idmap_rootfs,
            update_rules,
            poststart_hooks,
            pod_sandbox,
            new_netns,
        } = applied?;
        let t_policy = t0.elapsed();

        let rootfs = bundle.join("rootfs");
        // containerd >= 2.0 asks for idmapped layers of a user-namespaced pod with
        // uidmap=/gidmap= mount options, which mount(2) does not know: the runtime idmaps
        // them to the container's user namespace instead.
        let (mounts, idmapped_layers, root_gid) = strip_idmap_options(&req.rootfs);
        if let Some(gid) = root_gid {
            open_bundle_to(&bundle, gid)?;
        }
        let idmap_rootfs = idmap_rootfs || idmapped_layers;
        // One overlay (containerd's snapshot) that is to be idmapped: the runtime mounts it
        // once, over idmapped layers, instead of the shim mounting it and the runtime mounting
        // the idmapped one on top (one mount less here, one sync and unmount less on delete).
        // Unmounted as if the shim had mounted it.
        let overlay = match mounts.as_slice() {
            [m] if idmap_rootfs && m.type_ == "overlay" && m.target.is_empty() => {
                Some(m.options.join(","))
            }
            _ => None,
        };
        let mut rootfs_mounted = overlay.is_some();
        for m in mounts.iter().filter(|_| overlay.is_none()) {
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
        let (child, mut copier) = stdio::setup(&paths, &bundle).map_err(fail)?;
        let pid_file = bundle.join("init.pid");
        if let Err(e) = self
            .runtime
            .create(
                &req.id,
                &bundle,
                &pid_file,
                &seccomp,
                match (idmap_rootfs, overlay.as_deref()) {
                    (false, _) => IdmapRootfs::No,
                    (true, None) => IdmapRootfs::Mounted,
                    (true, Some(options)) => IdmapRootfs::Overlay(options),
                },
                child,
            )
            .await
        {
            drop(copier);
            // The runtime cleans up after itself; make sure, since a leak outlives us.
            let _ = self.runtime.delete(&req.id, true).await;
            return Err(fail(e));
        }
        let t_runtime = t0.elapsed();
        if pod_sandbox {
            // The app containers' creates follow within milliseconds when their images are on
            // the node: a runtime started now is ready for the first. Off this reply's path.
            let runtime = self.runtime.clone();
            tokio::spawn(async move { runtime.prestart() });
        }
        let pidfd = match read_pid(&pid_file).await.and_then(|pid| {
            PidFd::open(pid).map_err(|e| Error::io(format!("open pidfd of {pid}"), e))
        }) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = self.runtime.delete(&req.id, true).await;
                return Err(fail(e));
            }
        };
        if new_netns {
            let pid = pidfd.pid();
            let up = tokio::task::spawn_blocking(move || crate::netns::loopback_up(pid))
                .await
                .map_err(|e| Error::Runtime(format!("loopback thread: {e}")))
                .and_then(|r| r);
            if let Err(e) = up {
                drop(copier);
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = self.runtime.delete(&req.id, true).await;
                let _ = tokio::time::timeout(DRAIN_LIMIT, pidfd.wait()).await;
                return Err(fail(e));
            }
        }
        let console = match copier.connect_console().await {
            Ok(c) => c,
            Err(e) => {
                drop(copier);
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = self.runtime.delete(&req.id, true).await;
                // The init is our child (we are its subreaper): reap it.
                let _ = tokio::time::timeout(DRAIN_LIMIT, pidfd.wait()).await;
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
            console,
            execs: Mutex::new(HashMap::new()),
            cgroup: std::sync::OnceLock::new(),
            oom: Mutex::new(OomCounter::default()),
            update_rules,
            poststart_hooks,
            cleanup: Mutex::new(Cleanup::NotStarted),
        });
        self.containers
            .lock()
            .await
            .insert(req.id.clone(), container.clone());
        self.spawn_exit_watcher(container.clone(), tx);
        self.spawn_oom_watcher(container.clone());

        let pid = container.pid();
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
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
            },
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

    /// Resolve the container's policy (node config from the runtime options' `ConfigPath` or
    /// the default path, cached per shim; handler default or pod annotation) and write it
    /// into the bundle's config.json; returns the files of the seccomp programs to install
    /// (the pod's own profile first, the policy's last; from the node's seccomp cache).
    async fn apply_policy(
        &self,
        bundle: &Path,
        id: &str,
        terminal: bool,
        options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
    ) -> Result<Applied> {
        let t0 = Instant::now();
        let config_path = crate::config::config_path_from_options(options)?;
        let config = self.config.get(config_path.as_deref())?;
        let config_us = t0.elapsed().as_micros() as u64;
        let path = bundle.join("config.json");
        let raw = tokio::fs::read(&path).await.map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot read the bundle's OCI spec {}: {e}",
                path.display()
            ))
        })?;
        let t_read = t0.elapsed();
        let mut spec: Spec = serde_json::from_slice(&raw).map_err(|e| {
            Error::InvalidArgument(format!(
                "the bundle's OCI spec {} is malformed: {e}; fix config.json",
                path.display()
            ))
        })?;
        check_terminal(
            spec.process().as_ref().and_then(|p| p.terminal()),
            terminal,
            "the container's spec",
        )?;
        crate::config::check_handler(config.handler(spec.annotations().as_ref()))?;
        let policy = config.select(spec.annotations().as_ref())?;
        // A CRI app container joins its sandbox's user namespace when the sandbox got one
        // from the policy (the pod then shares one user namespace and one range).
        let joins_pod = if policy.user_namespace.enabled {
            self.pod_user_namespace(&spec).await
        } else {
            None
        };
        let range = if let Some(userns) = &joins_pod {
            airlock_policies::set_namespace(&mut spec, LinuxNamespaceType::User, Some(userns));
            // Registers the container as a user of its pod's range (the bundle's group and
            // the range's lifetime); the same range the sandbox was mapped to.
            Some(
                self.pod_range(&spec, id, policy.user_namespace.size)
                    .await?,
            )
        } else {
            match policy.user_namespace_range_needed(&spec) {
                Some(size) => Some(self.pod_range(&spec, id, size).await?),
                None if policy.user_namespace.enabled => {
                    self.claim_pod_mappings(&spec, id).await?;
                    None
                }
                None => None,
            }
        };
        let t_range = t0.elapsed();
        let mut enforced = policy.apply_in_pod(&mut spec, &is_node_namespace, range)?;
        if let Some(line) = drop_memfd_noexec_without_kernel_support(&mut spec) {
            enforced.push(line);
        }
        let t_apply = t0.elapsed();
        if let Some(netns) = crate::netns::foreign_network_namespace(&spec) {
            // A pod network namespace made outside the container's user namespace: the shim
            // mounts its sysfs and writes its sysctls (see netns.rs).
            let t = Instant::now();
            let sysfs = crate::netns::sysfs_path(bundle);
            let sysfs = crate::netns::bind_sysfs_from(&mut spec, &sysfs).then_some(sysfs);
            let sysctls = crate::netns::take_net_sysctls(&mut spec);
            let identity = crate::netns::identity(&netns);
            // A later container of the pod, with no sysctls to write: bind the sysfs mounted
            // for an earlier one (it fails once that container is deleted).
            let prepared = match (&sysfs, sysctls.is_empty(), identity) {
                (Some(target), true, Some(key)) => {
                    let earlier = self.pod_sysfs.lock().unwrap().get(&key).cloned();
                    earlier.is_some_and(|source| {
                        crate::netns::bind_prepared(&source, target)
                            .inspect_err(|e| debug!("mount a new sysfs: {e}"))
                            .is_ok()
                    })
                }
                _ => false,
            };
            if !prepared && (sysfs.is_some() || !sysctls.is_empty()) {
                let (n, f, set) = (netns.clone(), sysfs.clone(), sysctls.clone());
                let r = tokio::task::spawn_blocking(move || {
                    crate::netns::prepare_in(&n, f.as_deref(), &set)
                })
                .await
                .map_err(|e| Error::Runtime(format!("network namespace thread: {e}")))
                .and_then(|r| r);
                if let Err(e) = r {
                    crate::bind_sources::cleanup(bundle);
                    return Err(e);
                }
                if let (Some(path), Some(key)) = (&sysfs, identity) {
                    self.pod_sysfs.lock().unwrap().insert(key, path.clone());
                }
            }
            if sysfs.is_some() || !sysctls.is_empty() {
                enforced.push(format!(
                    "pod network namespace: /sys mounted for it by the shim{}",
                    if sysctls.is_empty() {
                        String::new()
                    } else {
                        format!(", sysctls {sysctls:?} set by the shim")
                    }
                ));
                info!(
                    netns = %netns.display(),
                    sysfs_of_an_earlier_container = prepared,
                    elapsed_us = t.elapsed().as_micros() as u64,
                    "pod network namespace prepared (sysfs, net sysctls)"
                );
            }
        }
        for line in enforced.iter().filter(|l| l.starts_with("clamped:")) {
            warn!(policy = %policy.name, "{line}: the container asked for more than its policy allows (on_excess = \"clamp\")");
        }
        info!(
            policy = %policy.name,
            handler = %config.handler(spec.annotations().as_ref()),
            config = %config.file.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
            config_us,
            enforced = %enforced.join("; "),
            "policy applied"
        );
        if let Some(r) = range {
            bind_sources::check_bundle_reachable(bundle, r.host_uid, r.host_gid)
                .map_err(Error::FailedPrecondition)?;
            absolute_cgroups_path(&mut spec, &self.namespace, id);
            open_bundle_to(bundle, r.host_gid)?;
        }
        record_userns_range(&mut spec, range.map(|r| r.host_uid));
        let rebound = bind_sources::expose(&mut spec, bundle)
            .map_err(|e| Error::io("prepare the container's bind mounts", e))?;
        if rebound > 0 {
            info!(
                rebound,
                "bind sources the container's root cannot reach, bound into the bundle"
            );
        }

        let t_binds = t0.elapsed();
        // Keyed by what is compiled (not the policy's name: node configs can differ).
        let mut files: Vec<PathBuf> = Vec::new();
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            let key = serde_json::to_string(profile).unwrap_or_default();
            let pod = self.seccomp.programs(
                &format!("pod profile {key}"),
                || airlock_policies::compile_pod_profile(profile).map_err(Error::InvalidArgument),
                bundle,
            )?;
            info!(
                filters = pod.len(),
                "the pod's own seccomp profile applies too"
            );
            files.extend(pod.iter().cloned());
        }
        let key = serde_json::to_string(&policy.seccomp).unwrap_or_default();
        let own = self.seccomp.programs(
            &format!("policy {key}"),
            || Ok(policy.compile_seccomp()?.into_iter().collect()),
            bundle,
        )?;
        files.extend(own.iter().cloned());

        let t_seccomp = t0.elapsed();
        let out = serde_json::to_vec(&spec)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise the OCI spec: {e}")))?;
        tokio::fs::write(&path, out)
            .await
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        let us = |d: Duration| d.as_micros() as u64;
        debug!(
            read_us = us(t_read),
            range_us = us(t_range),
            apply_us = us(t_apply),
            netns_binds_us = us(t_binds),
            seccomp_us = us(t_seccomp),
            written_us = us(t0.elapsed()),
            "policy steps (cumulative)"
        );
        Ok(Applied {
            seccomp: files,
            idmap_rootfs: range.is_some(),
            update_rules: policy.update_rules(),
            poststart_hooks: spec
                .hooks()
                .as_ref()
                .and_then(|h| h.poststart().as_ref())
                .is_some_and(|h| !h.is_empty()),
            new_netns: crate::netns::namespace_path(&spec, LinuxNamespaceType::Network)
                == Some(None),
            pod_sandbox: spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get(crate::shim::CONTAINER_TYPE_ANNOTATION))
                .is_some_and(|t| t == "sandbox"),
        })
    }

    /// The user namespace of this pod's sandbox, when `spec` has none of its own and joins
    /// namespaces of one of this shim's running containers by `/proc/<pid>/ns/...` (CRI's app
    /// containers join their sandbox's network, IPC and UTS namespaces that way) and that
    /// container runs in a user namespace other than the node's. Only this shim's own
    /// containers count: they are the pod's, so a container never joins another pod's range.
    async fn pod_user_namespace(&self, spec: &Spec) -> Option<PathBuf> {
        let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
        if namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
        {
            return None;
        }
        let pids: Vec<u32> = namespaces
            .iter()
            .filter_map(|n| n.path().as_ref())
            .filter_map(|p| {
                let rest = p.strip_prefix("/proc").ok()?;
                let mut parts = rest.components();
                let pid = parts.next()?.as_os_str().to_str()?.parse::<u32>().ok()?;
                (parts.next()?.as_os_str() == "ns").then_some(pid)
            })
            .collect();
        if pids.is_empty() {
            return None;
        }
        let ours = self
            .containers
            .lock()
            .await
            .values()
            .any(|c| pids.contains(&c.pid()));
        let pid = pids[0];
        if !ours || pids.iter().any(|p| *p != pid) {
            return None;
        }
        let userns = PathBuf::from(format!("/proc/{pid}/ns/user"));
        (!is_node_namespace(LinuxNamespaceType::User, &userns)).then_some(userns)
    }

    /// The host id range of `spec`'s pod (its CRI sandbox id, else the container itself),
    /// allocated on first use; records `id` as one of its users.
    async fn pod_range(&self, spec: &Spec, id: &str, size: u32) -> Result<IdRange> {
        let t = Instant::now();
        let key = self.pod_key(spec, id);
        let (a, member) = (self.userns.clone(), userns_member(&self.namespace, id));
        let host = tokio::task::spawn_blocking(move || a.acquire(&key, &member, size))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("user namespace range: {e}")))?
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        info!(
            host,
            size,
            elapsed_us = t.elapsed().as_micros() as u64,
            "user namespace range of the pod"
        );
        Ok(IdRange {
            host_uid: host,
            host_gid: host,
            size,
        })
    }

    /// The node-wide key of the container's pod in the user namespace registry:
    /// `<namespace>/<sandbox id>` for a CRI pod's containers, `<namespace>/<id>` for a container
    /// without a pod (`ctr run`).
    fn pod_key(&self, spec: &Spec, id: &str) -> String {
        let pod = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::shim::SANDBOX_ID_ANNOTATION))
            .filter(|s| !s.is_empty())
            .map_or(id, String::as_str);
        format!("{}/{pod}", self.namespace)
    }

    /// Checks the pod's own uid/gid mappings (`ctr run --uidmap`, CRI `hostUsers: false`) and
    /// registers them node-wide, so no two pods share host ids and none covers the node's
    /// users or Airlock's pool ([`crate::userns::pod_supplied_ranges`]). Released with the
    /// container, like a pool range.
    async fn claim_pod_mappings(&self, spec: &Spec, id: &str) -> Result<()> {
        let ranges = crate::userns::pod_supplied_ranges(spec).map_err(Error::InvalidArgument)?;
        if ranges.is_empty() {
            return Ok(());
        }
        let key = self.pod_key(spec, id);
        let (a, member) = (self.userns.clone(), userns_member(&self.namespace, id));
        let r = ranges.clone();
        let host = tokio::task::spawn_blocking(move || a.claim(&key, &member, &r))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("user namespace range: {e}")))?
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        info!(
            host,
            ?ranges,
            "the pod's own user namespace mappings registered"
        );
        Ok(())
    }

    /// Publishes TaskOOM for each OOM kill in the container's cgroup while it runs, woken by
    /// the kernel (see `oom.rs`).
    fn spawn_oom_watcher(&self, c: Arc<Container>) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let Some(source) = c.cgroup().ok().and_then(OomSource::of) else {
                return;
            };
            let mut notifier = match source.notifications() {
                Ok(n) => n,
                Err(e) => {
                    warn!(id = %c.id, "cannot watch the container's memory cgroup for OOM kills: {e}");
                    return;
                }
            };
            let mut exited = c.exited.clone();
            loop {
                tokio::select! {
                    r = notifier.next() => {
                        if r.is_err() {
                            return;
                        }
                        publish_oom(&publisher, &namespace, &c, &source).await;
                    }
                    _ = exited.changed() => return,
                }
            }
        });
    }

    fn spawn_exit_watcher(&self, c: Arc<Container>, tx: watch::Sender<Option<ExitInfo>>) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let runtime = self.runtime.clone();
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
            // Execs die with the init's pid namespace; report their exits before the init's
            // (as runc's shim does). Without a private pid namespace, kill them.
            let execs: Vec<_> = c.execs.lock().await.values().cloned().collect();
            for e in &execs {
                if let Some(p) = e.pidfd.get() {
                    if e.exited.borrow().is_none() {
                        let _ = p.signal(libc::SIGKILL);
                    }
                }
            }
            for e in &execs {
                if e.pidfd.get().is_some() {
                    let _ = tokio::time::timeout(DRAIN_LIMIT, wait_watch(&e.exited)).await;
                }
            }
            c.copier.lock().await.drain(DRAIN_LIMIT).await;
            // An OOM kill that ended the init is reported before its exit (TaskOOM, then
            // TaskExit), also when the watcher has not seen the notification yet.
            if let Some(source) = c.cgroup.get().and_then(OomSource::of) {
                publish_oom(&publisher, &namespace, &c, &source).await;
            }
            // Nothing of the container runs any more: its cgroup, state and rootfs mount can
            // go now, while containerd and its client learn of the exit, instead of on the
            // Delete that follows. Not before a Start that is still at work has finished (it
            // holds the phase lock while it records the start in the state file): a workload
            // that exits at once would otherwise have its state removed under that write.
            let mut phase = c.phase.lock().await;
            *c.cleanup.lock().await =
                Cleanup::Running(tokio::spawn(Self::clean_up_stopped(runtime, c.clone())));
            *phase = Phase::Stopped(exit);
            drop(phase);
            let _ = tx.send(Some(exit));
            info!(id = %c.id, pid = c.pid(), status = exit.status, "container exited");
            publish(
                &publisher,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid: c.pid(),
                    exit_status: exit.status,
                    exited_at: MessageField::some(timestamp(exit.at)),
                    ..Default::default()
                },
            )
            .await;
        });
    }

    async fn wait_exit(c: &Container) -> ExitInfo {
        wait_watch(&c.exited).await
    }

    /// Removes what a container whose processes have all exited leaves behind: its cgroup and
    /// runtime state ([`Runtime::delete_stopped`]), its rootfs mount and its bind sources. The
    /// unmount (~1 ms, the overlay syncs its upper filesystem) runs on a blocking thread, off
    /// the shim's event loop. Safe to repeat.
    async fn clean_up_stopped(runtime: Runtime, c: Arc<Container>) -> Result<CleanupTimes> {
        let t0 = Instant::now();
        runtime.delete_stopped(&c.id).await?;
        let state_us = t0.elapsed().as_micros() as u64;
        let t1 = Instant::now();
        let owned = c.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if owned.rootfs_mounted {
                unmount(&owned.bundle.join("rootfs"));
            }
            bind_sources::cleanup(&owned.bundle);
        })
        .await;
        Ok(CleanupTimes {
            state_us,
            unmount_us: t1.elapsed().as_micros() as u64,
        })
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.get(&req.id).await?;
        if !req.exec_id.is_empty() {
            return self.delete_exec(&c, &req.exec_id).await;
        }
        let phase = *c.phase.lock().await;
        phase.allows(Check::Delete, Subject::Container(&c.id), c.pid())?;
        if phase == Phase::Created {
            // Never started: end the waiting init first, so its exit is reported in order.
            let _ = c.pidfd.signal(libc::SIGKILL);
        }
        let exit = Self::wait_exit(&c).await;
        let t0 = Instant::now();
        // The exit watcher started the cleanup when the init exited; a failed one is retried
        // here, so that its error reaches the caller.
        let times = match c.cleanup_outcome().await {
            Some(Ok(t)) => t,
            outcome => {
                if let Some(Err(e)) = outcome {
                    debug!(id = %c.id, "cleanup after exit failed, retrying: {e}");
                }
                Self::clean_up_stopped(self.runtime.clone(), c.clone()).await?
            }
        };
        let waited = t0.elapsed();
        self.release_userns(&c.id).await;
        c.copier.lock().await.abort_stdin();
        self.containers.lock().await.remove(&c.id);
        crate::orphans::forget(Path::new(crate::orphans::DIR), &self.namespace, &c.id);
        info!(
            state_us = times.state_us,
            unmount_us = times.unmount_us,
            waited_us = waited.as_micros() as u64,
            release_us = (t0.elapsed() - waited).as_micros() as u64,
            "container deleted"
        );
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: c.pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        )
        .await;
        Ok(DeleteResponse {
            pid: c.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    /// Register an exec (containerd calls Exec, then Start with the exec id).
    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        validate_id(&req.exec_id)?;
        c.phase
            .lock()
            .await
            .allows(Check::Exec, Subject::Container(&c.id), c.pid())?;
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec request carries no process spec".into()))?;
        let mut process: oci_spec::runtime::Process =
            serde_json::from_slice(&any.value).map_err(|e| {
                Error::InvalidArgument(format!("exec process spec is not an OCI Process: {e}"))
            })?;
        // The request decides, as in runc's shim: clients copy the container's process
        // (terminal: false) and ask for a tty in the request (`kubectl exec -it`).
        process.set_terminal(Some(req.terminal));
        let init = read_init_process(&c.bundle).await?;
        confine_exec(&mut process, &init);
        let spec = c.bundle.join(format!("exec-{}.json", req.exec_id));
        let mut execs = c.execs.lock().await;
        if execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, c.id
            )));
        }
        let raw = serde_json::to_vec(&process)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise exec spec: {e}")))?;
        tokio::fs::write(&spec, raw)
            .await
            .map_err(|e| Error::io(format!("write {}", spec.display()), e))?;
        let (tx, rx) = watch::channel(None);
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Exec {
                id: req.exec_id.clone(),
                spec,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                pidfd: std::sync::OnceLock::new(),
                phase: Mutex::new(Phase::Created),
                exited_tx: tx,
                exited: rx,
                copier: Arc::new(Mutex::new(Copier::default())),
                console: std::sync::OnceLock::new(),
            }),
        );
        drop(execs);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(())
    }

    async fn start_exec(&self, c: &Arc<Container>, exec_id: &str) -> Result<u32> {
        let e = c.exec(exec_id).await?;
        let t0 = Instant::now();
        {
            let mut phase = e.phase.lock().await;
            let started = phase.next(
                Transition::Start,
                Subject::Exec {
                    container: &c.id,
                    exec: exec_id,
                },
            )?;
            c.phase
                .lock()
                .await
                .allows(Check::StartExecIn, Subject::Container(&c.id), c.pid())?;
            let (child, mut copier) = stdio::setup(&e.stdio, &c.bundle)?;
            let pid_file = c.bundle.join(format!("exec-{exec_id}.pid"));
            let log = c.bundle.join(format!("exec-{exec_id}.log"));
            let r = self
                .runtime
                .exec(&c.id, &e.spec, &pid_file, &log, child)
                .await;
            if let Err(err) = r {
                let _ = tokio::fs::remove_file(&pid_file).await;
                return Err(err);
            }
            let pid = read_pid(&pid_file).await;
            let _ = tokio::fs::remove_file(&pid_file).await;
            let pid = pid?;
            let pidfd = Arc::new(
                PidFd::open(pid).map_err(|err| Error::io(format!("open pidfd of {pid}"), err))?,
            );
            match copier.connect_console().await {
                Ok(Some(console)) => {
                    let _ = e.console.set(console);
                }
                Ok(None) => {}
                Err(err) => {
                    let _ = pidfd.signal(libc::SIGKILL);
                    // Our child now (we are its subreaper): reap it.
                    let _ = tokio::time::timeout(DRAIN_LIMIT, pidfd.wait()).await;
                    return Err(err);
                }
            }
            let _ = e.pidfd.set(pidfd);
            *e.copier.lock().await = copier;
            *phase = started;
        }
        self.spawn_exec_watcher(c.clone(), e.clone());
        let pid = e.pid();
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            },
        )
        .await;
        info!(
            exec_id,
            pid,
            exec_us = t0.elapsed().as_micros() as u64,
            "exec started"
        );
        Ok(pid)
    }

    fn spawn_exec_watcher(&self, c: Arc<Container>, e: Arc<Exec>) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let Some(pidfd) = e.pidfd.get().cloned() else {
                return;
            };
            let exit = pidfd.wait().await.unwrap_or_else(|err| {
                warn!(id = %c.id, exec_id = %e.id, "waiting for the exec failed: {err}");
                ExitInfo {
                    status: 255,
                    at: SystemTime::now(),
                }
            });
            e.copier.lock().await.drain(DRAIN_LIMIT).await;
            *e.phase.lock().await = Phase::Stopped(exit);
            let _ = e.exited_tx.send(Some(exit));
            info!(id = %c.id, exec_id = %e.id, status = exit.status, "exec exited");
            publish(
                &publisher,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: c.id.clone(),
                    id: e.id.clone(),
                    pid: pidfd.pid() as u32,
                    exit_status: exit.status,
                    exited_at: MessageField::some(timestamp(exit.at)),
                    ..Default::default()
                },
            )
            .await;
        });
    }

    async fn delete_exec(&self, c: &Container, exec_id: &str) -> Result<DeleteResponse> {
        let e = c.exec(exec_id).await?;
        let phase = *e.phase.lock().await;
        let who = Subject::Exec {
            container: &c.id,
            exec: exec_id,
        };
        phase.allows(Check::Delete, who, e.pid())?;
        // A registered exec that never started ends with 0.
        let exit = phase.exit().unwrap_or(ExitInfo {
            status: 0,
            at: SystemTime::now(),
        });
        e.copier.lock().await.abort_stdin();
        let _ = tokio::fs::remove_file(&e.spec).await;
        c.execs.lock().await.remove(exec_id);
        Ok(DeleteResponse {
            pid: e.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.get(id).await?;
        {
            let mut phase = c.phase.lock().await;
            let t = if pause {
                Transition::Pause
            } else {
                Transition::Resume
            };
            let next = phase.next(t, Subject::Container(&c.id))?;
            if pause {
                self.runtime.pause(&c.id).await?;
            } else {
                self.runtime.resume(&c.id).await?;
            }
            *phase = next;
        }
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        }
        Ok(())
    }

    async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        c.phase
            .lock()
            .await
            .allows(Check::Update, Subject::Container(&c.id), c.pid())?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update carries no resources".into()))?;
        // containerd sends the runtime-spec LinuxResources as a JSON-typed Any; check it
        // here so a bad request gets a clear error without running the runtime, and nothing
        // is half-applied: values the kernel would refuse, and anything above the policy's
        // ceilings, are refused as a whole.
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "update resources ({}) are not an OCI LinuxResources JSON: {e}",
                    any.type_url
                ))
            })?;
        c.update_rules.check(&resources)?;
        let file = c.bundle.join("update-resources.json");
        tokio::fs::write(&file, &any.value)
            .await
            .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        c.start_settled().await;
        let r = self.runtime.update(&c.id, &file).await;
        let _ = tokio::fs::remove_file(&file).await;
        r
    }

    async fn do_close_io(&self, req: CloseIORequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        if !req.stdin {
            return Ok(());
        }
        let copier = if req.exec_id.is_empty() {
            c.copier.clone()
        } else {
            c.exec(&req.exec_id).await?.copier.clone()
        };
        copier.lock().await.close_stdin();
        Ok(())
    }

    /// Sets the window size of the init's or an exec's terminal.
    async fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        let (console, what, terminal) = if req.exec_id.is_empty() {
            (
                c.console.clone(),
                format!("container {}", c.id),
                c.stdio.terminal,
            )
        } else {
            let e = c.exec(&req.exec_id).await?;
            (
                e.console.get().cloned(),
                format!("exec {} in container {}", e.id, c.id),
                e.stdio.terminal,
            )
        };
        let Some(console) = console else {
            if !terminal {
                // containerd's clients resize without asking first; runc's shim answers OK.
                debug!("{what} has no terminal: ResizePty ignored");
                return Ok(());
            }
            return Err(Error::FailedPrecondition(format!(
                "{what} has not started yet: its terminal does not exist; resize it after Start"
            )));
        };
        let size = |v: u32, name: &str| {
            u16::try_from(v).map_err(|_| {
                Error::InvalidArgument(format!(
                    "{name} {v} is too large for a terminal (max 65535)"
                ))
            })
        };
        let (rows, cols) = (size(req.height, "height")?, size(req.width, "width")?);
        console
            .resize(rows, cols)
            .map_err(|e| Error::io(format!("resize the terminal of {what}"), e))
    }

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        if !req.exec_id.is_empty() {
            let e = c.exec(&req.exec_id).await?;
            let Some(p) = e.pidfd.get().filter(|_| e.exited.borrow().is_none()) else {
                return Err(Error::NotFound(format!(
                    "process of exec {} in {}: not running",
                    e.id, c.id
                )));
            };
            return match p.signal(req.signal as i32) {
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Err(Error::NotFound(
                    format!("process of exec {} in {}: already finished", e.id, c.id),
                )),
                r => r.map_err(|err| Error::io(format!("signal exec {}", e.id), err)),
            };
        }
        if req.all {
            // The cleanup at the init's exit (started only then) removes the cgroup only when
            // no process is left in it, and the runtime's state with it. Once it has, there is
            // nothing to signal: before the runtime runs (containerd 1.6's CRI sends a kill
            // --all before it deletes an exited sandbox), or when the init died of this signal
            // while the runtime was still at work (it reads its state again after signalling).
            if matches!(c.cleanup_outcome().await, Some(Ok(_))) {
                return Ok(());
            }
            c.start_settled().await;
            return match self.runtime.kill(&c.id, req.signal, true).await {
                Err(e) if matches!(c.cleanup_outcome().await, Some(Ok(_))) => {
                    debug!(id = %c.id, "kill --all raced the exit's cleanup, which found no process left: {e}");
                    Ok(())
                }
                r => r,
            };
        }
        c.phase
            .lock()
            .await
            .allows(Check::Signal, Subject::Container(&c.id), c.pid())?;
        let r = c.pidfd.signal(req.signal as i32);
        if r.is_ok() && req.signal == libc::SIGKILL as u32 && *c.phase.lock().await == Phase::Paused
        {
            // A frozen process dies only once thawed (runc does the same).
            if let Err(e) = self.runtime.resume(&c.id).await {
                warn!(id = %c.id, "thaw after SIGKILL of a paused container: {e}");
            }
        }
        match r {
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

async fn wait_watch(rx: &watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    let mut rx = rx.clone();
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

/// Publishes one TaskOOM if the container's cgroup counted OOM kills not yet reported.
async fn publish_oom(
    publisher: &RemotePublisher,
    namespace: &str,
    c: &Container,
    source: &OomSource,
) {
    let counter = c.oom.lock().await;
    let kills = source.kills();
    if counter.catch_up(kills) {
        warn!(id = %c.id, kills, "OOM kill in the container's cgroup");
        publish(
            publisher,
            namespace,
            topics::TASK_OOM_EVENT_TOPIC,
            TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            },
        )
        .await;
    }
}

/// The init's process as the policy left it in the bundle's config.json.
async fn read_init_process(bundle: &Path) -> Result<oci_spec::runtime::Process> {
    let path = bundle.join("config.json");
    let raw = tokio::fs::read(&path)
        .await
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let spec: Spec = serde_json::from_slice(&raw).map_err(|e| {
        Error::InvalidArgument(format!(
            "the bundle's OCI spec {} is malformed: {e}",
            path.display()
        ))
    })?;
    spec.process()
        .clone()
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no process", path.display())))
}

/// Holds an exec to the policy of its container's init: containerd builds the exec's
/// process from its own copy of the spec (before our policy), so its capabilities are cut
/// down to the init's, and no_new_privs is kept when the init has it.
fn confine_exec(exec: &mut oci_spec::runtime::Process, init: &oci_spec::runtime::Process) {
    use oci_spec::runtime::{Capabilities, LinuxCapabilities};
    let empty = Capabilities::new();
    let inter =
        |mine: &Option<Capabilities>, theirs: &Option<Capabilities>| -> Option<Capabilities> {
            let theirs = theirs.as_ref().unwrap_or(&empty);
            Some(
                mine.as_ref()
                    .map(|m| m.intersection(theirs).cloned().collect())
                    .unwrap_or_default(),
            )
        };
    let ic = init.capabilities().clone().unwrap_or_default();
    let ec = exec.capabilities().clone().unwrap_or_else(|| ic.clone());
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(inter(ec.bounding(), ic.bounding()));
    caps.set_effective(inter(ec.effective(), ic.effective()));
    caps.set_permitted(inter(ec.permitted(), ic.permitted()));
    caps.set_inheritable(inter(ec.inheritable(), ic.inheritable()));
    caps.set_ambient(inter(ec.ambient(), ic.ambient()));
    exec.set_capabilities(Some(caps));
    if init.no_new_privileges() == Some(true) {
        exec.set_no_new_privileges(Some(true));
    }
}

/// The task request and the process spec must agree on the terminal (containerd sets both;
/// the runtime would refuse a mismatch less clearly).
fn check_terminal(spec: Option<bool>, requested: bool, what: &str) -> Result<()> {
    let spec = spec.unwrap_or(false);
    if spec == requested {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the request asks for terminal: {requested} but {what} has process.terminal: {spec}; set both the same (ctr -t sets both)"
    )))
}

/// A kernel before Linux 6.3 has no `vm.memfd_noexec`: the sysctl a policy asks for is left
/// out of the spec (the init's write would fail the create) and the report says so.
fn drop_memfd_noexec_without_kernel_support(spec: &mut Spec) -> Option<String> {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let supported = *SUPPORTED.get_or_init(|| Path::new("/proc/sys/vm/memfd_noexec").exists());
    if supported {
        return None;
    }
    let sysctl = spec.linux_mut().as_mut()?.sysctl_mut().as_mut()?;
    sysctl.remove(airlock_policies::MEMFD_NOEXEC)?;
    Some(
        "memfd: executable memfds stay possible (this kernel has no vm.memfd_noexec; Linux >= 6.3 has)"
            .into(),
    )
}

fn validate_id(id: &str) -> Result<()> {
    airlock_contract::validate_id(id).map_err(|e| Error::InvalidArgument(e.to_string()))
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

/// Lets the container's root (host gid `gid`) traverse the bundle dir to its rootfs, as
/// containerd does for a spec that comes with user namespace mappings: group `gid`, mode 0710.
fn open_bundle_to(bundle: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(bundle, None, Some(gid))
        .and_then(|()| std::fs::set_permissions(bundle, std::fs::Permissions::from_mode(0o710)))
        .map_err(|e| {
            Error::io(
                format!(
                    "open the bundle {} to the container's root",
                    bundle.display()
                ),
                e,
            )
        })
}

/// Removes an empty `work` directory that an earlier mount of the container's overlay snapshot
/// left in its workdir (containerd mounts a snapshot briefly to read the image's
/// `/etc/passwd` and `/etc/group`; so does the CRI plugin). overlayfs removes and re-creates it
/// at every mount, inside the mount call; the shim does it first, on a blocking thread while it
/// applies the policy. Here, on an ext4 mounted with `discard`, the removal waited about 0.9 ms
/// for the device (the directory's block is discarded), on every create's start path. A
/// directory that is not empty, or in use, stays for overlayfs, as before. Whether it removed
/// one.
fn remove_stale_overlay_work(mounts: &[containerd_shim::protos::api::Mount]) -> bool {
    let [m] = mounts else {
        return false;
    };
    if m.type_ != "overlay" {
        return false;
    }
    let Some(workdir) = m.options.iter().find_map(|o| o.strip_prefix("workdir=")) else {
        return false;
    };
    std::fs::remove_dir(Path::new(workdir).join("work")).is_ok()
}

/// The mounts without containerd's `uidmap=`/`gidmap=` options, whether there were any, and
/// the host gid of the container's root from `gidmap=`.
fn strip_idmap_options(
    mounts: &[containerd_shim::protos::api::Mount],
) -> (Vec<containerd_shim::protos::api::Mount>, bool, Option<u32>) {
    let mut gid = None;
    let mut idmapped = false;
    let stripped = mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.options.retain(|o| {
                if let Some(map) = o.strip_prefix("gidmap=") {
                    // `<container>:<host>:<size>`, the root's range first.
                    let f: Vec<u32> = map
                        .split([':', ' '])
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    if f.len() >= 3 && f[0] == 0 {
                        gid = Some(f[1]);
                    }
                    idmapped = true;
                    return false;
                }
                if o.starts_with("uidmap=") {
                    idmapped = true;
                    return false;
                }
                true
            });
            m
        })
        .collect();
    (stripped, idmapped, gid)
}

/// Records the start of the container's user namespace range in its spec
/// ([`crate::userns::HOST_ANNOTATION`], read by `shim delete`), or removes the annotation when
/// the container has no range of ours (a pod's own value is never trusted).
fn record_userns_range(spec: &mut Spec, host: Option<u32>) {
    let key = crate::userns::HOST_ANNOTATION;
    let had = spec
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(key));
    if host.is_none() && !had {
        return;
    }
    let mut a = spec.annotations().clone().unwrap_or_default();
    a.remove(key);
    if let Some(h) = host {
        a.insert(key.to_string(), h.to_string());
    }
    spec.set_annotations(Some(a));
}

/// How a container is named among the users of a pod's user namespace range.
pub fn userns_member(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// libcontainer 0.7 forces its systemd cgroup driver for a user-namespaced container whose
/// cgroupsPath is relative (or missing) on a cgroup v2 host, and that driver cannot work
/// without systemd: make the path absolute (the same cgroup for cgroupfs).
fn absolute_cgroups_path(spec: &mut Spec, namespace: &str, id: &str) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let path = match linux.cgroups_path() {
        Some(p) if p.is_absolute() => return,
        Some(p) => Path::new("/").join(p),
        None => PathBuf::from(format!("/{namespace}/{id}")),
    };
    linux.set_cgroups_path(Some(path));
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
                self.runtime.start(&c.id, c.poststart_hooks).await?;
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
        let stats = c.cgroup()?.metrics()?;
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
        let pids = c.cgroup()?.procs()?;
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
    fn exec_is_confined_to_the_inits_capabilities_and_no_new_privs() {
        let init: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"noNewPrivileges":true,
                "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        )
        .unwrap();
        let mut exec: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["id"],"noNewPrivileges":false,
                "capabilities":{"bounding":["CAP_KILL","CAP_SYS_ADMIN"],"effective":["CAP_SYS_ADMIN"],
                "permitted":["CAP_KILL","CAP_SYS_ADMIN"],"ambient":["CAP_SYS_ADMIN"]}}"#,
        )
        .unwrap();
        confine_exec(&mut exec, &init);
        let caps = exec.capabilities().clone().unwrap();
        let names = |c: &Option<oci_spec::runtime::Capabilities>| {
            let mut v: Vec<String> = c.iter().flatten().map(|c| c.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(names(caps.bounding()), vec!["KILL"]);
        assert!(names(caps.effective()).is_empty());
        assert_eq!(names(caps.permitted()), vec!["KILL"]);
        assert!(names(caps.ambient()).is_empty());
        assert_eq!(exec.no_new_privileges(), Some(true));
    }

    #[test]
    fn containerd_idmap_options_are_taken_out_with_the_root_gid() {
        let m = containerd_shim::protos::api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "lowerdir=/l".into(),
                "uidmap=0:2147942400:65536".into(),
                "gidmap=0:2147942401:65536".into(),
            ],
            ..Default::default()
        };
        let (out, idmapped, gid) = strip_idmap_options(std::slice::from_ref(&m));
        assert_eq!(out[0].options, ["index=off", "lowerdir=/l"]);
        assert!(idmapped);
        assert_eq!(gid, Some(2147942401));
        let (_, idmapped, gid) = strip_idmap_options(&out);
        assert!(!idmapped);
        assert_eq!(gid, None);
    }

    #[test]
    fn only_an_empty_stale_overlay_work_dir_is_removed() {
        let snap = tempfile::tempdir().unwrap();
        let workdir = snap.path().join("work");
        let overlay = |options: Vec<String>| containerd_shim::protos::api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options,
            ..Default::default()
        };
        let with_workdir = overlay(vec![
            "index=off".into(),
            format!("workdir={}", workdir.display()),
            format!("upperdir={}", snap.path().join("fs").display()),
        ]);
        // overlayfs' scratch dir, left empty by an earlier mount: removed.
        std::fs::create_dir_all(workdir.join("work")).unwrap();
        assert!(remove_stale_overlay_work(std::slice::from_ref(
            &with_workdir
        )));
        assert!(!workdir.join("work").exists());
        assert!(workdir.is_dir(), "the workdir itself stays");
        // None there: nothing to do.
        assert!(!remove_stale_overlay_work(std::slice::from_ref(
            &with_workdir
        )));
        // Not empty: left to overlayfs.
        std::fs::create_dir_all(workdir.join("work/#1")).unwrap();
        assert!(!remove_stale_overlay_work(std::slice::from_ref(
            &with_workdir
        )));
        assert!(workdir.join("work/#1").is_dir());
        // Another mount type, no workdir option, or more than one mount: not touched.
        std::fs::remove_dir_all(workdir.join("work/#1")).unwrap();
        let mut bind = with_workdir.clone();
        bind.type_ = "bind".into();
        assert!(!remove_stale_overlay_work(&[bind]));
        assert!(!remove_stale_overlay_work(&[overlay(vec![
            "index=off".into()
        ])]));
        assert!(!remove_stale_overlay_work(&[
            with_workdir.clone(),
            with_workdir.clone()
        ]));
        assert!(workdir.join("work").is_dir());
    }

    #[test]
    fn the_userns_range_annotation_is_ours_alone() {
        let key = crate::userns::HOST_ANNOTATION;
        let mut spec = Spec::default();
        spec.set_annotations(None);
        record_userns_range(&mut spec, None);
        assert_eq!(spec.annotations(), &None, "nothing added without a range");
        record_userns_range(&mut spec, Some(1 << 30));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[key],
            (1u32 << 30).to_string()
        );
        // A pod's own value (the CRI plugin passes airlock.dev/* annotations through) is
        // replaced, or removed when the container has no range of ours.
        let mut a = HashMap::from([(key.to_string(), "12345".to_string())]);
        a.insert("other".into(), "kept".into());
        spec.set_annotations(Some(a.clone()));
        record_userns_range(&mut spec, None);
        let got = spec.annotations().clone().unwrap();
        assert!(!got.contains_key(key));
        assert_eq!(got["other"], "kept");
        spec.set_annotations(Some(a));
        record_userns_range(&mut spec, Some(1 << 30));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[key],
            (1u32 << 30).to_string()
        );
    }

    #[test]
    fn terminal_must_agree_with_the_spec() {
        assert!(check_terminal(Some(true), true, "spec").is_ok());
        assert!(check_terminal(None, false, "spec").is_ok());
        let e = check_terminal(None, true, "the exec's process spec").unwrap_err();
        assert!(
            e.to_string()
                .contains("terminal: true but the exec's process spec has process.terminal: false"),
            "{e}"
        );
        assert!(check_terminal(Some(true), false, "spec").is_err());
    }

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(5, 7);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }
}
