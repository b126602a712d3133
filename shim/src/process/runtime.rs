//! The `airlock-runtime` binary, as the shim drives it.
//!
//! libcontainer forks and changes process-wide state, so it must never run inside this
//! multi-threaded async process (ARCHITECTURE.md). The shim executes the small,
//! single-threaded `airlock-runtime` binary instead, one invocation per lifecycle step.
//!
//! Create and exec, on the start path, go to a runtime started ahead of need when there is one
//! (a zygote, see `airlock_state::zygote`): [`Runtime::prestart`] starts it, a create or exec
//! hands it its command line and stdio, and the shim waits for its exit as for any runtime.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_state::zygote;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};
use crate::process::setup_limit::EXEC_SETUP_LIMIT;
use crate::stdio::ChildStdio;
use airlock_contract::{cli, ErrorKind};

pub const RUNTIME_BINARY: &str = "airlock-runtime";

#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    /// `/run/airlock/<namespace>`: container state lives in `<root>/<id>/`.
    root: PathBuf,
    /// A runtime started ahead of need, waiting for a create or exec.
    zygote: Arc<Mutex<Option<Zygote>>>,
}

/// A started `airlock-runtime --zygote`: our end of its socket, and its exit status, which a
/// task collects whenever it exits (so an unused zygote leaves no zombie).
#[derive(Debug)]
struct Zygote {
    sock: OwnedFd,
    pid: Option<u32>,
    exit: tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>,
}

impl Runtime {
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        Runtime {
            binary,
            root,
            zygote: Arc::default(),
        }
    }

    /// Starts a runtime that waits for the next create or exec (it exits unused after its idle
    /// time), unless one already waits. Call where a create is about to come: the start costs
    /// ~1.3 ms that the create then does not wait for. Needs the tokio runtime; best effort.
    pub fn prestart(&self) {
        let mut slot = self.zygote.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let spawned = (|| -> std::io::Result<Zygote> {
            let (ours, theirs) = zygote::channel()?;
            let mut child = Command::new(&self.binary)
                .arg(zygote::ARG)
                .stdin(Stdio::from(theirs))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(false)
                .spawn()?;
            let (tx, exit) = tokio::sync::oneshot::channel();
            let pid = child.id();
            tokio::spawn(async move {
                let _ = tx.send(child.wait().await);
            });
            Ok(Zygote {
                sock: ours,
                pid,
                exit,
            })
        })();
        match spawned {
            Ok(z) => *slot = Some(z),
            Err(e) => tracing::debug!("no runtime started ahead: {e}"),
        }
    }

    /// Runs `cmd` in the waiting zygote, if there is one that takes it; None otherwise (the
    /// caller then spawns it). Its exit status when it ran it.
    async fn run_in_zygote(
        &self,
        cmd: &Command,
        stdio: [BorrowedFd<'_>; 3],
        running: &AtomicU32,
    ) -> Option<std::io::Result<ExitStatus>> {
        let z = self
            .zygote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let args: Vec<OsString> = cmd.as_std().get_args().map(|a| a.to_os_string()).collect();
        if let Err(e) = zygote::send(z.sock.as_fd(), &args, stdio) {
            tracing::debug!("the runtime started ahead is gone ({e}); starting one now");
            return None;
        }
        running.store(z.pid.unwrap_or(0), Ordering::Relaxed);
        drop(z.sock);
        match z.exit.await {
            Ok(Ok(status)) if status.code() == Some(i32::from(zygote::UNUSED)) => {
                // It exited idle just as the request came; the request was not run.
                tracing::debug!("the runtime started ahead had exited; starting one now");
                None
            }
            Ok(result) => Some(result),
            Err(_) => Some(Err(std::io::Error::other(
                "lost the exit status of the runtime started ahead",
            ))),
        }
    }

    /// The runtime beside the shim binary, else on PATH.
    pub fn locate(namespace: &str) -> Result<Self> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(RUNTIME_BINARY)))
            .filter(|p| p.is_file());
        let binary = beside
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(RUNTIME_BINARY))
                        .find(|p| p.is_file())
                })
            })
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "{RUNTIME_BINARY} not found beside the shim binary or on PATH; install it next to containerd-shim-airlock-v2"
                ))
            })?;
        Ok(Runtime::new(binary, state_root(namespace)))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The runtime running `command` (its command line: `airlock_contract::cli`), with JSON
    /// logs to `log` when given.
    fn command(&self, log: Option<&Path>, command: cli::Command) -> Command {
        let mut run = cli::Invocation::new(&self.root, command);
        if let Some(log) = log {
            run.log = Some(log.to_owned());
            run.log_format = cli::LogFormat::Json;
            // The file is read only for a failed step's error, or, at debug, for the runtime's
            // phase timings (`run_with_stdio`); writing those for every step costs start time.
            if !tracing::enabled!(tracing::Level::DEBUG) {
                run.log_level = Some(cli::LogLevel::Error);
            }
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(run.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        cmd
    }

    /// The runtime running `command`, for a blocking caller; stdin and stdout are null, stderr
    /// piped (its error).
    pub fn blocking_command(&self, command: cli::Command) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.args(cli::Invocation::new(&self.root, command).to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, mut cmd: Command, what: &str) -> Result<()> {
        let start = Instant::now();
        let out = cmd
            .output()
            .await
            .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        tracing::debug!(
            step = what,
            elapsed_us = start.elapsed().as_micros() as u64,
            "airlock-runtime"
        );
        Self::outcome(out, what)
    }

    /// Ok on success, else the runtime's error from its stderr.
    fn outcome(out: std::process::Output, what: &str) -> Result<()> {
        if out.status.success() {
            return Ok(());
        }
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = format!("{RUNTIME_BINARY} {what} failed with {}", out.status);
        }
        Err(Error::RuntimeFailed {
            kind: ErrorKind::from_exit_code(out.status.code()),
            message: msg,
        })
    }

    /// Create the container, paused before exec. The container inherits `stdio` (or gets a
    /// terminal whose master is sent over `stdio.console_socket`). See [`IdmapRootfs`].
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        seccomp: &[PathBuf],
        idmap: IdmapRootfs<'_>,
        stdio: ChildStdio,
    ) -> Result<()> {
        // The runtime's own stderr is the container's stderr, so its error goes to a log file.
        let log = bundle.join("airlock-runtime.log");
        let (idmap_rootfs, rootfs_overlay) = match idmap {
            IdmapRootfs::No => (false, None),
            IdmapRootfs::Mounted => (true, None),
            IdmapRootfs::Overlay(options) => (true, Some(options.to_owned())),
        };
        let create = cli::Command::Create {
            bundle: bundle.to_owned(),
            pid_file: Some(pid_file.to_owned()),
            seccomp: seccomp.to_vec(),
            idmap_rootfs,
            rootfs_overlay,
            console_socket: stdio.console_socket.clone(),
            id: id.to_owned(),
        };
        let cmd = self.command(Some(&log), create);
        self.run_with_stdio(cmd, stdio, &log, "create", &AtomicU32::new(0))
            .await
    }

    /// Start an extra process (OCI Process JSON at `process`) in the running container;
    /// returns once it runs, its pid in `pid_file`. The process inherits `stdio`.
    pub async fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        log: &Path,
        stdio: ChildStdio,
    ) -> Result<()> {
        let exec = cli::Command::Exec {
            process: process.to_owned(),
            pid_file: Some(pid_file.to_owned()),
            console_socket: stdio.console_socket.clone(),
            id: id.to_owned(),
        };
        let cmd = self.command(Some(log), exec);
        let running = AtomicU32::new(0);
        let step = self.run_with_stdio(cmd, stdio, log, "exec", &running);
        match tokio::time::timeout(EXEC_SETUP_LIMIT, step).await {
            Ok(r) => r,
            Err(_) => {
                // Held from inside the container (see setup_limit): the runtime and every
                // process it started are killed and reaped; nothing of the exec runs.
                let pid = running.load(Ordering::Relaxed) as i32;
                let killed = if pid > 0 {
                    tokio::task::spawn_blocking(move || crate::process::setup_limit::kill_tree(pid))
                        .await
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let _ = tokio::fs::remove_file(log).await;
                tracing::warn!(
                    container = id,
                    runtime = pid,
                    ?killed,
                    "exec setup held past its limit: killed"
                );
                Err(Error::DeadlineExceeded(format!(
                    "the exec's setup in container {id} did not finish within {} s: its setup \
                     processes, which a process inside the container can see, were stopped or \
                     held from inside it; they were killed and nothing was started (retry the \
                     exec; if it keeps failing, look for a process in the container that \
                     signals others)",
                    EXEC_SETUP_LIMIT.as_secs()
                )))
            }
        }
    }

    async fn run_with_stdio(
        &self,
        mut cmd: Command,
        stdio: ChildStdio,
        log: &Path,
        what: &str,
        running: &AtomicU32,
    ) -> Result<()> {
        let start = Instant::now();
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| Error::io("open /dev/null", e))?;
        fn or<'a>(f: &'a Option<OwnedFd>, null: &'a OwnedFd) -> BorrowedFd<'a> {
            f.as_ref().unwrap_or(null).as_fd()
        }
        let zygote_ran = self
            .run_in_zygote(
                &cmd,
                [
                    or(&stdio.stdin, &null),
                    or(&stdio.stdout, &null),
                    or(&stdio.stderr, &null),
                ],
                running,
            )
            .await;
        let status = match zygote_ran {
            Some(status) => {
                status.map_err(|e| Error::io(format!("wait for {}", self.binary.display()), e))?
            }
            None => {
                cmd.stdin(stdio.stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stdout(stdio.stdout.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stderr(stdio.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
                // Not `output()`: that would capture stdout/stderr, which the container
                // inherits.
                let mut child = cmd
                    .spawn()
                    .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
                running.store(child.id().unwrap_or(0), Ordering::Relaxed);
                child
                    .wait()
                    .await
                    .map_err(|e| Error::io(format!("wait for {}", self.binary.display()), e))?
            }
        };
        tracing::debug!(
            step = what,
            elapsed_us = start.elapsed().as_micros() as u64,
            "airlock-runtime"
        );
        let result = if status.success() {
            // The runtime's own phase timings, for explaining a slow start (`AIRLOCK_LOG=debug`).
            if tracing::enabled!(tracing::Level::DEBUG) {
                if let Ok(text) = tokio::fs::read_to_string(&log).await {
                    for line in text.lines() {
                        tracing::debug!(target: "airlock_runtime", "{line}");
                    }
                }
            }
            Ok(())
        } else {
            Err(Error::RuntimeFailed {
                kind: ErrorKind::from_exit_code(status.code()),
                message: last_error_line(log)
                    .await
                    .unwrap_or_else(|| format!("{RUNTIME_BINARY} {what} failed with {status}")),
            })
        };
        let _ = tokio::fs::remove_file(log).await;
        result
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let cmd = self.command(None, cli::Command::Pause { id: id.to_owned() });
        self.run(cmd, "pause").await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let cmd = self.command(None, cli::Command::Resume { id: id.to_owned() });
        self.run(cmd, "resume").await
    }

    /// Apply an OCI LinuxResources JSON file to the container's cgroup.
    pub async fn update(&self, id: &str, resources: &Path) -> Result<()> {
        let update = cli::Command::Update {
            resources: Some(resources.to_owned()),
            id: id.to_owned(),
        };
        self.run(self.command(None, update), "update").await
    }

    /// Let a created container's init exec its workload.
    ///
    /// Without poststart hooks the shim does what `airlock-runtime start` does, itself:
    /// libcontainer's init waits on `<state>/notify.sock` and reads one message to its end,
    /// and `<state>/state.json` then records the container as running. That takes ~0.1 ms,
    /// against ~2 ms for executing the runtime (fork, exec, loading the state). Poststart
    /// hooks run in the runtime, so with hooks, or with a state path too long for a unix
    /// socket address, the runtime does it (see airlock-state).
    pub async fn start(&self, id: &str, poststart_hooks: bool) -> Result<()> {
        let dir = self.root.join(id);
        let socket = dir.join(airlock_state::NOTIFY_SOCKET);
        if poststart_hooks || socket.as_os_str().len() >= SUN_PATH_MAX {
            let cmd = self.command(None, cli::Command::Start { id: id.to_owned() });
            return self.run(cmd, "start").await;
        }
        let t = Instant::now();
        let gone = |e: std::io::Error| {
            Error::FailedPrecondition(format!(
                "container {id} cannot start: its init no longer waits for the start ({}: {e}); delete the container and create it again",
                socket.display()
            ))
        };
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(gone)?;
        stream
            .write_all(airlock_state::START_MESSAGE)
            .await
            .map_err(gone)?;
        stream.shutdown().await.map_err(gone)?;
        drop(stream);
        airlock_state::mark_running(&dir).map_err(|e| {
            Error::Runtime(format!(
                "container {id} was started (its process runs) but its state in {} could not record it: {e}; delete the container",
                dir.display()
            ))
        })?;
        tracing::debug!(
            elapsed_us = t.elapsed().as_micros() as u64,
            "started by the shim (notify socket, state file)"
        );
        Ok(())
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let kill = cli::Command::Kill {
            all,
            id: id.to_owned(),
            signal: signal.to_string(),
        };
        self.run(self.command(None, kill), "kill").await
    }

    /// Remove everything of the container; with `force`, kill what is still running.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        match self.delete_command(id, force) {
            Some(cmd) => self.run(cmd, "delete").await,
            None => Ok(()),
        }
    }

    /// Delete a container whose processes have all exited: airlock-state removes its cgroup
    /// and state in this process (a few rmdirs, against ~3.5 ms for executing the runtime);
    /// when that cannot (poststop hooks, processes left in the cgroup, unexpected state) the
    /// runtime's forced delete does it all.
    pub async fn delete_stopped(&self, id: &str) -> Result<()> {
        let (root, owned) = (self.root.clone(), id.to_string());
        let removed = tokio::task::spawn_blocking(move || {
            airlock_state::remove_stopped(&root, &owned, cgroup_hierarchies())
        })
        .await;
        match removed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(why)) => {
                tracing::debug!(id, "delete left to the runtime: {why}");
                self.delete(id, true).await
            }
            Err(e) => {
                tracing::warn!(id, "delete thread: {e}");
                self.delete(id, true).await
            }
        }
    }

    /// A forced [`Runtime::delete`] that blocks, for `shim delete` (no async runtime there).
    /// Whether there was state to delete (the runtime ran).
    pub fn delete_blocking(&self, id: &str) -> Result<bool> {
        let Some(mut cmd) = self.delete_command(id, true) else {
            return Ok(false);
        };
        let out = cmd
            .as_std_mut()
            .output()
            .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        Self::outcome(out, "delete").map(|()| true)
    }

    /// None when a forced delete has nothing to remove: the runtime would say the same after
    /// a fork and exec, which cost more than the rest of a shim's cleanup (containerd runs
    /// `shim delete` after every shim exit, also after a clean delete).
    fn delete_command(&self, id: &str, force: bool) -> Option<Command> {
        if force && !self.root.join(id).exists() {
            return None;
        }
        let delete = cli::Command::Delete {
            force,
            id: id.to_owned(),
        };
        Some(self.command(None, delete))
    }
}

/// Whether and how the runtime idmaps the rootfs to the spec's user namespace mappings.
#[derive(Debug, Clone, Copy)]
pub enum IdmapRootfs<'a> {
    No,
    /// The rootfs is mounted (or a directory): idmap what is there.
    Mounted,
    /// Nothing is mounted at the rootfs yet: mount this overlay (its options) there, over
    /// idmapped layers.
    Overlay(&'a str),
}

/// With a terminal, the runtime sends the pty master over this socket (its stdio is unused).
/// The cgroup hierarchies libcgroups makes a container's cgroup in, read once per shim (none if
/// mountinfo cannot be read: every delete then goes to the runtime).
fn cgroup_hierarchies() -> &'static [PathBuf] {
    static H: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    H.get_or_init(|| airlock_state::cgroups::host_hierarchies().unwrap_or_default())
}

/// `sizeof(sockaddr_un.sun_path)`, terminating NUL included.
const SUN_PATH_MAX: usize = 108;

/// Where Airlock keeps the state of a containerd namespace's containers.
pub fn state_root(namespace: &str) -> PathBuf {
    Path::new("/run/airlock").join(namespace)
}

/// The runtime's final error from its JSON log (`fields.error` of the last ERROR event).
async fn last_error_line(log: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(log).await.ok()?;
    let errors: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("ERROR"))
        .collect();
    let message = |v: &serde_json::Value| -> Option<String> {
        let fields = v.get("fields")?;
        fields
            .get("error")
            .or_else(|| fields.get("message"))?
            .as_str()
            .map(str::to_string)
    };
    let last = message(errors.last()?)?;
    // libcontainer's init sends only its top-level message across; its first ERROR event in
    // the log names the failing step (e.g. which mount, which errno): add it when the final
    // message points at the log for details.
    let first = errors
        .first()
        .filter(|_| last.contains("--log <file> --debug"));
    match first.and_then(|v| {
        let fields = v.get("fields")?.as_object()?;
        let mut detail: Vec<String> = fields
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .into_iter()
            .collect();
        detail.extend(fields.iter().filter(|(k, _)| *k != "message").map(
            |(k, v)| match v.as_str() {
                Some(s) => format!("{k}={s}"),
                None => format!("{k}={v}"),
            },
        ));
        Some(detail.join(" "))
    }) {
        Some(step) => Some(format!("{last} (first failing step: {step})")),
        None => Some(last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime whose binary does not exist: running it fails with an error naming it.
    fn missing_binary(root: &Path) -> Runtime {
        Runtime::new(PathBuf::from("/nonexistent/airlock-runtime"), root.into())
    }

    #[tokio::test]
    async fn picks_the_final_error_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            concat!(
                "{\"level\":\"INFO\",\"fields\":{\"message\":\"create\"}}\n",
                "{\"level\":\"ERROR\",\"fields\":{\"message\":\"command failed\",\"error\":\"executable not found\"}}\n",
                "{\"level\":\"INFO\",\"fields\":{\"message\":\"close\"}}\n"
            ),
        )
        .unwrap();
        assert_eq!(last_error_line(&p).await.unwrap(), "executable not found");
        std::fs::write(
            &p,
            concat!(
                "{\"level\":\"ERROR\",\"fields\":{\"message\":\"failed to bind mount rootfs\",\"err\":\"Nix(EACCES)\"}}\n",
                "{\"level\":\"ERROR\",\"fields\":{\"error\":\"failed to prepare rootfs; rerun with --log <file> --debug to see the failing step\"}}\n",
            ),
        )
        .unwrap();
        let e = last_error_line(&p).await.unwrap();
        assert!(
            e.ends_with("(first failing step: failed to bind mount rootfs err=Nix(EACCES))"),
            "{e}"
        );
        std::fs::write(&p, "not json\n").unwrap();
        assert_eq!(last_error_line(&p).await, None);
    }

    /// A forced delete without state needs no runtime (the binary here does not exist, so
    /// running it would fail); one with state runs it.
    #[tokio::test]
    async fn forced_delete_without_state_runs_nothing() {
        let root = tempfile::tempdir().unwrap();
        let rt = missing_binary(root.path());
        rt.delete("gone", true).await.unwrap();
        assert!(rt.delete("gone", false).await.is_err());
        std::fs::create_dir(root.path().join("left")).unwrap();
        assert!(rt.delete("left", true).await.is_err());
    }

    /// The shim's own start: the init waiting on the notify socket reads the message to its
    /// end, and the state says running with every other field kept. With poststart hooks the
    /// runtime is executed (here a missing binary, so an error).
    #[tokio::test]
    async fn start_without_hooks_notifies_the_init_and_records_running() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            r#"{"ociVersion":"1.1.0","id":"c1","status":"created","pid":42,"bundle":"/b","use_systemd":false}"#,
        )
        .unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("notify.sock")).unwrap();
        let init = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut msg = String::new();
            std::io::Read::read_to_string(&mut s, &mut msg).unwrap();
            msg
        });
        let rt = missing_binary(root.path());
        rt.start("c1", false).await.unwrap();
        assert_eq!(init.join().unwrap(), "start container");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        assert_eq!(state["status"], "running");
        assert_eq!(state["pid"], 42);
        assert_eq!(state["bundle"], "/b");
        assert!(!dir.join("state.json.tmp").exists());

        // Nobody waits any more (the init is gone): a clear error, the state untouched.
        std::fs::write(dir.join("state.json"), r#"{"status":"created"}"#).unwrap();
        let e = rt.start("c1", false).await.unwrap_err().to_string();
        assert!(e.contains("no longer waits for the start"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join("state.json")).unwrap(),
            r#"{"status":"created"}"#
        );
        let e = rt.start("c1", true).await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/airlock-runtime"), "{e}");
    }

    /// What the shim cannot remove itself goes to the runtime (here a missing binary, so the
    /// error names it): poststop hooks, state it cannot read. Without state: nothing to do.
    #[tokio::test]
    async fn stopped_delete_falls_back_to_the_runtime() {
        let root = tempfile::tempdir().unwrap();
        let rt = missing_binary(root.path());
        rt.delete_stopped("none").await.unwrap();
        let dir = root.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        for config in [
            r#"{"hooks":{"poststop":[{"path":"/bin/true"}]},"cgroup_path":"/ns/c1"}"#,
            "not json",
        ] {
            std::fs::write(dir.join("youki_config.json"), config).unwrap();
            let e = rt.delete_stopped("c1").await.unwrap_err().to_string();
            assert!(e.contains("/nonexistent/airlock-runtime"), "{e}");
            assert!(dir.exists());
        }
    }

    #[test]
    fn state_root_is_per_namespace() {
        assert_eq!(state_root("k8s.io"), PathBuf::from("/run/airlock/k8s.io"));
    }
}
