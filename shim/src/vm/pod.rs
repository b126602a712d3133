//! The pod's VM. It boots on the pod's first create, on a keeper thread that lives as long as
//! the VM: the VMM and virtiofsd get SIGKILL when that thread ends (`PR_SET_PDEATHSIG`), so a
//! killed shim leaves no VM behind. The VM has one virtio-fs share, `<dir>/shared`, into
//! which each container's rootfs is bound (a share cannot be added to a running microvm), and
//! a router thread hands the agent's messages to the processes' stdio pipes and exit waiters.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airlock_agent::protocol::{FromAgent, Request, Response, Stream};
use airlock_net::PodNetwork;

use super::hostcg::{self, HostCgroup};
use super::network::{Attached, Detach};
use airlock_policies::config::VmConfig;
use airlock_vm::{Accelerator, Nic, Qemu, RunAs, Share, Vm, VmSpec};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::sandbox::ExitInfo;

/// Where the guest mounts the pod's share (see `share.rs`).
pub use airlock_agent::protocol::SHARE_ROOT as GUEST_SHARED;
/// How long a boot may take before the create fails (emulation on a loaded node is slow).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long a call to the agent may take.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Where a process's output and exit go.
pub struct Route {
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    pub exited: Option<oneshot::Sender<ExitInfo>>,
    /// Set when the exit arrives (the process's input relay ends with it).
    pub done: Option<Arc<AtomicBool>>,
}

type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// The OOM kills of a container's guest cgroup, as the agent reports them.
#[derive(Default)]
pub struct OomCount {
    pub kills: AtomicU64,
    pub notify: tokio::sync::Notify,
}

type Ooms = Arc<Mutex<HashMap<String, Arc<OomCount>>>>;

pub struct PodVm {
    pub vm: Arc<Vm>,
    pub dir: PathBuf,
    routes: Routes,
    ooms: Ooms,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    keeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The redirects in the pod's network namespace, removed after the VM.
    detach: Mutex<Option<Detach>>,
    /// The host cgroup of QEMU and virtiofsd, removed after them.
    cgroup: Mutex<Option<Arc<HostCgroup>>>,
}

/// Removes the redirects to the VM's taps from the pod's network namespace.
fn undo_network(detach: Option<Detach>) {
    if let Some(d) = detach {
        d.run();
    }
}

/// What a VM's directory holds besides the share (virtiofsd writes `fs.sock.pid`).
const VM_FILES: &[&str] = &[
    CGROUP_FILE,
    "ctl.sock",
    "fs.sock",
    "fs.sock.pid",
    "console.log",
    "qemu.log",
];

/// Lists the VM's host cgroup directories, for the cleanup after a killed shim.
pub const CGROUP_FILE: &str = "cgroup";

/// Removes what the VM made in `dir`, and `dir` if that empties it. Never recursive: a
/// container's rootfs may still be bound into the share.
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir(dir.join("shared"));
    for f in VM_FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir(dir);
}

fn spawn_virtiofsd(
    binary: &Path,
    socket: &Path,
    shared: &Path,
    cgroup_procs: &[RawFd],
) -> std::io::Result<Child> {
    let mut cmd = Command::new(binary);
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        .args(["--sandbox", "chroot", "--cache", "auto"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        let procs = cgroup_procs.to_vec();
        cmd.pre_exec(move || {
            hostcg::join(&procs)?;
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
    cmd.spawn()
}

fn boot_on_this_thread(
    config: &VmConfig,
    accelerator: Accelerator,
    dir: &Path,
    network: Option<(PodNetwork, Vec<OwnedFd>)>,
    run_as: RunAs,
    cgroup: &HostCgroup,
) -> Result<(Vm, Child)> {
    // Open until both have started: each joins the pod's cgroup before its exec.
    let proc_files = cgroup.procs_files()?;
    let procs: Vec<RawFd> = proc_files.iter().map(|f| f.as_raw_fd()).collect();
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| Error::io("create the VM's share", e))?;
    let socket = dir.join("fs.sock");
    let mut virtiofsd =
        spawn_virtiofsd(&config.virtiofsd, &socket, &shared, &procs).map_err(|e| {
            Error::FailedPrecondition(format!(
                "cannot start virtiofsd {} ([vm] virtiofsd in the node config): {e}",
                config.virtiofsd.display()
            ))
        })?;
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(20) || matches!(virtiofsd.try_wait(), Ok(Some(_)))
        {
            let _ = virtiofsd.kill();
            let _ = virtiofsd.wait();
            return Err(Error::FailedPrecondition(format!(
                "virtiofsd {} did not open its socket",
                config.virtiofsd.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let spec = VmSpec {
        kernel: config.kernel.clone(),
        initramfs: config.initramfs.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        accelerator,
        control_socket: dir.join("ctl.sock"),
        console_log: dir.join("console.log"),
        shares: vec![Share {
            tag: "shared".into(),
            socket,
        }],
        nics: network
            .as_ref()
            .map(|(network, taps)| {
                network
                    .interfaces
                    .iter()
                    .zip(taps)
                    .map(|(i, tap)| Nic {
                        fd: tap.as_raw_fd(),
                        mac: i.mac,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        run_as: Some(run_as),
        cgroup_procs: procs.clone(),
    };
    let booted = Vm::boot(
        &Qemu::new(&config.qemu),
        &spec,
        &dir.join("qemu.log"),
        BOOT_LIMIT,
    );
    let vm = match booted {
        Ok(vm) => vm,
        Err(e) => {
            let _ = virtiofsd.kill();
            let _ = virtiofsd.wait();
            return Err(Error::FailedPrecondition(format!("the pod's VM: {e}")));
        }
    };
    // The VMM holds the taps now; the network goes with it.
    let network = network.map(|(n, _)| n).unwrap_or_default();
    let mut setup = vec![(
        "mount its share",
        Request::Mount {
            tag: "shared".into(),
            target: GUEST_SHARED.into(),
            read_only: false,
        },
    )];
    let interfaces: Vec<String> = network
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(move |a| format!("{} {a}", i.name)))
        .collect();
    if !network.interfaces.is_empty() {
        setup.push(("take over the pod's network", Request::Network { network }));
    }
    for (what, req) in setup {
        match vm.call(&req, CALL_LIMIT) {
            Ok(Response::Ok) => {}
            other => {
                drop(vm);
                let _ = virtiofsd.kill();
                let _ = virtiofsd.wait();
                let why = match other {
                    Ok(Response::Error { message, .. }) => message,
                    other => format!("{other:?}"),
                };
                return Err(Error::FailedPrecondition(format!(
                    "the pod's VM could not {what}: {why}"
                )));
            }
        }
    }
    if !interfaces.is_empty() {
        info!(addresses = %interfaces.join(", "), "the pod's network reaches the VM");
    }
    Ok((vm, virtiofsd))
}

fn route(routes: &Routes, ooms: &Ooms, msg: FromAgent) {
    match msg {
        FromAgent::Output {
            process,
            stream,
            data,
        } => {
            // Written outside the lock: a reader that is slow to drain one pipe must not hold
            // up the routes of every other process (nor the shim's requests that set them).
            let sink = {
                let table = routes.lock().unwrap();
                let Some(r) = table.get(&process) else {
                    return;
                };
                let sink = match stream {
                    Stream::Stdout => &r.stdout,
                    Stream::Stderr => &r.stderr,
                };
                sink.as_ref().and_then(|f| f.try_clone().ok())
            };
            if let Some(mut f) = sink {
                if f.write_all(&data).is_err() {
                    let mut table = routes.lock().unwrap();
                    if let Some(r) = table.get_mut(&process) {
                        match stream {
                            Stream::Stdout => r.stdout = None,
                            Stream::Stderr => r.stderr = None,
                        }
                    }
                }
            }
        }
        FromAgent::Exited { process, status } => {
            // Dropping the pipes' write ends lets the copy drain and end.
            let r = routes.lock().unwrap().remove(&process);
            if let Some(done) = r.as_ref().and_then(|r| r.done.as_ref()) {
                done.store(true, Ordering::SeqCst);
            }
            if let Some(tx) = r.and_then(|r| r.exited) {
                let _ = tx.send(ExitInfo {
                    status,
                    at: SystemTime::now(),
                });
            }
        }
        FromAgent::Oom { cgroup, kills } => {
            // Before the Exited of a process it ended: the core reads the count at the exit.
            let count = ooms.lock().unwrap().entry(cgroup).or_default().clone();
            count.kills.fetch_max(kills, Ordering::SeqCst);
            count.notify.notify_one();
        }
        FromAgent::Reply { .. } => {}
    }
}

impl PodVm {
    /// Boots the pod's VM in `dir` (blocking: run it on a blocking thread).
    pub fn boot(
        config: VmConfig,
        accelerator: Accelerator,
        dir: PathBuf,
        network: Option<Attached>,
        run_as: RunAs,
        cgroup: HostCgroup,
    ) -> Result<PodVm> {
        let (network, detach) = match network {
            Some(a) => (Some((a.network, a.taps)), Some(a.detach)),
            None => (None, None),
        };
        let cgroup = Arc::new(cgroup);
        let booted = Self::boot_vm(config, accelerator, dir, network, run_as, cgroup.clone());
        match booted {
            Ok(pod) => {
                *pod.detach.lock().unwrap() = detach;
                *pod.cgroup.lock().unwrap() = Some(cgroup);
                Ok(pod)
            }
            Err(e) => {
                undo_network(detach);
                cgroup.remove();
                Err(e)
            }
        }
    }

    fn boot_vm(
        config: VmConfig,
        accelerator: Accelerator,
        dir: PathBuf,
        network: Option<(PodNetwork, Vec<OwnedFd>)>,
        run_as: RunAs,
        cgroup: Arc<HostCgroup>,
    ) -> Result<PodVm> {
        let (booted_tx, booted_rx) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let keeper_dir = dir.clone();
        let keeper = std::thread::Builder::new()
            .name("vm-keeper".into())
            .spawn(move || {
                let (vm, mut virtiofsd) = match boot_on_this_thread(
                    &config,
                    accelerator,
                    &keeper_dir,
                    network,
                    run_as,
                    &cgroup,
                ) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = booted_tx.send(Err(e));
                        return;
                    }
                };
                let _ = booted_tx.send(Ok(vm));
                // Until the pod's last container is released (or the shim ends).
                let _ = stopped.recv();
                let _ = virtiofsd.kill();
                let _ = virtiofsd.wait();
            })
            .map_err(|e| Error::io("start the VM's keeper thread", e))?;
        let vm = booted_rx
            .recv()
            .map_err(|_| Error::Runtime("the VM's keeper thread ended".into()))??;
        info!(
            to_ready_ms = vm.times.to_ready.as_millis() as u64,
            accelerator = %vm.accelerator,
            "the pod's VM is ready"
        );
        let events = vm.take_events().expect("events are taken once");
        let routes: Routes = Default::default();
        let ooms: Ooms = Default::default();
        let (r, o) = (routes.clone(), ooms.clone());
        std::thread::Builder::new()
            .name("vm-router".into())
            .spawn(move || {
                for msg in events {
                    route(&r, &o, msg);
                }
            })
            .map_err(|e| Error::io("start the VM's router thread", e))?;
        Ok(PodVm {
            vm: Arc::new(vm),
            dir,
            routes,
            ooms,
            stop: Mutex::new(Some(stop)),
            keeper: Mutex::new(Some(keeper)),
            detach: Mutex::new(None),
            cgroup: Mutex::new(None),
        })
    }

    /// Where process `name`'s output and exit go; set before it starts.
    pub fn route(&self, name: &str, route: Route) {
        self.routes.lock().unwrap().insert(name.to_string(), route);
    }

    /// A new count of guest cgroup `cgroup`'s OOM kills, as the agent reports them (a
    /// container id used again in the pod starts from zero, as its new guest cgroup does).
    pub fn oom_count(&self, cgroup: &str) -> Arc<OomCount> {
        let count = Arc::new(OomCount::default());
        let mut ooms = self.ooms.lock().unwrap();
        ooms.insert(cgroup.to_string(), count.clone());
        count
    }

    /// Forgets process `name` (it did not start).
    pub fn unroute(&self, name: &str) {
        self.routes.lock().unwrap().remove(name);
    }

    /// Powers the guest off, waits for the VMM and virtiofsd to end, and removes the VM's
    /// directory.
    pub fn shutdown(&self) {
        if let Err(e) = self.vm.stop(CALL_LIMIT) {
            warn!("shut the pod's VM down: {e}");
        }
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        if let Some(keeper) = self.keeper.lock().unwrap().take() {
            let _ = keeper.join();
        }
        undo_network(self.detach.lock().unwrap().take());
        if let Some(cg) = self.cgroup.lock().unwrap().take() {
            cg.remove();
        }
        remove_dir(&self.dir);
    }
}
