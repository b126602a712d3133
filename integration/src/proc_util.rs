//! Small process helpers: run a command with a deadline, and read `/proc`.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `None` if killed by a signal (including our timeout kill).
    pub code: Option<i32>,
    /// Signal that ended the process, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

fn status_parts(st: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (st.code(), st.signal())
}

/// A spawned child whose stdout/stderr are collected by threads.
pub struct Running {
    child: std::process::Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
    started: Instant,
    desc: String,
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl Running {
    /// Spawns `cmd` with stdin from /dev/null and piped stdout/stderr.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let desc = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawn {desc}"))?;
        let out = child.stdout.take().map(reader);
        let err = child.stderr.take().map(reader);
        Ok(Self {
            child,
            out,
            err,
            started: Instant::now(),
            desc,
        })
    }

    /// Whether the child has exited (its output is then collected by [`Running::wait`]).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `timeout`; on timeout the child is killed (by its pid) and an error returned.
    pub fn wait(mut self, timeout: Duration) -> Result<Output> {
        let deadline = self.started + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                let (code, signal) = status_parts(st);
                let stdout = self.out.take().map(|h| h.join().unwrap_or_default());
                let stderr = self.err.take().map(|h| h.join().unwrap_or_default());
                return Ok(Output {
                    code,
                    signal,
                    stdout: stdout.unwrap_or_default(),
                    stderr: stderr.unwrap_or_default(),
                    elapsed: self.started.elapsed(),
                });
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // Reader threads may hang if a grandchild holds the pipes: do not join them.
                bail!("timed out after {timeout:?}: {}", self.desc);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs the command `words` on a terminal of its own, `rows` x `cols` (`script` gives it one:
/// `ctr run -t` needs one), to completion with a deadline.
pub fn run_in_terminal(
    words: &[String],
    rows: u16,
    cols: u16,
    timeout: Duration,
) -> Result<Output> {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    let line = format!("stty rows {rows} cols {cols}; exec {}", quoted.join(" "));
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
    run(cmd, timeout)
}

/// Runs `cmd` to completion with a deadline.
pub fn run(cmd: Command, timeout: Duration) -> Result<Output> {
    Running::spawn(cmd)?.wait(timeout)
}

/// All numeric entries of /proc.
pub fn pids() -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                v.push(p);
            }
        }
    }
    v
}

/// argv of a process (empty if gone or a kernel thread).
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Contents of /proc/<pid>/cgroup.
pub fn cgroup(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// Parent pid.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Process state letter (R, S, Z, ...).
pub fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// All descendants of `root` (not including it).
pub fn descendants(root: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = pids()
        .into_iter()
        .filter_map(|p| ppid(p).map(|pp| (p, pp)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &all {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// Sends `sig` to `pid`, ignoring errors (the process may be gone).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Polls `cond` every `every` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Whether `path` is a mount point of the given filesystem type, per /proc/self/mountinfo.
pub fn is_mount_of_type(path: &Path, fstype: &str) -> bool {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mi.lines().any(|l| {
        let mut parts = l.split(" - ");
        let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
            return false;
        };
        a.split_whitespace().nth(4) == Some(&want) && b.split_whitespace().next() == Some(fstype)
    })
}
