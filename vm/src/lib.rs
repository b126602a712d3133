//! The host side of Airlock's microVM mode (handler `airlock-vm`).
//!
//! - [`accel`]: hardware KVM or emulation, as the node config allows; fail closed.
//! - [`initramfs`]: the guest's initramfs (the static agent and its kernel modules).
//! - [`vmm`]: the VMM trait and QEMU's `microvm` backend.
//! - [`jail`]: the VMM's credentials: no capabilities, and a uid of the pod's own.
//! - [`locate`]: Debian's cloud kernel and the VMM's helpers where the config does not say.
//! - [`Vm`]: one booted VM: its VMM process and the control channel to its agent.

pub mod accel;
pub mod initramfs;
pub mod jail;
pub mod locate;
pub mod vmm;

use std::collections::HashMap;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use airlock_agent::protocol::{self, Call, FromAgent, Ready, Request, Response, VERSION};

pub use accel::Accelerator;
pub use jail::RunAs;
pub use vmm::{Nic, Qemu, Share, VmSpec, Vmm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Accel(#[from] accel::Error),
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error("binding the VM's control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "starting the VMM {binary}: {source}; is it installed (`[vm] qemu` in the node config)?"
    )]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("the VMM exited ({status}) before its guest's agent was ready; it said: {said}")]
    Exited { status: ExitStatus, said: String },
    #[error(
        "the guest's agent was not ready within {after:?}; the guest console's last lines: {console}"
    )]
    NotReady { after: Duration, console: String },
    #[error("the guest's agent speaks protocol version {0}, this shim {VERSION}: rebuild the initramfs (`airlock vm build`) with this release's agent")]
    Version(u32),
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    #[error("the guest's agent did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the VM's control channel is closed (the guest stopped or its agent ended)")]
    Closed,
    #[error("the VM's control channel: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long the parts of a boot took.
#[derive(Debug, Clone, PartialEq)]
pub struct BootTimes {
    /// From starting the VMM to reading the agent's [`Ready`].
    pub to_ready: Duration,
    /// The agent's own times in the guest.
    pub ready: Ready,
}

type Pending = Arc<Mutex<Option<HashMap<u64, mpsc::Sender<Response>>>>>;

/// A booted VM. Dropping it kills its VMM (and so the guest) and reaps it.
#[derive(Debug)]
pub struct Vm {
    child: Mutex<Child>,
    channel: UnixStream,
    /// Held while a frame is written: calls from several threads never interleave.
    write_lock: Mutex<()>,
    next_id: AtomicU64,
    /// Callers waiting for a reply, by call id; `None` once the channel is closed.
    pending: Pending,
    events: Mutex<Option<mpsc::Receiver<FromAgent>>>,
    reader: Option<JoinHandle<()>>,
    pub accelerator: Accelerator,
    pub times: BootTimes,
}

/// Reads the agent's messages: each reply to its caller, everything else to `events`.
fn read_agent(mut from: UnixStream, pending: Pending, events: mpsc::Sender<FromAgent>) {
    loop {
        match protocol::read_frame::<_, FromAgent>(&mut from) {
            Ok(FromAgent::Reply { id, response }) => {
                let waiter = pending.lock().unwrap().as_mut().and_then(|p| p.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(response);
                }
            }
            Ok(other) => {
                let _ = events.send(other);
            }
            Err(e) => {
                tracing::debug!("the VM's control channel ended: {e}");
                break;
            }
        }
    }
    // Callers still waiting learn that no reply will come.
    pending.lock().unwrap().take();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

impl Vm {
    /// Boots `spec` with `vmm` and waits up to `timeout` for its agent's [`Ready`]. The VMM's
    /// own messages go to `vmm_log`. On error the VMM is gone. The VMM gets SIGKILL when the
    /// calling thread ends: boot from a thread that lives as long as the VM.
    pub fn boot(vmm: &dyn Vmm, spec: &VmSpec, vmm_log: &Path, timeout: Duration) -> Result<Vm> {
        let _span =
            tracing::info_span!("vm_boot", vmm = vmm.name(), accel = %spec.accelerator).entered();
        let listener = UnixListener::bind(&spec.control_socket).map_err(|source| Error::Bind {
            path: spec.control_socket.clone(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        jail::give(&spec.control_socket, spec.run_as)?;
        let prepared = jail::prepare(spec)?;
        let mut cmd = vmm.command(&prepared.spec)?;
        let (run_as, groups, inherit) = (
            spec.run_as,
            prepared.groups.clone(),
            prepared.inherit.clone(),
        );
        let cgroup_procs = spec.cgroup_procs.clone();
        // SAFETY: fcntl, prctl, setgroups, setres[ug]id and capset are async-signal-safe; the
        // vectors were allocated before the fork.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                // Into the pod's cgroup while still root (the files are root's).
                for fd in &cgroup_procs {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                jail::enter(run_as, &groups, &inherit)?;
                // The VMM dies with the thread that booted it (a killed shim leaves no VM
                // running); set after the credentials change, which clears it.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            });
        }
        let log = std::fs::File::create(vmm_log)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: PathBuf::from(cmd.get_program()),
            source,
        })?;
        let result = Self::wait_ready(&listener, &mut child, spec, vmm_log, start, timeout);
        let _ = std::fs::remove_file(&spec.control_socket);
        match result {
            Ok((channel, ready)) => {
                let to_ready = start.elapsed();
                tracing::info!(?to_ready, "guest agent ready");
                let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
                let (tx, events) = mpsc::channel();
                let reading = match channel.try_clone() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e.into());
                    }
                };
                let p = pending.clone();
                let reader = std::thread::spawn(move || read_agent(reading, p, tx));
                Ok(Vm {
                    child: Mutex::new(child),
                    channel,
                    write_lock: Mutex::new(()),
                    next_id: AtomicU64::new(1),
                    pending,
                    events: Mutex::new(Some(events)),
                    reader: Some(reader),
                    accelerator: spec.accelerator,
                    times: BootTimes { to_ready, ready },
                })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn wait_ready(
        listener: &UnixListener,
        child: &mut Child,
        spec: &VmSpec,
        vmm_log: &Path,
        start: Instant,
        timeout: Duration,
    ) -> Result<(UnixStream, Ready)> {
        let not_ready = || Error::NotReady {
            after: timeout,
            console: tail(&spec.console_log, 5),
        };
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(status) = child.try_wait()? {
                return Err(Error::Exited {
                    status,
                    said: tail(vmm_log, 5),
                });
            }
            if start.elapsed() > timeout {
                return Err(not_ready());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        stream.set_nonblocking(false)?;
        let left = timeout.saturating_sub(start.elapsed());
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let ready: Ready = match protocol::read_frame(&mut &stream) {
            Ok(r) => r,
            Err(protocol::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(not_ready())
            }
            Err(protocol::Error::Closed) => {
                let status = child.wait()?;
                return Err(Error::Exited {
                    status,
                    said: format!(
                        "{}; console: {}",
                        tail(vmm_log, 3),
                        tail(&spec.console_log, 5)
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if ready.version != VERSION {
            return Err(Error::Version(ready.version));
        }
        stream.set_read_timeout(None)?;
        Ok((stream, ready))
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Sends `req` and waits at most `timeout` for its answer. Calls may come from several
    /// threads at once; each gets its own reply.
    pub fn call(&self, req: &Request, timeout: Duration) -> Result<Response> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match self.pending.lock().unwrap().as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(Error::Closed),
        };
        let call = Call {
            id,
            request: req.clone(),
        };
        let written = {
            let _one = self.write_lock.lock().unwrap();
            protocol::write_frame(&mut &self.channel, &call)
        };
        if let Err(e) = written {
            if let Some(p) = self.pending.lock().unwrap().as_mut() {
                p.remove(&id);
            }
            return Err(e.into());
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(p) = self.pending.lock().unwrap().as_mut() {
                    p.remove(&id);
                }
                Err(Error::NoAnswer(timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// The agent's unasked messages (processes' output and exits), in the order it sent them;
    /// once (the caller owns the stream).
    pub fn take_events(&self) -> Option<mpsc::Receiver<FromAgent>> {
        self.events.lock().unwrap().take()
    }

    /// Asks the agent to power the guest off and waits up to `timeout` for the VMM to exit;
    /// kills it after that.
    pub fn shutdown(self, timeout: Duration) -> Result<ExitStatus> {
        self.stop(timeout)
    }

    /// [`Vm::shutdown`] through a shared reference (a VM shared by its pod's containers).
    pub fn stop(&self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        let _ = self.call(&Request::Shutdown, timeout);
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let mut child = self.child.lock().unwrap();
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The VMM's end closes the channel; the reader ends with it.
        let _ = self.channel.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
