//! The `airlock-runtime` binary, as the shim drives it.
//!
//! libcontainer forks and changes process-wide state, so it must never run inside this
//! multi-threaded async process (ARCHITECTURE.md). The shim executes the small,
//! single-threaded `airlock-runtime` binary instead, one invocation per lifecycle step.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use tokio::process::Command;

use crate::error::{Error, Result};
use crate::stdio::ChildStdio;

pub const RUNTIME_BINARY: &str = "airlock-runtime";

#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    /// `/run/airlock/<namespace>`: container state lives in `<root>/<id>/`.
    root: PathBuf,
}

impl Runtime {
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        Runtime { binary, root }
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

    fn command(&self, log: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        cmd
    }

    async fn run(&self, mut cmd: Command, what: &str, log: Option<&Path>) -> Result<()> {
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
        if out.status.success() {
            return Ok(());
        }
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(log) = log {
            if let Some(line) = last_error_line(log).await {
                msg = line;
            }
        }
        if msg.is_empty() {
            msg = format!("{RUNTIME_BINARY} {what} failed with {}", out.status);
        }
        Err(Error::Runtime(msg))
    }

    /// Create the container, paused before exec. The container inherits `stdio`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdio: ChildStdio,
    ) -> Result<()> {
        // The runtime's own stderr is the container's stderr, so its error goes to a log file.
        let log = bundle.join("airlock-runtime.log");
        let mut cmd = self.command(Some(&log));
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        cmd.stdin(stdio.stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
        cmd.stdout(stdio.stdout.map(Stdio::from).unwrap_or_else(Stdio::null));
        cmd.stderr(stdio.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
        let r = self.run(cmd, "create", Some(&log)).await;
        let _ = tokio::fs::remove_file(&log).await;
        r
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let mut cmd = self.command(None);
        cmd.arg("start").arg(id);
        self.run(cmd, "start", None).await
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut cmd = self.command(None);
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        self.run(cmd, "kill", None).await
    }

    /// Remove everything of the container; with `force`, kill what is still running.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut cmd = self.command(None);
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        self.run(cmd, "delete", None).await
    }
}

/// Where Airlock keeps the state of a containerd namespace's containers.
pub fn state_root(namespace: &str) -> PathBuf {
    Path::new("/run/airlock").join(namespace)
}

/// The last line of the runtime's log that carries an error (plain or JSON).
async fn last_error_line(log: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(log).await.ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("ERROR") || l.contains("\"error\"") || l.contains("error"))?
        .trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        for key in ["msg", "message", "error"] {
            if let Some(s) = v.get(key).and_then(|m| m.as_str()) {
                return Some(s.to_string());
            }
            if let Some(s) = v
                .get("fields")
                .and_then(|f| f.get(key))
                .and_then(|m| m.as_str())
            {
                return Some(s.to_string());
            }
        }
    }
    Some(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn picks_last_error_line_from_text_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "INFO ok\nERROR config.json is malformed\n").unwrap();
        assert_eq!(
            last_error_line(&p).await.unwrap(),
            "ERROR config.json is malformed"
        );
        std::fs::write(
            &p,
            "{\"level\":\"ERROR\",\"fields\":{\"message\":\"no such binary\"}}\n",
        )
        .unwrap();
        assert_eq!(last_error_line(&p).await.unwrap(), "no such binary");
    }

    #[test]
    fn state_root_is_per_namespace() {
        assert_eq!(state_root("k8s.io"), PathBuf::from("/run/airlock/k8s.io"));
    }
}
