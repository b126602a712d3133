//! Container stdio: pipes between the container and the FIFOs containerd passes.
//!
//! The container writes into pipes owned by the shim, and the shim copies them into
//! containerd's FIFOs. The indirection keeps a container alive when its client goes away,
//! and lets the shim know when all output has been delivered before it reports an exit.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::OFlag;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The FIFO paths of one process, as containerd sends them.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The ends handed to the runtime process (and so inherited by the container).
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The shim's side: copy tasks and the stdin writer.
#[derive(Default)]
pub struct Copier {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    /// Asks the stdin copier to forward what is already written, then close (CloseIO).
    stdin_close: Option<Arc<Notify>>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("create stdio pipe", e.into()))
}

/// Open the FIFOs and create the pipes. Must run inside the tokio runtime.
pub fn setup(paths: &StdioPaths) -> Result<(ChildStdio, Copier)> {
    if paths.terminal {
        return Err(Error::InvalidArgument(
            "terminal (tty) mode is not supported by airlock yet; run without -t".into(),
        ));
    }
    let mut copier = Copier::default();
    let stdout = output(&paths.stdout, &mut copier)?;
    let stderr = output(&paths.stderr, &mut copier)?;
    let stdin = if paths.stdin.is_empty() {
        None
    } else {
        let (r, w) = pipe()?;
        // A non-blocking open never waits for the client; epoll reports the FIFO readable
        // only once a writer has connected, and hung up once it has gone.
        let mut src = pipe::OpenOptions::new()
            .open_receiver(Path::new(&paths.stdin))
            .map_err(|e| Error::io(format!("open stdin fifo {}", paths.stdin), e))?;
        let mut dst =
            pipe::Sender::from_owned_fd(w).map_err(|e| Error::io("register stdin pipe", e))?;
        let close = Arc::new(Notify::new());
        copier.stdin_close = Some(close.clone());
        copier.stdin = Some(tokio::spawn(async move {
            copy_stdin(&mut src, &mut dst, &close).await;
            let _ = dst.shutdown().await;
            // Dropping `dst` closes the pipe: the container reads EOF.
        }));
        Some(r)
    };
    Ok((
        ChildStdio {
            stdin,
            stdout,
            stderr,
        },
        copier,
    ))
}

/// Copies the stdin FIFO into the container's pipe until EOF, or until `close` is notified;
/// then forwards what the client had already written and stops.
async fn copy_stdin(src: &mut pipe::Receiver, dst: &mut pipe::Sender, close: &Notify) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if dst.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = close.notified() => {
                while let Ok(n) = src.try_read(&mut buf) {
                    if n == 0 || dst.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                return;
            }
        }
    }
}

fn output(path: &str, copier: &mut Copier) -> Result<Option<OwnedFd>> {
    let (r, w) = pipe()?;
    let mut src =
        pipe::Receiver::from_owned_fd(r).map_err(|e| Error::io("register stdio pipe", e))?;
    if path.is_empty() {
        // No client stream: discard. Not /dev/null: libcontainer 0.7 replaces a /dev/null
        // stdio fd with the container's /dev/null opened read-only, so writes would fail EBADF.
        copier.outputs.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut src, &mut tokio::io::sink()).await;
        }));
        return Ok(Some(w));
    }
    // containerd opens the read side before Create, so a non-blocking open succeeds. For an
    // exec, ctr may open its read side a moment later (ENXIO: no reader yet): then open the
    // FIFO read-write, which never waits; output is buffered until the reader arrives.
    let dst = match pipe::OpenOptions::new().open_sender(Path::new(path)) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(Path::new(path)),
        r => r,
    };
    let mut dst = dst.map_err(|e| Error::io(format!("open stdio fifo {path}"), e))?;
    copier.outputs.push(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut src, &mut dst).await;
    }));
    Ok(Some(w))
}

impl Copier {
    /// Wait until the container's output has been copied out (its pipes closed), at most
    /// `limit`: a daemonised grandchild may keep a pipe open forever.
    pub async fn drain(&mut self, limit: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let all = futures_join_all(outputs);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("stdio copy still running after {limit:?}; output may be truncated");
        }
    }

    /// Close the container's stdin (CloseIO) after forwarding what the client wrote.
    pub fn close_stdin(&mut self) {
        if let Some(n) = self.stdin_close.take() {
            n.notify_one();
        }
    }

    /// Stop copying stdin at once (delete).
    pub fn abort_stdin(&mut self) {
        self.stdin_close = None;
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        for h in self.outputs.drain(..) {
            h.abort();
        }
        self.abort_stdin();
    }
}

async fn futures_join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
