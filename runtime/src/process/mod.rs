//! The process backend: containers as Linux processes created by youki's libcontainer.
//!
//! Each operation is one short-lived call meant to run in a single-threaded process (the
//! `airlock-runtime` binary): libcontainer forks and changes process-wide state, so the
//! multi-threaded shim must never call it directly.
//!
//! Process tree: libcontainer forks an intermediate process, which clones the container init
//! with `CLONE_PARENT`, so the init is a *child of the runtime process* and the intermediate
//! is reaped before `create` returns. When the runtime process exits, the kernel reparents the
//! init to the nearest child subreaper (the shim) before the shim can observe the runtime's
//! exit, so the shim can `pidfd_open` + `waitid` the init. (`as_sibling` is left off: it
//! would make the intermediate a child of the shim, leaving it a zombie for the shim to reap.)
//!
//! State lives in `<root>/<id>/`: libcontainer's `state.json`, `youki_config.json`, the
//! `notify.sock` the init waits on until `start`, and our `airlock.json` (cgroup parents to
//! remove on delete).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use serde::Serialize;
use tracing::{debug, info, info_span};

use crate::error::{one_line_chain, Result, RuntimeError};
use crate::executor::{extract_message, AirlockExecutor, BpfProgram};
use crate::idmap;
use crate::spec::{cgroup_path, load_bundle};
use airlock_state::blkio::BlockIoProbe;
use airlock_state::cgroups::{parent_registry, CgroupRecord};
use airlock_state::RECORD_FILE;

/// Default state root (the shim passes `/run/airlock/<containerd-namespace>`).
pub use airlock_contract::cli::DEFAULT_ROOT;

/// The container's seccomp programs, kept in its state dir for exec processes:
/// `seccomp-0.bpf`, `seccomp-1.bpf`, ... in install order.
fn seccomp_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("seccomp-{i}.bpf"))
}

/// Options of [`ProcessRuntime::create`].
#[derive(Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    /// Where to write the init's host pid.
    pub pid_file: Option<PathBuf>,
    /// The executor (seccomp program etc.). Defaults to a plain [`AirlockExecutor`].
    pub executor: Option<AirlockExecutor>,
    /// Seccomp program files (see [`BpfProgram::from_file`]), installed in this order in the
    /// init and, kept in the state dir, in every exec process.
    pub seccomp: Vec<PathBuf>,
    /// Put an idmapped clone of the rootfs on top of it, mapped like the container's new user
    /// namespace (`linux.uidMappings`/`gidMappings`), so the image's files belong to the
    /// container's root without a chown. Removed again on delete and on a failed create.
    pub idmap_rootfs: bool,
    /// With `idmap_rootfs`: the rootfs is not mounted yet, mount this overlay (containerd's
    /// mount options for it) at it over idmapped layers, instead of idmapping the overlay
    /// mounted there. Whoever mounts a rootfs unmounts it: the caller, on delete and after a
    /// failed create, as for an overlay it mounted itself.
    pub rootfs_overlay: Option<String>,
    /// A listening unix socket that receives the pty master (SCM_RIGHTS), exactly when the
    /// spec's `process.terminal` is true: the init's stdio is then the pty's slave, which is
    /// also its controlling terminal.
    pub console_socket: Option<PathBuf>,
}

/// Result of a successful create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// Host pid of the container init, waiting for `start`.
    pub pid: i32,
}

/// OCI runtime state of a container.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub oci_version: String,
    pub id: String,
    /// `creating`, `created`, `running`, `stopped` or `paused`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// Containers under one state root.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
}

fn status_str(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

/// The shim's rule too (`airlock_contract`), checked before anything is created.
pub fn validate_id(id: &str) -> Result<()> {
    Ok(airlock_contract::validate_id(id)?)
}

/// Reaps every child of this process. Only used on the failed-create path, where the only
/// children are libcontainer's intermediate/init processes, which exit on their own after
/// reporting the error (or were SIGKILLed by libcontainer's cgroup cleanup). Without this
/// they would be reparented to the shim as zombies.
fn reap_children() {
    loop {
        match nix::sys::wait::waitpid(None::<nix::unistd::Pid>, None) {
            Ok(status) => debug!(?status, "reaped child of failed create"),
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}

impl ProcessRuntime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        if !dir.join("state.json").exists() {
            return Err(RuntimeError::NotFound {
                id: id.to_owned(),
                root: self.root.clone(),
            });
        }
        Container::load(dir).map_err(|e| RuntimeError::backend(id, "load", &e))
    }

    /// Creates the container; returns once its init waits for `start`.
    /// On any error, nothing is left behind: no state dir, cgroup or process.
    pub fn create(&self, opts: CreateOptions) -> Result<Created> {
        let t0 = Instant::now();
        let id = opts.id.as_str();
        let _span = info_span!("create", id).entered();
        validate_id(id)?;

        let bundle = {
            let _s = info_span!("parse_spec").entered();
            let dir = std::path::absolute(&opts.bundle)
                .map_err(|e| RuntimeError::Io(format!("bundle path {:?}: {e}", opts.bundle)))?;
            let b = load_bundle(&dir)?;
            debug!(elapsed_us = t0.elapsed().as_micros() as u64, "spec parsed");
            b
        };

        // Held until this create returns, or this process ends: a cleanup after a shim that
        // died meanwhile waits for it (airlock_state::create_lock).
        let _creating = airlock_state::create_lock::lock(&self.root, id).map_err(|source| {
            RuntimeError::StateRoot {
                root: self.root.clone(),
                source,
            }
        })?;
        let dir = self.container_dir(id);
        if dir.exists() {
            return Err(RuntimeError::AlreadyExists {
                id: id.to_owned(),
                root: self.root.clone(),
            });
        }

        let terminal = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        check_console_socket(terminal, opts.console_socket.as_deref(), || {
            format!("config.json in {}", bundle.dir.display())
        })?;

        let linux = bundle
            .spec
            .linux()
            .as_ref()
            .expect("checked by load_bundle");
        crate::node::check_block_io(linux.resources().as_ref(), BlockIoProbe::detect)?;
        let cg_path = cgroup_path(&bundle.spec, id);
        let record = {
            let _s = info_span!("cgroup_prepare", path = %cg_path.display()).entered();
            let hierarchies = airlock_state::cgroups::host_hierarchies()
                .map_err(|e| RuntimeError::Io(format!("reading /proc/self/mountinfo: {e}")))?;
            let claim = crate::node::check_cgroup_claim(&hierarchies, &cg_path)?;
            debug!(?claim, "cgroup claimed");
            CgroupRecord::for_hierarchies(&hierarchies, &cg_path)
        };

        let mut executor = opts
            .executor
            .clone()
            .unwrap_or_default()
            .with_create_started(t0);
        for path in &opts.seccomp {
            let _s = info_span!("seccomp_load").entered();
            executor = executor.with_seccomp(BpfProgram::from_file(path)?);
        }

        // libcontainer writes the pid file as soon as the init is forked, before it is
        // ready; a failed create must not leave a pid file naming a dead process.
        let pid_file_existed = opts.pid_file.as_deref().is_some_and(Path::exists);

        let mut idmapped = None;
        // Detached idmapped layers, open until the init is forked (see idmap_rootfs).
        let mut detached_layers = Vec::new();
        let idmap_us = if opts.idmap_rootfs {
            let t = Instant::now();
            let _s = info_span!("idmap_rootfs").entered();
            let linux = bundle
                .spec
                .linux()
                .as_ref()
                .expect("checked by load_bundle");
            let userns = linux.namespaces().as_ref().and_then(|ns| {
                ns.iter()
                    .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
            });
            let source = match (userns, linux.uid_mappings(), linux.gid_mappings()) {
                (Some(ns), _, _) if ns.path().is_some() => {
                    idmap::UserNs::Path(ns.path().as_deref().expect("checked"))
                }
                (Some(_), Some(u), Some(g)) if !u.is_empty() && !g.is_empty() => {
                    idmap::UserNs::Maps { uid: u, gid: g }
                }
                _ => {
                    return Err(RuntimeError::ConfigInvalid {
                        bundle: bundle.dir.clone(),
                        detail: "an idmapped rootfs needs a user namespace: a new one with \
                                 linux.uidMappings and linux.gidMappings, or one joined by path"
                            .into(),
                    })
                }
            };
            match idmap::idmap_rootfs(
                &bundle.rootfs,
                source,
                opts.rootfs_overlay.as_deref(),
                &mut detached_layers,
            ) {
                Ok(idmap::Idmapped::Unsupported) => {
                    tracing::warn!(
                        rootfs = %bundle.rootfs.display(),
                        "the rootfs's filesystem cannot be idmapped (tmpfs before Linux 6.3?): \
                         the image's files appear owned by nobody in the container; the user \
                         namespace is in force"
                    );
                    idmapped = Some(idmap::Idmapped::Unsupported);
                }
                Ok(how) => idmapped = Some(how),
                Err(e) => return Err(RuntimeError::Message(e.to_string())),
            }
            t.elapsed().as_micros() as u64
        } else {
            0
        };

        let t_build = Instant::now();
        let built = {
            let _s = info_span!("libcontainer_build").entered();
            self.build(
                id,
                &bundle.dir,
                opts.pid_file.as_deref(),
                opts.console_socket.as_deref(),
                executor.clone(),
            )
        };
        let build_us = t_build.elapsed().as_micros() as u64;

        let container = match built {
            Ok(c) => c,
            Err(e) => {
                let err = map_create_error(id, &e, &self.root);
                self.cleanup_failed_create(id, &cg_path, &record);
                if idmapped == Some(idmap::Idmapped::OnTop) {
                    idmap::unmount(&bundle.rootfs);
                }
                if let (Some(p), false) = (&opts.pid_file, pid_file_existed) {
                    let _ = std::fs::remove_file(p);
                }
                info!(
                    elapsed_us = t0.elapsed().as_micros() as u64,
                    error = %err,
                    "create failed, cleaned up"
                );
                return Err(err);
            }
        };

        let pid = container.pid().map(|p| p.as_raw()).unwrap_or(-1);
        let memfd = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().as_ref())
            .and_then(|s| s.get("vm.memfd_noexec"));
        if let Some(value) = memfd {
            let _s = info_span!("memfd_noexec").entered();
            if let Err(e) = crate::node::write_pid_ns_sysctl(pid, "vm.memfd_noexec", value) {
                let _ = self.delete(id, true);
                if idmapped == Some(idmap::Idmapped::OnTop) {
                    idmap::unmount(&bundle.rootfs);
                }
                return Err(e);
            }
        }
        if idmapped == Some(idmap::Idmapped::OnTop) {
            if let Err(e) = idmap::write_marker(&dir, &bundle.rootfs) {
                let _ = self.delete(id, true);
                idmap::unmount(&bundle.rootfs);
                return Err(RuntimeError::Io(format!(
                    "cannot record the idmapped rootfs in {}: {e}; check the state root",
                    dir.display()
                )));
            }
        }
        if let Err(e) = record.mark_created(&parent_registry(&self.root)) {
            tracing::warn!(error = %e, "could not mark created cgroup parents; they may be left on delete");
        }
        for (i, prog) in executor.seccomp().iter().enumerate() {
            if let Err(e) = std::fs::write(seccomp_file(&dir, i), prog.to_bytes()) {
                // Without it an exec would run unfiltered: refuse the container instead.
                let _ = self.delete(id, true);
                return Err(RuntimeError::Io(format!(
                    "cannot keep the seccomp program in {}: {e}; check the state root",
                    dir.display()
                )));
            }
        }
        if !record.parents.is_empty() {
            let json = serde_json::to_vec(&record).expect("record serializes");
            if let Err(e) = std::fs::write(dir.join(RECORD_FILE), json) {
                tracing::warn!(error = %e, "could not save cgroup record; parents may be left on delete");
            }
        }
        info!(
            pid,
            idmap_us,
            idmap = ?idmapped,
            build_us,
            total_us = t0.elapsed().as_micros() as u64,
            "created: init waiting for start"
        );
        Ok(Created { pid })
    }

    fn build(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: Option<&Path>,
        console_socket: Option<&Path>,
        executor: AirlockExecutor,
    ) -> std::result::Result<Container, LibcontainerError> {
        ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(&self.root)?
            .with_pid_file(pid_file)?
            .with_console_socket(console_socket)
            .with_executor(executor)
            .validate_id()?
            .as_init(bundle)
            // PID 1 is not always systemd; Airlock manages cgroups through cgroupfs.
            .with_systemd(false)
            .with_detach(true)
            .build()
    }

    fn cleanup_failed_create(&self, id: &str, cg_path: &Path, record: &CgroupRecord) {
        let dir = self.container_dir(id);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove state dir");
            }
        }
        // libcontainer removes the leaf only when the failure happened after forking;
        // removing again is a no-op when it is gone.
        remove_cgroup_leaf(id, cg_path);
        record.remove_empty_parents(&parent_registry(&self.root));
        reap_children();
    }

    /// Lets the init exec the workload.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut c = self.load(id)?;
        c.start()
            .map_err(|e| lifecycle_error(id, "start", "only a created container can be started", e))
    }

    /// Sends `signal` to the init, or with `all` to every process in the container's cgroup.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let mut c = self.load(id)?;
        c.kill(signal, all).map_err(|e| {
            lifecycle_error(
                id,
                "kill",
                "the container has no running process to signal",
                e,
            )
        })
    }

    /// Removes the container's state dir and cgroup (and cgroup parents its create made).
    /// `force` kills remaining processes first and makes an unknown id a silent success.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        if !dir.exists() {
            if force {
                return Ok(());
            }
            return Err(RuntimeError::NotFound {
                id: id.to_owned(),
                root: self.root.clone(),
            });
        }
        let outside = airlock_state::Outside::read(&dir);
        let mut c = match Container::load(dir.clone()) {
            Ok(c) => c,
            Err(e) if force => {
                // Half-written state (crash during create): remove what we can.
                tracing::warn!(error = %one_line_chain(&e), "state unreadable, removing dir");
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| RuntimeError::Io(format!("removing {}: {e}", dir.display())))?;
                outside.remove(&self.root);
                return Ok(());
            }
            Err(e) => return Err(RuntimeError::backend(id, "load", &e)),
        };
        // After SIGKILL the container's processes stay in its cgroup as zombies until their
        // reaper collects them (after a shim crash that is containerd, not us), and cgroup v1
        // refuses to remove a cgroup until then: a forced delete retries for up to 3 s.
        let mut tries = 0;
        while let Err(e) = c.delete(force) {
            tries += 1;
            if !force || tries >= 30 {
                return Err(lifecycle_error(
                    id,
                    "delete",
                    "stop it first or use delete --force",
                    e,
                ));
            }
            tracing::debug!(tries, error = %one_line_chain(&e), "delete: cgroup busy, retrying");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        outside.remove(&self.root);
        Ok(())
    }

    fn cgroup_manager(&self, c: &Container) -> Result<libcgroups::common::AnyCgroupManager> {
        let id = c.id().to_owned();
        let cfg = libcgroups::common::CgroupConfig {
            cgroup_path: c
                .spec()
                .map_err(|e| RuntimeError::backend(&id, "load config of", &e))?
                .cgroup_path,
            systemd_cgroup: false,
            container_name: id.clone(),
        };
        libcgroups::common::create_cgroup_manager(cfg).map_err(|e| RuntimeError::Backend {
            id,
            action: "open the cgroup of",
            detail: e.to_string(),
        })
    }

    /// Freezes every process of the container (cgroup freezer).
    pub fn pause(&self, id: &str) -> Result<()> {
        let _span = info_span!("pause", id).entered();
        let mut c = self.load(id)?;
        c.pause()
            .map_err(|e| lifecycle_error(id, "pause", "only a running container can be paused", e))
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let _span = info_span!("resume", id).entered();
        let mut c = self.load(id)?;
        c.resume()
            .map_err(|e| lifecycle_error(id, "resume", "only a paused container can be resumed", e))
    }

    /// Applies new resource limits to the container's cgroup. Fields left out of
    /// `resources` are not changed.
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        use libcgroups::common::{CgroupManager, ControllerOpt};
        let _span = info_span!("update", id).entered();
        let c = self.load(id)?;
        if matches!(c.status(), ContainerStatus::Stopped) {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "update",
                status: "stopped".into(),
                hint: "limits can only be changed while the container exists and runs",
            });
        }
        // libcgroups' v2 manager rebuilds the device BPF program on every apply from the rules
        // it is given: an update that names no devices would replace the container's own rules
        // with the defaults. Keep them by passing the rules the container was created with.
        crate::node::check_block_io(Some(resources), BlockIoProbe::detect)?;
        let mut resources = resources.clone();
        if resources.devices().is_none() {
            let path = c.bundle().join("config.json");
            let bytes = std::fs::read(&path).map_err(|e| RuntimeError::Backend {
                id: id.to_owned(),
                action: "update",
                detail: format!(
                    "cannot read {} for the container's device rules: {e}; the bundle must \
                     stay in place while the container exists",
                    path.display()
                ),
            })?;
            let spec = crate::spec::parse_spec(c.bundle(), &bytes)?;
            resources.set_devices(
                spec.linux()
                    .as_ref()
                    .and_then(|l| l.resources().as_ref())
                    .and_then(|r| r.devices().clone()),
            );
        }
        let m = self.cgroup_manager(&c)?;
        m.apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| RuntimeError::Backend {
            id: id.to_owned(),
            action: "update",
            detail: e.to_string(),
        })
    }

    /// Runs an extra process (`process` is an OCI `Process`) inside the running container:
    /// its namespaces and cgroup, with the capabilities and no_new_privs the process names.
    /// Returns once the process runs (its host pid is written to `pid_file`); the process
    /// becomes a child of the caller's subreaper when this runtime process exits.
    /// With `console_socket` (exactly when the process has `terminal: true`), its stdio is a
    /// new pty's slave, its controlling terminal; the master is sent over the socket.
    pub fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: Option<&Path>,
        console_socket: Option<&Path>,
        executor: Option<AirlockExecutor>,
    ) -> Result<i32> {
        let t0 = Instant::now();
        let _span = info_span!("exec", id).entered();
        let c = self.load(id)?;
        if !matches!(
            c.status(),
            ContainerStatus::Running | ContainerStatus::Created
        ) {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "exec in",
                status: status_str(c.status()).into(),
                hint: "exec needs a running container",
            });
        }
        let terminal = read_process(process)?.terminal().unwrap_or(false);
        check_console_socket(terminal, console_socket, || {
            format!("process {}", process.display())
        })?;
        let mut executor = executor.unwrap_or_default();
        if executor.seccomp().is_empty() {
            let dir = self.container_dir(id);
            for i in 0.. {
                let file = seccomp_file(&dir, i);
                if !file.exists() {
                    break;
                }
                executor = executor.with_seccomp(BpfProgram::from_file(&file)?);
            }
        }
        let pid = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(&self.root)
            .and_then(|b| b.with_pid_file(pid_file))
            .map(|b| {
                b.with_console_socket(console_socket)
                    .with_executor(executor)
            })
            .and_then(|b| {
                b.as_tenant()
                    .with_process(Some(process))
                    .with_detach(true)
                    .build()
            })
            .map_err(|e| {
                reap_children();
                map_create_error(id, &e, &self.root)
            })?;
        info!(
            pid = pid.as_raw(),
            total_us = t0.elapsed().as_micros() as u64,
            "exec process running"
        );
        Ok(pid.as_raw())
    }

    /// The container's OCI state.
    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let c = self.load(id)?;
        Ok(ContainerState {
            oci_version: oci_spec::runtime::VERSION.to_owned(),
            id: c.id().to_owned(),
            status: status_str(c.status()).to_owned(),
            pid: c.pid().map(|p| p.as_raw()),
            bundle: c.bundle().clone(),
            annotations: c.state.annotations.clone().unwrap_or_default(),
            created: c.created().map(|t| t.to_rfc3339()),
        })
    }
}

/// Maps a libcontainer lifecycle error: a wrong-state error says what state the container is in
/// and what to do (`hint`); anything else is a backend failure of `action`.
fn lifecycle_error(
    id: &str,
    action: &'static str,
    hint: &'static str,
    e: LibcontainerError,
) -> RuntimeError {
    match e {
        LibcontainerError::IncorrectStatus(s) => RuntimeError::WrongState {
            id: id.to_owned(),
            action,
            status: status_str(s).into(),
            hint,
        },
        e => RuntimeError::backend(id, action, &e),
    }
}

/// libcontainer needs a console socket exactly when the process has a terminal; say so in our
/// words before anything is created.
fn check_console_socket(
    terminal: bool,
    console_socket: Option<&Path>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match (terminal, console_socket) {
        (true, None) => Err(RuntimeError::ConsoleSocketMissing { what: what() }),
        (false, Some(_)) => Err(RuntimeError::ConsoleSocketUnused { what: what() }),
        _ => Ok(()),
    }
}

/// An exec's OCI Process JSON.
fn read_process(path: &Path) -> Result<oci_spec::runtime::Process> {
    let raw = std::fs::read(path).map_err(|e| {
        RuntimeError::Io(format!(
            "cannot read the process spec {}: {e}; pass the OCI Process JSON file",
            path.display()
        ))
    })?;
    serde_json::from_slice(&raw).map_err(|e| {
        RuntimeError::Io(format!(
            "the process spec {} is not an OCI Process JSON: {e}; fix the file",
            path.display()
        ))
    })
}

fn remove_cgroup_leaf(id: &str, cg_path: &Path) {
    let cfg = libcgroups::common::CgroupConfig {
        cgroup_path: cg_path.to_owned(),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    };
    match libcgroups::common::create_cgroup_manager(cfg) {
        Ok(m) => {
            use libcgroups::common::CgroupManager;
            if let Err(e) = m.remove() {
                tracing::warn!(error = %e, "could not remove cgroup of failed create");
            }
        }
        Err(e) => tracing::warn!(error = %e, "no cgroup manager for cleanup"),
    }
}

fn map_create_error(id: &str, e: &LibcontainerError, root: &Path) -> RuntimeError {
    let text = one_line_chain(e);
    if let Some((kind, message)) = extract_message(&text) {
        return RuntimeError::FromInit {
            kind,
            message: message.to_owned(),
        };
    }
    if text.contains("No space left on device") && text.contains(&*root.to_string_lossy()) {
        return RuntimeError::Io(format!(
            "cannot create container {id:?}: the state root {} is full (No space left on \
             device): free space on its filesystem and retry; nothing of the container was \
             kept ({text})",
            root.display()
        ));
    }
    match e {
        LibcontainerError::Exist => RuntimeError::AlreadyExists {
            id: id.to_owned(),
            root: PathBuf::new(),
        },
        _ => {
            let mut err = RuntimeError::backend(id, "create", e);
            if let RuntimeError::Backend { detail, .. } = &mut err {
                // libcontainer sends only the top-level message across from the init
                // process; its log has the failing step (e.g. the mount and errno).
                detail.push_str("; rerun with --log <file> --debug to see the failing step");
            }
            err
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim reads libcontainer's files itself (airlock-state): it starts a container
    /// through this socket in the state dir and sets `status` in this state file to this
    /// spelling, and it deletes a stopped container from the hooks and cgroup path of this
    /// config file. A libcontainer update that changes any of them fails here.
    #[test]
    fn the_shims_reading_of_the_state_matches_libcontainer() {
        use libcontainer::container::{ContainerStatus, State};
        assert_eq!(
            libcontainer::notify_socket::NOTIFY_FILE,
            airlock_state::NOTIFY_SOCKET
        );
        assert_eq!(
            State::file_path(Path::new("/r/c")),
            Path::new("/r/c").join(airlock_state::STATE_FILE)
        );
        let dir = tempfile::tempdir().unwrap();
        State::new("c", ContainerStatus::Created, Some(1), "/b".into())
            .save(dir.path())
            .unwrap();
        airlock_state::mark_running(dir.path()).unwrap();
        assert_eq!(
            State::load(dir.path()).unwrap().status,
            ContainerStatus::Running
        );

        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "hooks": {"poststop": [{"path": "/bin/true"}]},
            "linux": {"cgroupsPath": "/ns/c"}
        }))
        .unwrap();
        libcontainer::config::YoukiConfig::from_spec(&spec, "c")
            .unwrap()
            .save(dir.path())
            .unwrap();
        let saved: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(airlock_state::YOUKI_CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(saved["cgroup_path"], "/ns/c");
        assert_eq!(saved["hooks"]["poststop"][0]["path"], "/bin/true");
    }

    /// Our libcontainer overwrites its state file in place (its `AIRLOCK PATCH (state saved
    /// in place)`): a shorter state is padded, never truncated, and still loads, here and in
    /// the shim's readers.
    #[test]
    fn libcontainer_saves_its_state_in_place() {
        use libcontainer::container::{ContainerStatus, State};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = State::file_path(dir.path());
        let long_bundle = format!("/b/{}", "x".repeat(300));
        State::new("c", ContainerStatus::Creating, None, long_bundle.into())
            .save(dir.path())
            .unwrap();
        let (len, inode) = {
            let m = std::fs::metadata(&file).unwrap();
            (m.len(), m.ino())
        };
        State::new("c", ContainerStatus::Created, Some(7), "/b".into())
            .save(dir.path())
            .unwrap();
        let m = std::fs::metadata(&file).unwrap();
        assert_eq!((m.len(), m.ino()), (len, inode), "not overwritten in place");
        let loaded = State::load(dir.path()).unwrap();
        assert_eq!(loaded.status, ContainerStatus::Created);
        assert_eq!(loaded.bundle, Path::new("/b"));
        airlock_state::mark_running(dir.path()).unwrap();
        assert_eq!(
            State::load(dir.path()).unwrap().status,
            ContainerStatus::Running
        );
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
    }

    #[test]
    fn ids_follow_the_shims_rules() {
        assert!(validate_id("abc-1.2_3+x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            let e = validate_id(bad).unwrap_err();
            assert!(e.to_string().starts_with("container id"), "{e}");
            assert_eq!(e.kind(), airlock_contract::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn unknown_ids_are_not_found_but_force_delete_succeeds() {
        let d = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(d.path());
        assert!(matches!(
            rt.start("nope").unwrap_err(),
            RuntimeError::NotFound { .. }
        ));
        assert!(matches!(
            rt.state("nope").unwrap_err(),
            RuntimeError::NotFound { .. }
        ));
        assert!(matches!(
            rt.delete("nope", false).unwrap_err(),
            RuntimeError::NotFound { .. }
        ));
        rt.delete("nope", true).unwrap();
    }

    #[test]
    fn status_strings_are_oci() {
        assert_eq!(status_str(ContainerStatus::Created), "created");
        assert_eq!(status_str(ContainerStatus::Stopped), "stopped");
    }
}
