//! A guest process's stdio on the host. Its output arrives from the agent and is written into
//! the same pipes (or, for a terminal, the same kind of pty master) the process sandbox's copy
//! reads, so the core's copy, drain and exit order are unchanged. Its input (containerd's
//! stdin FIFO, through the core's copy) is relayed to the agent chunk by chunk.
//!
//! A terminal is two ptys: the guest's, which the process has as its controlling terminal,
//! and one in the shim, whose master the core copies to and from as in the process mode and
//! whose slave, in raw mode, carries bytes to and from the agent unchanged. Its size goes to
//! the guest's pty through [`crate::console::Console::on_resize`].

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_agent::protocol::{Io, Request, Response, OUTPUT_CHUNK};
use tokio::sync::oneshot;

use super::pod::{PodVm, Route, CALL_LIMIT};
use crate::console::Console;
use crate::error::{Error, Result};
use crate::sandbox::ExitInfo;
use crate::stdio::{self, StdioPaths};

/// How long one chunk of input may wait for its process to read it.
const INPUT_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// How often the relay of a process's input looks whether the process has exited.
const EXIT_POLL: Duration = Duration::from_millis(200);

/// A process's stdio, set up before it runs.
pub struct Routed {
    pub copier: stdio::Copier,
    pub exited: oneshot::Receiver<ExitInfo>,
    pub console: Option<Arc<Console>>,
    pub input: Input,
}

/// What the agent is told of the process's stdio, and its input, relayed once it runs.
pub struct Input {
    pub io: Io,
    from: Option<OwnedFd>,
    /// Set when the process's exit arrives.
    exited: Arc<AtomicBool>,
    /// Set when a terminal's input ends.
    ended: Arc<AtomicBool>,
}

/// Sets up process `name`'s stdio and its route in the pod (before it runs).
pub fn route(
    pod: &Arc<PodVm>,
    name: &str,
    paths: &StdioPaths,
    bundle: &std::path::Path,
) -> Result<Routed> {
    let (tx, exited) = oneshot::channel();
    let done = Arc::new(AtomicBool::new(false));
    // A terminal's input has no end of file: the core says when it ends (CloseIO).
    let input_ended = Arc::new(AtomicBool::new(false));
    let (copier, console, stdout, stderr, from, io) = if paths.terminal {
        let pty = nix::pty::openpty(None, None)
            .map_err(|e| Error::io("open the terminal's pty", e.into()))?;
        let mut raw = nix::sys::termios::tcgetattr(&pty.slave)
            .map_err(|e| Error::io("read the pty's modes", e.into()))?;
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &raw)
            .map_err(|e| Error::io("set the pty raw", e.into()))?;
        let (copier, console) = stdio::setup_console(paths, pty.master)?;
        let (p, n) = (pod.clone(), name.to_string());
        console.on_resize(Box::new(move |rows, cols| {
            let req = Request::Resize {
                process: n.clone(),
                rows,
                cols,
            };
            match p.vm.call(&req, CALL_LIMIT) {
                Ok(Response::Ok) => Ok(()),
                Ok(other) => Err(std::io::Error::other(format!("resize: {other:?}"))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        }));
        let ended = input_ended.clone();
        console.on_input_end(Box::new(move || ended.store(true, Ordering::SeqCst)));
        let out = pty
            .slave
            .try_clone()
            .map_err(|e| Error::io("the pty's slave", e))?;
        let input = (!paths.stdin.is_empty()).then_some(pty.slave);
        (
            copier,
            Some(console),
            Some(File::from(out)),
            None,
            input,
            Io::Terminal,
        )
    } else {
        let (child, copier) = stdio::setup(paths, bundle)?;
        let io = if child.stdin.is_some() {
            Io::PipesAndStdin
        } else {
            Io::Pipes
        };
        let (out, err) = (child.stdout.map(File::from), child.stderr.map(File::from));
        (copier, None, out, err, child.stdin, io)
    };
    pod.route(
        name,
        Route {
            stdout,
            stderr,
            exited: Some(tx),
            done: Some(done.clone()),
        },
    );
    Ok(Routed {
        copier,
        exited,
        console,
        input: Input {
            io,
            from,
            exited: done,
            ended: input_ended,
        },
    })
}

impl Input {
    /// Forwards the process's input to the agent, chunk by chunk, until its end (the FIFO's
    /// end or CloseIO, then the process's stdin is closed) or the process's exit.
    pub fn relay(self, pod: Arc<PodVm>, name: String) {
        let Some(from) = self.from else { return };
        let (exited, ended) = (self.exited, self.ended);
        let spawned = std::thread::Builder::new()
            .name("vm-stdin".into())
            .spawn(move || {
                let mut buf = vec![0u8; OUTPUT_CHUNK];
                let mut file = File::from(from);
                loop {
                    if exited.load(Ordering::SeqCst) {
                        return;
                    }
                    // Once the input has ended, what is left is forwarded, then the end.
                    let last_round = ended.load(Ordering::SeqCst);
                    let wait = if last_round {
                        0
                    } else {
                        EXIT_POLL.as_millis() as u16
                    };
                    let mut fds = [nix::poll::PollFd::new(
                        file.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(wait)) {
                        Ok(0) if last_round => break,
                        Ok(0) => continue,
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                    let n = match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let req = Request::Input {
                        process: name.clone(),
                        data: buf[..n].to_vec(),
                    };
                    if !matches!(pod.vm.call(&req, INPUT_LIMIT), Ok(Response::Ok)) {
                        // The process is gone or stopped reading: nothing more to forward.
                        return;
                    }
                }
                let _ = pod
                    .vm
                    .call(&Request::CloseInput { process: name }, CALL_LIMIT);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot forward stdin: {e}");
        }
    }
}
