//! Terminals: the console socket over which the runtime sends a pty's master, and the master
//! itself (reading, writing, resizing, ending input).
//!
//! With `terminal: true`, libcontainer creates the pty inside the container (after
//! pivot_root, from the container's devpts), makes its slave the process's stdio and
//! controlling terminal (`setsid` + `TIOCSCTTY`), and sends the master over a unix socket
//! (`--console-socket`, SCM_RIGHTS), as runc does. The shim listens on that socket, keeps the
//! master, and copies between it and containerd's FIFOs. Termios and window size ioctls on a
//! master act on its slave, so the shim never opens the slave: once every process holding the
//! slave has exited, reading the master fails with EIO, which is the output's end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::termios::{self, LocalFlags, SpecialCharacterIndices};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::error::{Error, Result};

/// Removes its directory (and the socket in it) when dropped.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A listening unix socket in a private (0700) directory, removed when dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
    _dir: PrivateDir,
}

impl ConsoleSocket {
    /// Listens in a new directory under `parent` (the bundle: containerd removes it with the
    /// container, should the shim die before dropping this).
    pub fn bind(parent: &Path) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = parent.join(format!(
            ".console-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("create console socket dir {}", dir.display()), e))?;
        let dir = PrivateDir(dir);
        let path = dir.0.join("pty.sock");
        // A socket address holds 108 bytes and a bundle path can be longer (CRI ids are 64
        // characters): bind through the directory's descriptor instead of its path. The
        // runtime connects through a short symlink of its own (libcontainer does that).
        let handle = std::fs::File::open(&dir.0)
            .map_err(|e| Error::io(format!("open {}", dir.0.display()), e))?;
        let short = format!("/proc/self/fd/{}/pty.sock", handle.as_raw_fd());
        let listener = UnixListener::bind(&short)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io(format!("listen on console socket {}", path.display()), e))?;
        Ok(ConsoleSocket {
            path,
            listener,
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master the runtime sent. The runtime has returned by now, so its connection
    /// and message are queued already; `limit` only guards against a runtime that never sent.
    pub async fn receive(self, limit: Duration) -> Result<OwnedFd> {
        let fail = |what: &str, e: io::Error| {
            Error::io(
                format!(
                    "{what} the pty master on console socket {}",
                    self.path.display()
                ),
                e,
            )
        };
        let listener = tokio::net::UnixListener::from_std(
            self.listener.try_clone().map_err(|e| fail("receive", e))?,
        )
        .map_err(|e| fail("receive", e))?;
        let wait = async {
            let (stream, _) = listener.accept().await?;
            loop {
                stream.readable().await?;
                match stream.try_io(Interest::READABLE, || recv_fd(stream.as_raw_fd())) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r.map_err(|e| fail("receive", e)),
            Err(_) => Err(Error::Runtime(format!(
                "the runtime did not send the pty master over console socket {} within {limit:?}; check airlock-runtime's log",
                self.path.display()
            ))),
        }
    }
}

/// Receives one descriptor (SCM_RIGHTS) from a connected unix socket.
pub fn recv_fd(socket: RawFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 256];
    let got = airlock_state::fdpass::recv_with_fds(socket, &mut buf)?;
    let mut received = got.fds;
    // One master is expected; extra descriptors are closed as `received` drops.
    if received.is_empty() {
        let what = if got.len == 0 {
            "closed the console socket"
        } else {
            "sent a message"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the runtime {what} without a pty master"),
        ));
    }
    Ok(received.swap_remove(0))
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

/// Told the size of a terminal after it is set (the microVM mode's terminal is in the guest).
pub type ResizeHook = Box<dyn Fn(u16, u16) -> io::Result<()> + Send + Sync>;

/// Told that the terminal's input ended (CloseIO), instead of the end-of-input byte the
/// console would write (the microVM mode's terminal is in the guest).
pub type InputEndHook = Box<dyn Fn() + Send + Sync>;

/// A pty master, non-blocking and registered with tokio.
pub struct Console {
    master: AsyncFd<OwnedFd>,
    on_resize: std::sync::OnceLock<ResizeHook>,
    on_input_end: std::sync::OnceLock<InputEndHook>,
}

impl Console {
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: OwnedFd owns the master and returns it from as_raw_fd until dropped.
        let master = unsafe {
            AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Console {
            master,
            on_resize: std::sync::OnceLock::new(),
            on_input_end: std::sync::OnceLock::new(),
        })
    }

    /// Calls `hook` when the terminal's input ends, instead of writing its VEOF (once per
    /// console).
    pub fn on_input_end(&self, hook: InputEndHook) {
        let _ = self.on_input_end.set(hook);
    }

    /// Runs the input-end hook; false when there is none.
    pub fn input_ended(&self) -> bool {
        match self.on_input_end.get() {
            Some(hook) => {
                hook();
                true
            }
            None => false,
        }
    }

    /// Calls `hook` with each size set by [`Console::resize`] (once per console).
    pub fn on_resize(&self, hook: ResizeHook) {
        let _ = self.on_resize.set(hook);
    }

    /// Sets the terminal's size (the kernel sends SIGWINCH to its foreground process group).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        unsafe { set_window_size(self.master.get_ref().as_raw_fd(), &ws) }?;
        match self.on_resize.get() {
            Some(hook) => hook(rows, cols),
            None => Ok(()),
        }
    }

    /// The byte that ends input on this terminal now: its VEOF character (usually ^D) while
    /// it is in canonical mode; `None` in raw mode, where no byte means end of input.
    pub fn eof_char(&self) -> io::Result<Option<u8>> {
        let t = termios::tcgetattr(self.master.get_ref().as_fd())?;
        if !t.local_flags.contains(LocalFlags::ICANON) {
            return Ok(None);
        }
        Ok(Some(
            t.control_chars[SpecialCharacterIndices::VEOF as usize],
        ))
    }

    /// A reader of the terminal's output; EIO (every slave closed) reads as end of file.
    pub fn reader(self: &Arc<Self>) -> ConsoleIo {
        ConsoleIo(self.clone())
    }

    /// A writer of the terminal's input.
    pub fn writer(self: &Arc<Self>) -> ConsoleIo {
        ConsoleIo(self.clone())
    }
}

/// [`AsyncRead`]/[`AsyncWrite`] over a shared [`Console`].
pub struct ConsoleIo(Arc<Console>);

impl AsyncRead for ConsoleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every process holding the slave has gone: the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ConsoleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.master.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), buf)?)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The master stays open: it also carries the output, and resizes.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    };
    use std::io::IoSlice;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn send_fd(socket: RawFd, fd: RawFd) {
        let iov = [IoSlice::new(b"/dev/ptmx")];
        let fds = [fd];
        sendmsg::<()>(
            socket,
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_descriptor_passes_over_a_socketpair() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_fd(a.as_raw_fd(), w.as_raw_fd());
        drop(w);
        let got = recv_fd(b.as_raw_fd()).unwrap();
        nix::unistd::write(&got, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap(), 1);
        assert_eq!(&buf, b"x");
        // A message without a descriptor, then a closed socket: clear errors.
        nix::unistd::write(&a, b"no fd").unwrap();
        let e = recv_fd(b.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("without a pty master"), "{e}");
        drop(a);
        let e = recv_fd(b.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("closed the console socket"), "{e}");
    }

    /// The socket path may be longer than a socket address can hold; the directory goes away
    /// with the socket.
    #[tokio::test]
    async fn console_socket_under_a_long_path_receives_a_master() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("b".repeat(120));
        std::fs::create_dir(&parent).unwrap();
        let socket = ConsoleSocket::bind(&parent).unwrap();
        let path = socket.path().to_path_buf();
        assert!(path.as_os_str().len() > 108);
        let dir = path.parent().unwrap().to_path_buf();
        // Connect as libcontainer does: through a short relative symlink.
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&link).unwrap();
        send_fd(client.as_raw_fd(), pty.master.as_raw_fd());
        drop(pty.master);
        let master = socket.receive(Duration::from_secs(5)).await.unwrap();
        assert!(!dir.exists(), "console socket dir left behind");

        let console = Arc::new(Console::new(master).unwrap());
        console.resize(40, 100).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize.
        assert_eq!(
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
            0
        );
        assert_eq!((ws.ws_row, ws.ws_col), (40, 100));
        assert_eq!(
            console.eof_char().unwrap(),
            Some(4),
            "VEOF is ^D by default"
        );

        // Input reaches the slave; output comes back; a closed slave reads as EOF.
        console.writer().write_all(b"hi\n").await.unwrap();
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(pty.slave.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
        nix::unistd::write(&pty.slave, b"out").unwrap();
        drop(pty.slave);
        let mut out = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            console.reader().read_to_end(&mut out),
        )
        .await
        .expect("EIO must end the output")
        .unwrap();
        // The echo of the input comes first (the slave echoes by default).
        assert!(out.ends_with(b"out"), "{out:?}");
    }

    #[tokio::test]
    async fn a_runtime_that_never_sends_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(tmp.path()).unwrap();
        let e = socket
            .receive(Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("did not send the pty master"), "{e}");
    }
}
