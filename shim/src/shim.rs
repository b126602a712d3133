//! The shim's lifecycle entry points: `start` (spawn or reuse the pod's shim daemon),
//! `delete` (clean up after a shim that died) and serve.
//!
//! containerd waits for the two short-lived ones on every container's way: `start` for every
//! container (a pod's later ones too), `delete` inside every Tasks.Delete (containerd runs it
//! after each shim exit, clean ones too). The crate's async bootstrap answers them on tokio, with signal
//! handling and blocking-pool threads for its file and stdio calls (three threads each time).
//! [`oneshot`] answers them before that, with plain calls on the main thread. A daemon that
//! `start` spawned serves through [`serve_inherited`], on the socket `start` bound.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::{Config, DeleteResponse, Error as ShimError, Flags, StartOpts};
use tracing::{info, warn};

use crate::process::runtime::Runtime;
use crate::process::{unmount, ProcessSandbox};
use crate::service::TaskService;

/// Annotation containerd's CRI sets on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's kind of container: `sandbox` for a pod's sandbox, `container` for the others.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

pub struct AirlockShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// The ttrpc socket this shim serves (serve mode only).
    socket: String,
}

/// The key that groups containers into one shim: the pod's sandbox id, else the container's.
pub fn grouping_key(bundle: &Path, id: &str) -> String {
    let Ok(raw) = std::fs::read(bundle.join("config.json")) else {
        return id.to_string();
    };
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    serde_json::from_slice::<Partial>(&raw)
        .ok()
        .and_then(|p| p.annotations.get(SANDBOX_ID_ANNOTATION).cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

#[async_trait]
impl Shim for AirlockShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            crate::logging::init_fifo(args.debug);
        } else {
            crate::logging::init_stderr(args.debug);
        }
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        AirlockShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            socket: args.socket.clone(),
        }
    }

    // Both are answered by [`oneshot`] before the crate runs; these serve a caller that
    // reaches the crate's bootstrap anyway, with the same (blocking) code.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        start_daemon(
            &opts.namespace,
            &opts.id,
            &opts.address,
            opts.debug,
            &self.bundle,
        )
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        Ok(clean_up_after(&self.namespace, &self.id, &self.bundle))
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // Remove our socket ourselves: the crate removes it through the bundle's `address` file,
        // which containerd may already have deleted with the bundle by then.
        let path = self.socket.trim_start_matches("unix://");
        if !path.is_empty() {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        // Once, off every request's path: the containers of shims killed before containerd's
        // cleanup could find them.
        tokio::spawn(async {
            tokio::time::sleep(crate::orphans::SWEEP_AFTER).await;
            let swept = tokio::task::spawn_blocking(|| {
                crate::orphans::sweep(Path::new(crate::orphans::DIR), |r| {
                    clean_up_after(&r.namespace, &r.id, &r.bundle);
                })
            })
            .await;
            match swept {
                Ok(Ok(done)) if !done.is_empty() => {
                    let ids: Vec<String> = done
                        .iter()
                        .map(|r| format!("{}/{}", r.namespace, r.id))
                        .collect();
                    info!(?ids, "cleaned up after containers whose shim was killed");
                }
                Ok(Err(e)) => warn!("look for containers of killed shims: {e}"),
                _ => {}
            }
        });
        let runtime = match Runtime::locate(&self.namespace) {
            Ok(r) => {
                // The pod's first Create follows in a few milliseconds; with a shim cgroup
                // to move into (no AT_STARTUP_ENV), the runtime would start outside it.
                // On a worker thread: the spawn (~0.2 ms) stays off the shim's way to serving.
                if std::env::var_os(AT_STARTUP_ENV).is_some() {
                    let r = r.clone();
                    tokio::spawn(async move { r.prestart() });
                }
                r
            }
            Err(e) => {
                // Every create will fail with this message; keep serving so it reaches the user.
                warn!("{e}");
                Runtime::new(
                    PathBuf::from(crate::process::runtime::RUNTIME_BINARY),
                    crate::process::runtime::state_root(&self.namespace),
                )
            }
        };
        let sandbox: Arc<dyn crate::sandbox::Sandbox> = if crate::vm::selected() {
            Arc::new(crate::vm::VmSandbox::new(self.namespace.clone(), runtime))
        } else {
            Arc::new(ProcessSandbox::new(self.namespace.clone(), runtime))
        };
        TaskService::new(
            self.namespace.clone(),
            Arc::new(publisher),
            self.exit.clone(),
            sandbox,
        )
    }
}

/// Answers containerd's `start` and `delete` invocations (see the module docs); None for any
/// other one (serve, or arguments the crate should report), which goes to the crate. Returns
/// the exit code; errors are printed as the crate prints them.
pub fn oneshot(args: &[OsString]) -> Option<i32> {
    let flags = containerd_shim::parse(args.get(1..).unwrap_or_default()).ok()?;
    if flags.action != "start" && flags.action != "delete" {
        return None;
    }
    let result = (|| {
        // The crate requires it for every action; the daemon publishes events through it.
        std::env::var("TTRPC_ADDRESS").map_err(|_| {
            ShimError::InvalidArgument(
                "TTRPC_ADDRESS is not set: containerd sets it when it runs a shim".into(),
            )
        })?;
        crate::logging::init_stderr(flags.debug);
        let bundle = if flags.bundle.is_empty() {
            std::env::current_dir().map_err(|e| ShimError::Other(format!("cwd: {e}")))?
        } else {
            PathBuf::from(&flags.bundle)
        };
        let mut out = std::io::stdout().lock();
        let io = |e: std::io::Error| ShimError::Other(format!("write stdout: {e}"));
        if flags.action == "start" {
            let address = start_daemon(
                &flags.namespace,
                &flags.id,
                &flags.address,
                flags.debug,
                &bundle,
            )?;
            out.write_all(address.as_bytes()).map_err(io)?;
        } else {
            let response = clean_up_after(&flags.namespace, &flags.id, &bundle);
            out.write_all(&response.write_to_bytes()?).map_err(io)?;
        }
        out.flush().map_err(io)
    })();
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {e:?}", crate::RUNTIME_ID);
            1
        }
    })
}

/// `start`: returns the address of the serving shim of the container's pod (derived from the
/// pod's grouping key). containerd runs `start` for every container, so for a pod's later
/// containers that shim usually serves already: then its address is the answer (a connect,
/// as runc's shim checks too). Otherwise it binds and listens on the address, spawns the
/// serving shim with that socket at fd 3 (as Go shims do; [`serve_inherited`]) and returns the
/// address at once: containerd's connect and first request queue on the socket while the
/// daemon starts. The crate's `spawn` lets the daemon bind and waits until it serves; measured
/// here, containerd's snapshot prepare to our Create handler takes 5.3-6.3 ms this way and
/// 7.0-8.3 ms with the crate's `spawn` (medians of 19, three paired runs). A shim started meanwhile for the same pod holds the
/// socket, and its address is the answer.
fn start_daemon(
    namespace: &str,
    id: &str,
    containerd: &str,
    debug: bool,
    bundle: &Path,
) -> containerd_shim::Result<String> {
    let address = containerd_shim::socket_address(containerd, namespace, &grouping_key(bundle, id));
    let write_address = |address: &str| {
        std::fs::write(bundle.join("address"), address)
            .map_err(|e| ShimError::Other(format!("write {}/address: {e}", bundle.display())))
    };
    let socket = address.trim_start_matches("unix://");
    // Recorded with its shim's socket, bound under the same shared lock: see `orphans`. Best
    // effort: without it only a kill during this Create could leave something behind.
    let registry = Path::new(crate::orphans::DIR);
    let _shared = crate::orphans::lock(registry, false).ok();
    let orphan = crate::orphans::Record {
        namespace: namespace.to_owned(),
        id: id.to_owned(),
        socket: PathBuf::from(socket),
        bundle: bundle.to_path_buf(),
    };
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        let _ = crate::orphans::record(registry, &orphan);
        write_address(&address)?;
        return Ok(address);
    }
    // Bound here, so that containerd's connect and first request queue on it while the
    // daemon starts, instead of `start` waiting until the daemon serves. A shim started
    // meanwhile for the same pod holds it: that one is the answer.
    let Some(listener) = bind_socket(Path::new(socket))
        .map_err(|e| ShimError::Other(format!("listen on {socket}: {e}")))?
    else {
        let _ = crate::orphans::record(registry, &orphan);
        write_address(&address)?;
        return Ok(address);
    };
    let _ = crate::orphans::record(registry, &orphan);
    // The runtime options containerd writes to our stdin may name a cgroup for the shim.
    let shim_cgroup = shim_cgroup_from_stdin()?;
    let exe = std::env::current_exe().map_err(|e| ShimError::Other(format!("own path: {e}")))?;
    // An OOM score above containerd's, taken here so that the daemon starts with it, and so
    // does every process it starts (the runtime it starts ahead of need may start at once).
    containerd_shim::cgroup::adjust_oom_score(std::process::id())?;
    let mut cmd = Command::new(exe);
    if shim_cgroup.is_none() {
        // It stays in the cgroup it starts in, so it may start the runtime at once.
        cmd.env(AT_STARTUP_ENV, "1");
    }
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env(LISTENER_FD_ENV, LISTENER_FD.to_string())
        .args(["-namespace", namespace, "-id", id, "-address", containerd])
        .args(["-socket", &address]);
    if debug {
        cmd.arg("-debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec, only dup2 and fcntl (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || inherit_at(fd, LISTENER_FD));
    }
    // On failure nothing is left behind: no daemon, no socket file.
    let fail = |e: ShimError, child: Option<&mut std::process::Child>| {
        if let Some(c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(socket);
        crate::orphans::forget(Path::new(crate::orphans::DIR), namespace, id);
        e
    };
    let mut child = cmd.spawn().map_err(|e| {
        fail(
            ShimError::Other(format!("spawn the shim daemon: {e}")),
            None,
        )
    })?;
    if let Some(cgroup) = &shim_cgroup {
        if let Err(e) = containerd_shim::cgroup::add_task_to_cgroup(cgroup, child.id()) {
            return Err(fail(e, Some(&mut child)));
        }
    }
    write_address(&address).map_err(|e| fail(e, Some(&mut child)))?;
    Ok(address)
}

/// Set by `start` for a daemon that stays in the cgroup it starts in (no `ShimCgroup` to move
/// it to): only then does it start the runtime ahead of need at once (the runtime would start
/// outside the `ShimCgroup` otherwise).
pub const AT_STARTUP_ENV: &str = "AIRLOCK_SHIM_STAYS_IN_ITS_CGROUP";

/// The fd at which a daemon spawned by `start` finds its listening socket (as Go shims do).
const LISTENER_FD: RawFd = 3;
/// Set by `start` for the daemon it spawns: the fd of the listening socket it passes.
pub const LISTENER_FD_ENV: &str = "AIRLOCK_SHIM_LISTENER_FD";

/// Puts `fd` at `target` without close-on-exec (in a child, before exec).
fn inherit_at(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    let r = if fd == target {
        // dup2 onto itself keeps the flag: clear it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
    } else {
        unsafe { libc::dup2(fd, target) }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds and listens on the shim socket at `path` (creating its directory). None when a live
/// shim already serves it; a socket file nothing serves is replaced.
fn bind_socket(path: &Path) -> std::io::Result<Option<UnixListener>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path).map(Some)
        }
        Err(e) => Err(e),
    }
}

/// Serves the Task API on the socket `start` bound and passed (see [`LISTENER_FD_ENV`]): what
/// the crate's `run` does for a daemon, with that socket instead of binding its own. None when
/// this daemon was not given one (the crate's `run` serves then).
pub async fn serve_inherited() -> Option<containerd_shim::Result<()>> {
    let fd: RawFd = std::env::var(LISTENER_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(LISTENER_FD_ENV);
    let os_args: Vec<OsString> = std::env::args_os().collect();
    let flags = containerd_shim::parse(os_args.get(1..).unwrap_or_default()).ok()?;
    if !flags.action.is_empty() {
        return None;
    }
    // SAFETY: `start` put the listening socket at this fd for us, and nothing else owns it.
    let listener = match unsafe { adopt_listener(fd) } {
        Ok(l) => l,
        Err(e) => {
            return Some(Err(ShimError::Other(format!(
                "the socket inherited at fd {fd}: {e}"
            ))))
        }
    };
    Some(serve(flags, listener).await)
}

/// Takes the listening socket inherited at `fd`, close-on-exec again: the processes this
/// daemon starts (the runtime, the containers) must not get it.
///
/// # Safety
/// `fd` must be an open socket that nothing else owns.
unsafe fn adopt_listener(fd: RawFd) -> std::io::Result<UnixListener> {
    if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixListener::from_raw_fd(fd))
}

async fn serve(flags: Flags, listener: UnixListener) -> containerd_shim::Result<()> {
    use containerd_shim::protos::shim_async::create_task;
    use containerd_shim::protos::ttrpc::r#async::transport::Listener;
    use containerd_shim::protos::ttrpc::r#async::Server;
    use tokio::signal::unix::{signal, SignalKind};
    // As the crate's daemon: SIGTERM, SIGINT and SIGPIPE do not end a serving shim (containerd
    // ends it with Shutdown); a handler replaces their default action.
    let signal_of = |kind| signal(kind).map_err(|e| ShimError::Other(format!("signal setup: {e}")));
    let mut term = signal_of(SignalKind::terminate())?;
    let mut int = signal_of(SignalKind::interrupt())?;
    let mut pipe = signal_of(SignalKind::pipe())?;
    // Container inits must be reparented to us.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(ShimError::Other(format!(
            "become a subreaper: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut config = crate::shim_config();
    let mut shim = AirlockShim::new(crate::RUNTIME_ID, &flags, &mut config).await;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| ShimError::InvalidArgument("TTRPC_ADDRESS is not set".into()))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let task = shim.create_task_service(publisher).await;
    let listener = Listener::try_from(listener)
        .map_err(|e| ShimError::Other(format!("ttrpc listener: {e}")))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(create_task(Arc::new(task)));
    server.start().await?;
    info!("Shim successfully started, waiting for exit signal...");
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                s = term.recv() => s.map(|_| "SIGTERM"),
                s = int.recv() => s.map(|_| "SIGINT"),
                s = pipe.recv() => s.map(|_| "SIGPIPE"),
            };
            match sig {
                Some(name) => tracing::debug!("received {name}"),
                None => return,
            }
        }
    });
    shim.wait().await;
    info!("Shutting down shim instance");
    server.shutdown().await.unwrap_or_default();
    Ok(())
}

/// The shim cgroup named by the runtime options containerd writes to `start`'s stdin, decoded
/// by their type URL ([`crate::config::shim_cgroup_from_options`]), if any.
fn shim_cgroup_from_stdin() -> containerd_shim::Result<Option<String>> {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use std::io::Read;
    let mut data = Vec::new();
    std::io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| ShimError::Other(format!("read the runtime options from stdin: {e}")))?;
    if data.is_empty() {
        return Ok(None);
    }
    let any = Any::parse_from_bytes(&data)?;
    crate::config::shim_cgroup_from_options(&any)
        .map_err(|e| ShimError::InvalidArgument(e.to_string()))
}

/// `delete`: removes what a shim that is gone left of container `id`: the runtime's state and
/// cgroup (executing the runtime only if state is left), the rootfs mount, the bind sources,
/// its user namespace range, the dead socket. Problems are logged (containerd shows them);
/// the answer is always the exit of a killed init.
fn clean_up_after(namespace: &str, id: &str, bundle: &Path) -> DeleteResponse {
    let mut found = Vec::new();
    match Runtime::locate(namespace) {
        Ok(runtime) => {
            match wait_for_create(&runtime, id).and_then(|()| runtime.delete_blocking(id)) {
                Ok(true) => found.push("runtime state and cgroup"),
                Ok(false) => {}
                Err(e) => warn!(%id, "runtime delete: {e}"),
            }
        }
        Err(e) => warn!(%id, "{e}"),
    }
    if crate::vm::clean_up_after_shim(id) {
        found.push("the container's rootfs in its VM's share");
    }
    if unmount(&bundle.join("rootfs")) {
        found.push("rootfs mount");
    }
    if crate::process::bind_sources::cleanup(bundle) {
        found.push("bind sources");
    }
    let member = crate::process::userns_member(namespace, id);
    match release_userns_member(
        &crate::process::userns::RangeAllocator::default(),
        &member,
        bundle,
    ) {
        Ok(Some(host)) => {
            info!(host, "user namespace range released");
            found.push("user namespace range");
        }
        Ok(None) => {}
        Err(e) => warn!("release user namespace range: {e}"),
    }
    // The socket from the bundle's `address` file, else from the container's record (the
    // bundle may be half removed when containerd runs this).
    let registry = Path::new(crate::orphans::DIR);
    let recorded = crate::orphans::recorded(registry, namespace, id).map(|r| r.socket);
    let socket = remove_dead_socket(bundle, recorded);
    if socket == Socket::Removed {
        found.push("socket");
    }
    // A socket still held (by its shim, or by the `start` that bound it) keeps the record, so
    // that a later sweep cleans up once nothing holds it, unless that shim deletes the
    // container first (it forgets it then).
    if socket != Socket::Served {
        crate::orphans::forget(registry, namespace, id);
    }
    // containerd runs `delete` after every shim exit, clean ones too, and shows what it prints
    // as warnings: only a cleanup that found something is worth one.
    if found.is_empty() {
        tracing::debug!(%id, "nothing left after the shim");
    } else {
        info!(%id, "cleaned up after a shim that is gone: {}", found.join(", "));
    }
    DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(now()),
        ..Default::default()
    }
}

/// How long `shim delete` waits for a create that the dead shim's runtime still runs.
const CREATE_IN_FLIGHT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until no runtime is creating container `id` (a shim killed during Create leaves its
/// runtime at work; see `airlock_state::create_lock`), so that the delete finds the state that
/// create leaves, and removes it.
fn wait_for_create(runtime: &Runtime, id: &str) -> crate::error::Result<()> {
    let t0 = std::time::Instant::now();
    if !airlock_state::create_lock::wait(runtime.root(), id, CREATE_IN_FLIGHT_LIMIT) {
        return Err(crate::error::Error::DeadlineExceeded(format!(
            "a runtime still creates container {id} after {} s; delete it again later",
            CREATE_IN_FLIGHT_LIMIT.as_secs()
        )));
    }
    let waited = t0.elapsed();
    if waited > std::time::Duration::from_millis(5) {
        info!(%id, waited_ms = waited.as_millis() as u64, "waited for the create in flight");
    }
    Ok(())
}

/// Releases `member`'s claim on its user namespace range. containerd runs `shim delete` after
/// every container's delete, when the shim that served it has usually released it already:
/// with few pods every range file is read (as [`RangeAllocator::release`] does without a
/// hint), with more only the range the bundle's spec names ([`HOST_ANNOTATION`]), so that the
/// delete path does not read one file per pod on a busy node. A spec without it (a shim that
/// died before writing it) gets the full search.
///
/// [`RangeAllocator::release`]: crate::process::userns::RangeAllocator::release
/// [`HOST_ANNOTATION`]: crate::process::userns::HOST_ANNOTATION
fn release_userns_member(
    allocator: &crate::process::userns::RangeAllocator,
    member: &str,
    bundle: &Path,
) -> crate::process::userns::Result<Option<u32>> {
    if allocator.count() > crate::process::userns::FEW_RANGES {
        // Only the annotations: serde skips the rest of the spec unparsed.
        #[derive(serde::Deserialize)]
        struct Annotations {
            annotations: Option<std::collections::HashMap<String, String>>,
        }
        let host = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Annotations>(&b).ok())
            .and_then(|s| crate::process::userns::host_from_annotations(s.annotations.as_ref()));
        if let Some(host) = host {
            return allocator.release_in(member, host);
        }
    }
    allocator.release(member)
}

/// What [`remove_dead_socket`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    /// Nothing served it, and it was removed.
    Removed,
    /// Something accepts on it.
    Served,
    /// No socket named, or none there.
    Unknown,
}

/// Remove the shim socket named in the bundle's `address` file, else `recorded`, if nothing
/// serves it.
fn remove_dead_socket(bundle: &Path, recorded: Option<PathBuf>) -> Socket {
    let Some(address) = std::fs::read_to_string(bundle.join("address"))
        .ok()
        .or_else(|| recorded.map(|p| p.display().to_string()))
    else {
        return Socket::Unknown;
    };
    let path = address.trim().trim_start_matches("unix://").to_string();
    if path.is_empty() {
        return Socket::Unknown;
    }
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Socket::Served;
    }
    if std::fs::remove_file(&path).is_ok() {
        Socket::Removed
    } else {
        Socket::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle whose spec names `host` as the container's range.
    fn bundle_naming(host: u32) -> tempfile::TempDir {
        let b = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { crate::process::userns::HOST_ANNOTATION: host.to_string() },
        });
        std::fs::write(b.path().join("config.json"), spec.to_string()).unwrap();
        b
    }

    #[test]
    fn shim_delete_reads_the_named_range_only_on_a_node_with_many_pods() {
        use crate::process::userns::{RangeAllocator, FEW_RANGES, SLOT_SIZE};
        let d = tempfile::tempdir().unwrap();
        let a = RangeAllocator::new(d.path());
        let mine = a.acquire("ns/pod0", "ns/c0", SLOT_SIZE).unwrap();
        let other = a.acquire("ns/pod1", "ns/c1", SLOT_SIZE).unwrap();
        // The spec names another range than the one that lists the member (it cannot, from the
        // shim; this shows which path was taken). Few pods: every range is read, it is found.
        let wrong = bundle_naming(other);
        assert_eq!(
            release_userns_member(&a, "ns/c0", wrong.path()).unwrap(),
            Some(mine)
        );
        // Many pods: only the named range is read, so the member stays where it is.
        let mine = a.acquire("ns/pod0", "ns/c0", SLOT_SIZE).unwrap();
        for i in 2..=FEW_RANGES + 1 {
            a.acquire(&format!("ns/pod{i}"), &format!("ns/c{i}"), SLOT_SIZE)
                .unwrap();
        }
        assert!(a.count() > FEW_RANGES);
        let fresh = RangeAllocator::new(d.path()); // as in `shim delete`: no in-process hint
        assert_eq!(
            release_userns_member(&fresh, "ns/c0", wrong.path()).unwrap(),
            None
        );
        // The spec naming its own range: released with one read.
        let right = bundle_naming(mine);
        assert_eq!(
            release_userns_member(&fresh, "ns/c0", right.path()).unwrap(),
            Some(mine)
        );
        // No annotation (a shim that died before writing the spec): every range is read.
        let none = tempfile::tempdir().unwrap();
        let c1 = a.acquire("ns/pod0", "ns/c0", SLOT_SIZE).unwrap();
        assert_eq!(
            release_userns_member(&fresh, "ns/c0", none.path()).unwrap(),
            Some(c1)
        );
    }

    /// A later container of a pod gets the address of the pod's serving shim without a new
    /// daemon (this test binary would be spawned as one otherwise, and would not serve).
    #[test]
    fn start_reuses_the_pods_serving_shim() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod-under-test"}}"#,
        )
        .unwrap();
        let ns = format!("airlock-unit-{}", std::process::id());
        let address = containerd_shim::socket_address(
            "/run/containerd/containerd.sock",
            &ns,
            "pod-under-test",
        );
        let socket = PathBuf::from(address.trim_start_matches("unix://"));
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let serving = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let got = start_daemon(
            &ns,
            "app",
            "/run/containerd/containerd.sock",
            false,
            bundle.path(),
        );
        serving.set_nonblocking(true).unwrap();
        let asked = serving.accept().is_ok();
        drop(serving);
        let _ = std::fs::remove_file(&socket);
        crate::orphans::forget(Path::new(crate::orphans::DIR), &ns, "app");
        assert!(asked, "start did not check the serving shim");
        assert_eq!(got.unwrap(), address);
        assert_eq!(
            std::fs::read_to_string(bundle.path().join("address")).unwrap(),
            address
        );
    }

    /// `start` binds a new socket (making its directory), replaces one nothing serves, and
    /// leaves one a live shim serves to that shim.
    #[test]
    fn start_binds_the_socket_unless_a_shim_serves_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/a/socket");
        let first = bind_socket(&path).unwrap().expect("a new socket is bound");
        assert!(
            bind_socket(&path).unwrap().is_none(),
            "a served socket is left to its shim"
        );
        drop(first);
        // The file stays behind, with nothing listening: it is replaced.
        assert!(path.exists());
        let again = bind_socket(&path)
            .unwrap()
            .expect("a dead socket is replaced");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(again);
    }

    /// The daemon finds the listening socket at fd 3, open across exec.
    #[test]
    fn the_listener_reaches_the_daemon_at_fd_3() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind_socket(&dir.path().join("socket")).unwrap().unwrap();
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "[ -S /proc/self/fd/3 ]"]);
        unsafe {
            cmd.pre_exec(move || inherit_at(fd, LISTENER_FD));
        }
        assert!(cmd.status().unwrap().success(), "no socket at fd 3");
        // Without it, fd 3 is not that socket (close-on-exec).
        let status = Command::new("/bin/sh")
            .args(["-c", "[ -S /proc/self/fd/3 ]"])
            .status()
            .unwrap();
        assert!(!status.success());
    }

    /// The daemon's processes do not inherit the adopted socket.
    #[test]
    fn the_adopted_listener_is_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind_socket(&dir.path().join("socket")).unwrap().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(listener);
        // As inherited across exec: without the flag.
        assert!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } >= 0);
        let _adopted = unsafe { adopt_listener(fd) }.unwrap();
        let status = Command::new("/bin/sh")
            .args(["-c", &format!("[ -S /proc/self/fd/{fd} ]")])
            .status()
            .unwrap();
        assert!(!status.success(), "a child got the shim's socket");
    }

    #[test]
    fn grouping_uses_sandbox_annotation() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(grouping_key(d.path(), "c1"), "c1");
        std::fs::write(
            d.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping_key(d.path(), "c1"), "pod1");
    }
}
