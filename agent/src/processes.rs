//! The processes the agent runs for the host: started in a root directory of their own, their
//! output and exit sent as [`FromAgent`] messages, signalled by name.
//!
//! A process's waiter learns of its exit with `waitid(WNOWAIT)` and only then, holding the
//! table's lock, forgets its name and reaps it: a signal sent by name goes to the process or
//! finds no such name, never to a pid that was reused.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use airlock_contract::ErrorKind;
use rustix::process::{Pid, Signal};

use crate::protocol::{FromAgent, Response, Stream, OUTPUT_CHUNK};

/// Where messages to the host go (the control port's writer).
pub type Send = Arc<dyn Fn(&FromAgent) + std::marker::Send + Sync>;

/// The running processes, by name.
#[derive(Clone, Default)]
pub struct Processes {
    table: Arc<Mutex<HashMap<String, Child>>>,
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

/// The request's environment as (name, value) pairs; an entry without `=` is refused.
fn parse_env(env: &[String]) -> Result<Vec<(&str, &str)>, String> {
    env.iter()
        .map(|e| {
            e.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("environment entry {e:?} is not NAME=value"))
        })
        .collect()
}

fn forward(process: String, stream: Stream, mut from: impl Read, send: Send) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => send(&FromAgent::Output {
                process: process.clone(),
                stream,
                data: buf[..n].to_vec(),
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// containerd's convention: the exit code, or 128 + the killing signal.
fn status_of(status: std::process::ExitStatus) -> u32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(sig)) => 128 + sig as u32,
        (None, None) => 255,
    }
}

impl Processes {
    /// Starts `args` as `process`, chrooted to `root`, in `cwd`, with exactly `env`.
    pub fn run(
        &self,
        process: &str,
        args: &[String],
        env: &[String],
        root: &str,
        cwd: &str,
        send: Send,
    ) -> Response {
        if process.is_empty() || args.is_empty() || args[0].is_empty() {
            return error(
                ErrorKind::InvalidArgument,
                "a process needs a name and a program".into(),
            );
        }
        let env = match parse_env(env) {
            Ok(e) => e,
            Err(m) => return error(ErrorKind::InvalidArgument, m),
        };
        let mut table = self.table.lock().unwrap();
        if table.contains_key(process) {
            return error(
                ErrorKind::AlreadyExists,
                format!("a process named {process} is running"),
            );
        }
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (root, cwd) = (root.to_string(), cwd.to_string());
        // SAFETY: chroot and chdir are async-signal-safe; nothing else runs between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::chroot(root.as_str())?;
                rustix::process::chdir(cwd.as_str())?;
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let kind = match e.kind() {
                    io::ErrorKind::NotFound => ErrorKind::NotFound,
                    io::ErrorKind::PermissionDenied => ErrorKind::FailedPrecondition,
                    _ => ErrorKind::Unknown,
                };
                return error(kind, format!("starting {:?}: {e}", args[0]));
            }
        };
        let pid = child.id();
        let out: ChildStdout = child.stdout.take().expect("piped");
        let err: ChildStderr = child.stderr.take().expect("piped");
        table.insert(process.to_string(), child);
        drop(table);
        let readers: Vec<JoinHandle<()>> = [
            (
                Stream::Stdout,
                Box::new(out) as Box<dyn Read + std::marker::Send>,
            ),
            (Stream::Stderr, Box::new(err)),
        ]
        .into_iter()
        .map(|(stream, from)| {
            let (name, send) = (process.to_string(), send.clone());
            std::thread::spawn(move || forward(name, stream, from, send))
        })
        .collect();
        let (name, table) = (process.to_string(), self.table.clone());
        std::thread::spawn(move || {
            if let Some(raw) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitid(
                    rustix::process::WaitId::Pid(raw),
                    rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
                );
            }
            let child = table.lock().unwrap().remove(&name);
            let status = child
                .and_then(|mut c| c.wait().ok())
                .map(status_of)
                .unwrap_or(255);
            for r in readers {
                let _ = r.join();
            }
            send(&FromAgent::Exited {
                process: name,
                status,
            });
        });
        Response::Started { pid }
    }

    /// Sends `signal` to the running process `process`.
    pub fn signal(&self, process: &str, signal: i32) -> Response {
        let table = self.table.lock().unwrap();
        let Some(child) = table.get(process) else {
            return error(
                ErrorKind::NotFound,
                format!("no running process named {process}"),
            );
        };
        let (Some(pid), Some(sig)) = (
            Pid::from_raw(child.id() as i32),
            Signal::from_named_raw(signal),
        ) else {
            return error(
                ErrorKind::InvalidArgument,
                format!("signal {signal} is not a signal"),
            );
        };
        match rustix::process::kill_process(pid, sig) {
            Ok(()) => Response::Ok,
            Err(e) => error(
                ErrorKind::Unknown,
                format!("signal {signal} to {process}: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn collector() -> (Send, mpsc::Receiver<FromAgent>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (
            Arc::new(move |m: &FromAgent| {
                let _ = tx.lock().unwrap().send(m.clone());
            }),
            rx,
        )
    }

    fn until_exit(rx: &mpsc::Receiver<FromAgent>) -> (Vec<u8>, Vec<u8>, u32) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap() {
                FromAgent::Output { stream, data, .. } => match stream {
                    Stream::Stdout => out.extend(data),
                    Stream::Stderr => err.extend(data),
                },
                FromAgent::Exited { status, .. } => return (out, err, status),
                other => panic!("{other:?}"),
            }
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_then_exit_in_order() {
        let p = Processes::default();
        let (send, rx) = collector();
        let r = p.run(
            "a",
            &sh("echo out; echo err >&2; echo $GREETING; exit 7"),
            &["GREETING=hi".into()],
            "/",
            "/",
            send,
        );
        assert!(matches!(r, Response::Started { .. }), "{r:?}");
        let (out, err, status) = until_exit(&rx);
        assert_eq!(
            (out.as_slice(), err.as_slice(), status),
            (b"out\nhi\n".as_slice(), b"err\n".as_slice(), 7)
        );
    }

    #[test]
    fn a_signal_by_name_ends_the_process_and_a_gone_name_is_not_found() {
        let p = Processes::default();
        let (send, rx) = collector();
        p.run("s", &sh("exec sleep 60"), &[], "/", "/", send);
        assert_eq!(p.signal("s", libc::SIGKILL), Response::Ok);
        assert_eq!(until_exit(&rx).2, 128 + libc::SIGKILL as u32);
        assert!(matches!(
            p.signal("s", libc::SIGKILL),
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn bad_requests_are_refused_with_their_kind() {
        let p = Processes::default();
        let (send, _rx) = collector();
        let refused = |r: Response, want: ErrorKind| match r {
            Response::Error { kind, .. } => assert_eq!(kind, want),
            other => panic!("{other:?}"),
        };
        refused(
            p.run("x", &[], &[], "/", "/", send.clone()),
            ErrorKind::InvalidArgument,
        );
        refused(
            p.run(
                "x",
                &sh("true"),
                &["NOEQUALS".into()],
                "/",
                "/",
                send.clone(),
            ),
            ErrorKind::InvalidArgument,
        );
        refused(
            p.run(
                "x",
                &["/no/such/program".into()],
                &[],
                "/",
                "/",
                send.clone(),
            ),
            ErrorKind::NotFound,
        );
        p.run("dup", &sh("exec sleep 60"), &[], "/", "/", send.clone());
        refused(
            p.run("dup", &sh("true"), &[], "/", "/", send),
            ErrorKind::AlreadyExists,
        );
        p.signal("dup", libc::SIGKILL);
    }
}
