//! Container stdio: pipes (or a terminal) between the container and the FIFOs containerd
//! passes.
//!
//! The container writes into pipes owned by the shim, and the shim copies them into
//! containerd's FIFOs. The indirection keeps a container alive when its client goes away,
//! and lets the shim know when all output has been delivered before it reports an exit.
//! With a terminal, the container's stdio is a pty's slave and the shim copies between the
//! FIFOs and the pty's master (stderr is merged into the terminal's output, as with runc);
//! see `console.rs`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::console::{Console, ConsoleSocket};
use crate::error::{Error, Result};

/// How long the shim waits for the pty master once the runtime has returned.
const CONSOLE_RECEIVE_LIMIT: Duration = Duration::from_secs(5);

/// The FIFO paths of one process, as containerd sends them.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The ends handed to the runtime process (and so inherited by the container), or with a
/// terminal the socket the runtime sends the pty master over.
#[derive(Default)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub console_socket: Option<PathBuf>,
}

/// The shim's side: copy tasks and the stdin writer.
#[derive(Default)]
pub struct Copier {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    /// Asks the stdin copier to forward what is already written, then close (CloseIO).
    stdin_close: Option<Arc<Notify>>,
    /// A terminal's socket and FIFOs until the runtime has sent the master.
    pending_console: Option<(ConsoleSocket, StdioPaths)>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("create stdio pipe", e.into()))
}

/// Open the FIFOs and create the pipes; with a terminal, listen on a console socket in
/// `console_dir` instead (the FIFOs are connected by [`Copier::connect_console`] once the
/// runtime has sent the pty master). Must run inside the tokio runtime.
pub fn setup(paths: &StdioPaths, console_dir: &Path) -> Result<(ChildStdio, Copier)> {
    let mut copier = Copier::default();
    if paths.terminal {
        let socket = ConsoleSocket::bind(console_dir)?;
        let child = ChildStdio {
            console_socket: Some(socket.path().to_path_buf()),
            ..Default::default()
        };
        copier.pending_console = Some((socket, paths.clone()));
        return Ok((child, copier));
    }
    let stdout = output(&paths.stdout, &mut copier)?;
    let stderr = output(&paths.stderr, &mut copier)?;
    let stdin = if paths.stdin.is_empty() {
        None
    } else {
        let (r, w) = pipe()?;
        let mut src = open_stdin_fifo(&paths.stdin)?;
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
            console_socket: None,
        },
        copier,
    ))
}

/// Copies between a terminal the shim made (its pty `master`) and containerd's FIFOs, as
/// [`Copier::connect_console`] does with a runtime's. Must run inside the tokio runtime.
pub fn setup_console(paths: &StdioPaths, master: OwnedFd) -> Result<(Copier, Arc<Console>)> {
    let mut copier = Copier::default();
    let console = copier.attach_console(master, paths)?;
    Ok((copier, console))
}

/// A non-blocking open never waits for the client; epoll reports the FIFO readable only once
/// a writer has connected, and hung up once it has gone.
fn open_stdin_fifo(path: &str) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(Path::new(path))
        .map_err(|e| Error::io(format!("open stdin fifo {path}"), e))
}

/// Why [`copy_stdin`] stopped, and the last byte it forwarded.
struct StdinEnd {
    /// CloseIO asked for it (else the client closed the FIFO, or the container's side broke).
    closed: bool,
    last: Option<u8>,
}

/// Copies the stdin FIFO into the container's input until EOF, or until `close` is notified;
/// then forwards what the client had already written and stops.
async fn copy_stdin(
    src: &mut pipe::Receiver,
    dst: &mut (impl AsyncWrite + Unpin),
    close: &Notify,
) -> StdinEnd {
    let mut buf = vec![0u8; 32 * 1024];
    let mut last = None;
    loop {
        tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(0) | Err(_) => return StdinEnd { closed: false, last },
                Ok(n) => {
                    if dst.write_all(&buf[..n]).await.is_err() {
                        return StdinEnd { closed: false, last };
                    }
                    last = Some(buf[n - 1]);
                }
            },
            _ = close.notified() => {
                while let Ok(n) = src.try_read(&mut buf) {
                    if n == 0 || dst.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    last = Some(buf[n - 1]);
                }
                return StdinEnd { closed: true, last };
            }
        }
    }
}

/// Opens an output FIFO for writing.
fn open_output_fifo(path: &str) -> Result<pipe::Sender> {
    // containerd opens the read side before Create, so a non-blocking open succeeds. For an
    // exec, ctr may open its read side a moment later (ENXIO: no reader yet): then open the
    // FIFO read-write, which never waits; output is buffered until the reader arrives.
    let dst = match pipe::OpenOptions::new().open_sender(Path::new(path)) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(Path::new(path)),
        r => r,
    };
    dst.map_err(|e| Error::io(format!("open stdio fifo {path}"), e))
}

/// Copies `src` to the FIFO at `path` (discards it when there is no FIFO) until EOF.
fn spawn_output(
    mut src: impl AsyncRead + Unpin + Send + 'static,
    path: &str,
) -> Result<JoinHandle<()>> {
    if path.is_empty() {
        // No client stream: discard. Not /dev/null: libcontainer 0.7 replaces a /dev/null
        // stdio fd with the container's /dev/null opened read-only, so writes would fail EBADF.
        return Ok(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut src, &mut tokio::io::sink()).await;
        }));
    }
    let mut dst = open_output_fifo(path)?;
    Ok(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut src, &mut dst).await;
    }))
}

fn output(path: &str, copier: &mut Copier) -> Result<Option<OwnedFd>> {
    let (r, w) = pipe()?;
    let src = pipe::Receiver::from_owned_fd(r).map_err(|e| Error::io("register stdio pipe", e))?;
    copier.outputs.push(spawn_output(src, path)?);
    Ok(Some(w))
}

/// Ends a terminal's input after CloseIO: the container reads EOF from the terminal when its
/// line is empty and VEOF arrives (a second VEOF when a partial line was pending, which the
/// first one only flushes). A terminal in raw mode has no end-of-input byte: nothing is sent.
async fn end_terminal_input(console: &Arc<Console>, last: Option<u8>) {
    if console.input_ended() {
        return;
    }
    let eof = match console.eof_char() {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::info!("CloseIO on a terminal in raw mode: no end-of-input byte to send");
            return;
        }
        Err(e) => {
            tracing::warn!("CloseIO on a terminal: cannot read its termios: {e}");
            return;
        }
    };
    let partial_line = last.is_some_and(|b| b != b'\n' && b != b'\r' && b != eof);
    let bytes = if partial_line {
        vec![eof, eof]
    } else {
        vec![eof]
    };
    if let Err(e) = console.writer().write_all(&bytes).await {
        tracing::warn!("CloseIO on a terminal: writing VEOF failed: {e}");
    }
}

impl Copier {
    /// A copier whose one output copy is `output` (the task core's unit tests).
    #[cfg(test)]
    pub fn with_output(output: JoinHandle<()>) -> Copier {
        let mut copier = Copier::default();
        copier.outputs.push(output);
        copier
    }

    /// With a terminal: takes the pty master the runtime sent over the console socket and
    /// starts copying (stdin FIFO -> master, master -> stdout FIFO). Returns the console
    /// (for resizes); `None` without a terminal. Call once the runtime has returned.
    pub async fn connect_console(&mut self) -> Result<Option<Arc<Console>>> {
        let Some((socket, paths)) = self.pending_console.take() else {
            return Ok(None);
        };
        let master = socket.receive(CONSOLE_RECEIVE_LIMIT).await?;
        self.attach_console(master, &paths).map(Some)
    }

    /// Copies between the terminal whose master is `master` and containerd's FIFOs.
    fn attach_console(&mut self, master: OwnedFd, paths: &StdioPaths) -> Result<Arc<Console>> {
        let console =
            Arc::new(Console::new(master).map_err(|e| Error::io("register the pty master", e))?);
        self.outputs
            .push(spawn_output(console.reader(), &paths.stdout)?);
        if !paths.stdin.is_empty() {
            let mut src = open_stdin_fifo(&paths.stdin)?;
            let close = Arc::new(Notify::new());
            self.stdin_close = Some(close.clone());
            let c = console.clone();
            self.stdin = Some(tokio::spawn(async move {
                let end = copy_stdin(&mut src, &mut c.writer(), &close).await;
                // A client that went away is not the end of a terminal's input (it may
                // attach again); CloseIO is.
                if !end.closed {
                    close.notified().await;
                }
                end_terminal_input(&c, end.last).await;
            }));
        }
        Ok(console)
    }

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
