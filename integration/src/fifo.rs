//! FIFOs a test hands containerd as a task's stdin and stdout, as containerd's clients do:
//! the output's read side is open before Task.Create, the input's write side once the shim
//! has opened its read side. Every wait has a deadline.

use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::client::TaskStdio;

/// A stdin and a stdout FIFO in a private temp dir, the output collected in the background.
pub struct TaskFifos {
    _dir: tempfile::TempDir,
    stdin: PathBuf,
    stdout: PathBuf,
    output: Arc<Mutex<Vec<u8>>>,
    grew: Arc<Notify>,
    reader: tokio::task::JoinHandle<()>,
    writer: Option<pipe::Sender>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl TaskFifos {
    /// Makes the FIFOs and starts collecting the output. Call inside a tokio runtime.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("airlock-fifo").tempdir()?;
        let stdin = dir.path().join("in");
        let stdout = dir.path().join("out");
        for p in [&stdin, &stdout] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("mkfifo {}", p.display()))?;
        }
        // Read-write: the open never waits for the shim, and EOF never comes (the reader runs
        // until dropped; tests wait for content, not for EOF).
        let mut rx = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&stdout)
            .with_context(|| format!("open {}", stdout.display()))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let grew = Arc::new(Notify::new());
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (out, g, st) = (output.clone(), grew.clone(), stalled.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                if st.load(std::sync::atomic::Ordering::Relaxed) {
                    // Holds the read side open and never reads again.
                    std::future::pending::<()>().await;
                }
                let Ok(n) = rx.read(&mut buf).await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
                g.notify_waiters();
            }
        });
        Ok(TaskFifos {
            _dir: dir,
            stdin,
            stdout,
            output,
            grew,
            reader,
            writer: None,
            stalled,
        })
    }

    /// Stops reading the output (after the read in progress) while keeping the FIFO open: a
    /// reader that stalls, as a client that stopped reading a container's logs.
    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The stdio to pass to Task.Create or Exec. Without a terminal, stderr goes to the
    /// stdout FIFO too (the runc.v2 shim wants both or neither); a terminal merges them.
    pub fn stdio(&self, terminal: bool) -> TaskStdio {
        let stdout = self.stdout.display().to_string();
        TaskStdio {
            stdin: self.stdin.display().to_string(),
            stderr: if terminal {
                String::new()
            } else {
                stdout.clone()
            },
            stdout,
            terminal,
        }
    }

    /// Writes to the task's stdin; the first write opens the FIFO, waiting up to 10 s for the
    /// shim to have opened its read side.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.writer.is_none() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            self.writer = Some(loop {
                match pipe::OpenOptions::new().open_sender(&self.stdin) {
                    Ok(w) => break w,
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENXIO)
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => {
                        return Err(anyhow!("open {} for writing: {e}", self.stdin.display()))
                    }
                }
            });
        }
        let w = self.writer.as_mut().expect("opened above");
        tokio::time::timeout(Duration::from_secs(10), w.write_all(bytes))
            .await
            .map_err(|_| anyhow!("stdin write blocked for 10 s"))?
            .context("write stdin")
    }

    /// Closes the test's end of stdin (the FIFO's last writer, as a client that went away).
    pub fn close_stdin(&mut self) {
        self.writer = None;
    }

    /// Everything read so far, lossily as text.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output holds `needle` `times` times; the error shows the output.
    pub async fn expect_n(&self, needle: &str, times: usize, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let grew = self.grew.notified();
            if self.output().matches(needle).count() >= times {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                return Err(anyhow!(
                    "{needle:?} x{times} not in the output after {timeout:?}; output: {:?}",
                    self.output()
                ));
            }
        }
    }

    /// Waits until the output holds `needle`.
    pub async fn expect(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.expect_n(needle, 1, timeout).await
    }
}

impl Drop for TaskFifos {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
