//! The processes the agent runs for the host: started in a root directory of their own, their
//! output and exit sent as [`FromAgent`] messages, signalled by name.
//!
//! The agent is the guest's PID 1, so every process orphaned in the guest becomes its child.
//! One reaper thread reaps all children: it learns of an exit with `waitid(WNOWAIT)`, then,
//! holding the table's lock, forgets the name and reaps the pid, and hands a named process's
//! status to its waiter; orphans are reaped and forgotten. A signal sent by name therefore goes
//! to the process or finds no such name, never to a pid that was reused.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};

use airlock_contract::ErrorKind;
use rustix::process::{Pid, Signal, WaitOptions};

use crate::confine::Prepared;
use crate::protocol::{Confinement, FromAgent, Io, Namespaces, Response, Stream, OUTPUT_CHUNK};
use crate::terminal::Pty;

/// How long the output of a process that has exited may still come before its exit is
/// reported (the shim's core waits as long for its copy to drain).
const OUTPUT_AFTER_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where messages to the host go (the control port's writer).
pub type Send = Arc<dyn Fn(&FromAgent) + std::marker::Send + Sync>;

struct Named {
    pid: u32,
    exited: mpsc::Sender<u32>,
    /// Its stdin, when it reads one.
    stdin: Option<crate::stdin::Writer>,
    /// Its terminal's master, when it has one.
    pty: Option<std::os::fd::OwnedFd>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, Named>,
}

/// The running processes, by name. There is one table per agent (one reaper per process):
/// [`Processes::get`].
pub struct Processes {
    table: Mutex<Table>,
    spawned: Condvar,
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
fn status_of(status: rustix::process::WaitStatus) -> u32 {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code as u32,
        (None, Some(sig)) => 128 + sig as u32,
        (None, None) => 255,
    }
}

/// Waits until some child has exited (without reaping it) and returns its pid; None when
/// there is no child at all.
fn next_exit() -> Option<u32> {
    loop {
        // rustix's waitid result does not carry the pid: libc's siginfo does.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into `info`, which we own.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            // SAFETY: waitid filled in a SIGCHLD siginfo.
            return Some(unsafe { info.si_pid() } as u32);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            _ => return None,
        }
    }
}

impl Processes {
    /// The agent's table, with its reaper started on first use.
    pub fn get() -> &'static Processes {
        static ONE: OnceLock<Processes> = OnceLock::new();
        ONE.get_or_init(|| {
            std::thread::spawn(|| Processes::get().reap());
            Processes {
                table: Mutex::new(Table::default()),
                spawned: Condvar::new(),
            }
        })
    }

    fn reap(&self) {
        loop {
            let Some(pid) = next_exit() else {
                // No child at all: wait for the next start.
                let table = self.table.lock().unwrap();
                let _unused = self
                    .spawned
                    .wait_while(table, |t| t.by_name.is_empty())
                    .unwrap();
                continue;
            };
            let mut table = self.table.lock().unwrap();
            let name = table
                .by_name
                .iter()
                .find(|(_, n)| n.pid == pid)
                .map(|(k, _)| k.clone());
            let named = name.and_then(|k| table.by_name.remove(&k));
            let status = Pid::from_raw(pid as i32)
                .and_then(|p| rustix::process::waitpid(Some(p), WaitOptions::empty()).ok())
                .flatten()
                .map(|(_, st)| status_of(st))
                .unwrap_or(255);
            drop(table);
            if let Some(n) = named {
                let _ = n.exited.send(status);
            }
        }
    }

    /// Starts `args` as `process`, chrooted to `root`, in `cwd`, with exactly `env`, under
    /// `confine` ([`crate::confine`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        process: &str,
        args: &[String],
        env: &[String],
        root: &str,
        cwd: &str,
        io: Io,
        confine: &Confinement,
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
        if table.by_name.contains_key(process) {
            return error(
                ErrorKind::AlreadyExists,
                format!("a process named {process} is running"),
            );
        }
        let join_pid = match &confine.namespaces {
            Some(Namespaces::Join { process }) => table.by_name.get(process).map(|n| n.pid),
            _ => None,
        };
        // A child would freeze before its exec, in the spawn, with the table locked.
        if let Some(cg) = &confine.cgroup {
            if crate::cgroups::frozen(cg) {
                return error(
                    ErrorKind::FailedPrecondition,
                    format!("cgroup {cg} is frozen (paused): resume it first"),
                );
            }
        }
        let prepared = match Prepared::new(confine, root, cwd, join_pid) {
            Ok(p) => Arc::new(p),
            Err(refusal) => return refusal,
        };
        let pty = match io {
            Io::Terminal => match Pty::open() {
                Ok(p) => Some(p),
                Err(e) => return error(ErrorKind::Unknown, format!("opening a pty: {e}")),
            },
            _ => None,
        };
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]).env_clear().envs(env);
        match &pty {
            Some(p) => {
                let [i, o, e] = match p.stdio() {
                    Ok(s) => s,
                    Err(e) => return error(ErrorKind::Unknown, format!("the pty's slave: {e}")),
                };
                cmd.stdin(i).stdout(o).stderr(e);
                // SAFETY: setsid and ioctl only, in the child before its exec.
                unsafe {
                    cmd.pre_exec(|| crate::terminal::take_as_controlling_terminal());
                }
            }
            None => {
                let stdin = if io == Io::PipesAndStdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                };
                cmd.stdin(stdin)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
        }
        let in_child = prepared.clone();
        // SAFETY: apply_in_child only makes system calls, in the child before its exec.
        unsafe {
            cmd.pre_exec(move || in_child.apply_in_child());
        }
        // Spawned under the table's lock: the reaper cannot see its exit before its name.
        let mut child = match prepared.spawn(|| cmd.spawn()) {
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
        // The parent's copies of the pty's slave go with the command.
        drop(cmd);
        let kill = |child: &mut std::process::Child, what: &str, e: io::Error| {
            let _ = child.kill();
            error(ErrorKind::Unknown, format!("{what}: {e}"))
        };
        let (stdin, outputs): (_, Vec<(Stream, Box<dyn Read + std::marker::Send>)>) = match &pty {
            Some(p) => match p.master_io() {
                Ok((r, w)) => (Some(w), vec![(Stream::Stdout, Box::new(r) as Box<_>)]),
                Err(e) => return kill(&mut child, "the pty's master", e),
            },
            None => (
                None,
                vec![
                    (
                        Stream::Stdout,
                        Box::new(child.stdout.take().expect("piped")) as Box<_>,
                    ),
                    (
                        Stream::Stderr,
                        Box::new(child.stderr.take().expect("piped")) as Box<_>,
                    ),
                ],
            ),
        };
        let stdin = match stdin {
            Some(w) => Some(crate::stdin::Writer::spawn(w)),
            None => child.stdin.take().map(crate::stdin::Writer::spawn),
        };
        let stdin = match stdin.transpose() {
            Ok(s) => s,
            Err(e) => return kill(&mut child, "a thread for its stdin", e),
        };
        // Its output readers and its exit's reporter, started before it is named: if a
        // thread cannot be made, it is killed and the Run fails (the reaper reaps it).
        let (tx, exited) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let mut readers = 0;
        for (stream, from) in outputs {
            let (name, send, done_tx) = (process.to_string(), send.clone(), done_tx.clone());
            let spawned = std::thread::Builder::new().spawn(move || {
                forward(name, stream, from, send);
                let _ = done_tx.send(());
            });
            match spawned {
                Ok(_) => readers += 1,
                Err(e) => return kill(&mut child, "a thread for its output", e),
            }
        }
        let name = process.to_string();
        let cgroup = confine.cgroup.clone();
        let reporter = std::thread::Builder::new().spawn(move || {
            let status = exited.recv().unwrap_or(255);
            // Its output, up to a bound: a child it left behind may hold its pipes open.
            let deadline = std::time::Instant::now() + OUTPUT_AFTER_EXIT;
            for _ in 0..readers {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if done.recv_timeout(left).is_err() {
                    break;
                }
            }
            // An OOM kill that ended it is reported first.
            if let Some(cg) = &cgroup {
                crate::oom::check(cg);
            }
            send(&FromAgent::Exited {
                process: name,
                status,
            });
        });
        if let Err(e) = reporter {
            return kill(&mut child, "a thread for its exit", e);
        }
        // The reaper reaps it; std's handle never waits.
        drop(child);
        table.by_name.insert(
            process.to_string(),
            Named {
                pid,
                exited: tx,
                stdin,
                pty: pty.map(|p| p.master),
            },
        );
        self.spawned.notify_all();
        drop(table);
        Response::Started { pid }
    }

    /// Writes `data` to `process`'s stdin; `reply` gets the answer once it is written.
    pub fn input(&self, process: &str, data: Vec<u8>, reply: crate::stdin::Reply) {
        let table = self.table.lock().unwrap();
        match table.by_name.get(process).map(|n| n.stdin.as_ref()) {
            Some(Some(w)) => w.write(data, reply),
            Some(None) => reply(error(
                ErrorKind::FailedPrecondition,
                format!("{process} has no stdin (or it was closed)"),
            )),
            None => reply(error(
                ErrorKind::NotFound,
                format!("no running process named {process}"),
            )),
        }
    }

    /// Closes `process`'s stdin once what was written before is.
    pub fn close_input(&self, process: &str) -> Response {
        let mut table = self.table.lock().unwrap();
        match table.by_name.get_mut(process) {
            Some(n) => {
                // A terminal in canonical mode reads the end of input as its VEOF character;
                // in raw mode no byte means that, and its input just stops.
                if let (Some(w), Some(master)) = (&n.stdin, &n.pty) {
                    if let Some(eof) = crate::terminal::eof_char(master) {
                        w.end_terminal(eof);
                    }
                }
                n.stdin = None;
                Response::Ok
            }
            None => error(
                ErrorKind::NotFound,
                format!("no running process named {process}"),
            ),
        }
    }

    /// Sets the size of `process`'s terminal.
    pub fn resize(&self, process: &str, rows: u16, cols: u16) -> Response {
        let table = self.table.lock().unwrap();
        match table.by_name.get(process).map(|n| n.pty.as_ref()) {
            Some(Some(master)) => match crate::terminal::resize(master, rows, cols) {
                Ok(()) => Response::Ok,
                Err(e) => error(
                    ErrorKind::Unknown,
                    format!("resizing {process}'s terminal: {e}"),
                ),
            },
            Some(None) => error(
                ErrorKind::FailedPrecondition,
                format!("{process} has no terminal"),
            ),
            None => error(
                ErrorKind::NotFound,
                format!("no running process named {process}"),
            ),
        }
    }

    /// Sends `signal` to the running process `process`.
    pub fn signal(&self, process: &str, signal: i32) -> Response {
        let table = self.table.lock().unwrap();
        let Some(named) = table.by_name.get(process) else {
            return error(
                ErrorKind::NotFound,
                format!("no running process named {process}"),
            );
        };
        let (Some(pid), Some(sig)) = (
            Pid::from_raw(named.pid as i32),
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

    /// No confinement (the agent's own namespaces, user and capabilities).
    fn open() -> Confinement {
        Confinement::default()
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    /// Starts unconfined process `name` running `script` with `io`; its messages.
    fn start(p: &Processes, name: &str, script: &str, io: Io) -> mpsc::Receiver<FromAgent> {
        let (send, rx) = collector();
        let r = p.run(name, &sh(script), &[], "/", "/", io, &open(), send);
        assert!(matches!(r, Response::Started { .. }), "{r:?}");
        rx
    }

    /// Writes `data` to process `name`'s input and waits until it is written.
    fn feed(p: &Processes, name: &str, data: &[u8]) {
        let (tx, answered) = mpsc::channel();
        p.input(name, data.to_vec(), Box::new(move |r| tx.send(r).unwrap()));
        assert_eq!(answered.recv().unwrap(), Response::Ok);
    }

    #[test]
    fn output_then_exit_in_order() {
        let p = Processes::get();
        let (send, rx) = collector();
        let r = p.run(
            "order",
            &sh("echo out; echo err >&2; echo $GREETING; exit 7"),
            &["GREETING=hi".into()],
            "/",
            "/",
            Io::Pipes,
            &open(),
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
        let p = Processes::get();
        let (send, rx) = collector();
        p.run(
            "s",
            &sh("exec sleep 60"),
            &[],
            "/",
            "/",
            Io::Pipes,
            &open(),
            send,
        );
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
        let p = Processes::get();
        let (send, _rx) = collector();
        let refused = |r: Response, want: ErrorKind| match r {
            Response::Error { kind, .. } => assert_eq!(kind, want),
            other => panic!("{other:?}"),
        };
        refused(
            p.run("bad", &[], &[], "/", "/", Io::Pipes, &open(), send.clone()),
            ErrorKind::InvalidArgument,
        );
        refused(
            p.run(
                "x",
                &sh("true"),
                &["NOEQUALS".into()],
                "/",
                "/",
                Io::Pipes,
                &open(),
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
                Io::Pipes,
                &open(),
                send.clone(),
            ),
            ErrorKind::NotFound,
        );
        p.run(
            "dup",
            &sh("exec sleep 60"),
            &[],
            "/",
            "/",
            Io::Pipes,
            &open(),
            send.clone(),
        );
        refused(
            p.run("dup", &sh("true"), &[], "/", "/", Io::Pipes, &open(), send),
            ErrorKind::AlreadyExists,
        );
        p.signal("dup", libc::SIGKILL);
    }

    #[test]
    fn an_orphan_is_reaped_and_its_parent_still_reported() {
        // As PID 1 is in the guest: orphans of this process's children come to it.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        let p = Processes::get();
        let (send, rx) = collector();
        p.run(
            "orphaner",
            &sh("sleep 0.3 & echo $!"),
            &[],
            "/",
            "/",
            Io::Pipes,
            &open(),
            send,
        );
        let (out, _, status) = until_exit(&rx);
        assert_eq!(status, 0);
        let orphan: u32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
        let stat = format!("/proc/{orphan}/stat");
        let start = std::time::Instant::now();
        // Gone, not a zombie: the reaper reaped it.
        while std::path::Path::new(&stat).exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "orphan {orphan} not reaped: {}",
                std::fs::read_to_string(&stat).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A seccomp program that fails `getppid` with EPERM and allows everything else.
    fn deny_getppid() -> Vec<u8> {
        let insns: [(u16, u8, u8, u32); 4] = [
            (0x20, 0, 0, 0),                                // ld [nr]
            (0x15, 0, 1, libc::SYS_getppid as u32),         // jeq getppid
            (0x06, 0, 0, 0x0005_0000 | libc::EPERM as u32), // ret ERRNO(EPERM)
            (0x06, 0, 0, 0x7fff_0000),                      // ret ALLOW
        ];
        insns
            .iter()
            .flat_map(|(code, jt, jf, k)| {
                let mut b = code.to_ne_bytes().to_vec();
                b.extend([*jt, *jf]);
                b.extend(k.to_ne_bytes());
                b
            })
            .collect()
    }

    fn status_line<'a>(status: &'a str, key: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    }

    #[test]
    fn a_confined_init_and_an_exec_that_joins_it() {
        let p = Processes::get();
        let (send, rx) = collector();
        let confine = Confinement {
            namespaces: Some(Namespaces::New {
                hostname: Some("confined".into()),
            }),
            user: Some(crate::protocol::User {
                uid: 65534,
                gid: 65534,
                additional_gids: vec![65533],
            }),
            capabilities: Some(crate::protocol::Capabilities::default()),
            no_new_privs: true,
            seccomp: vec![deny_getppid()],
            ..Confinement::default()
        };
        let r = p.run(
            "confined",
            &sh("hostname; echo $$; cat /proc/self/status; exec sleep 60"),
            &[],
            "/",
            "/",
            Io::Pipes,
            &confine,
            send,
        );
        assert!(matches!(r, Response::Started { .. }), "{r:?}");
        // An exec into its namespaces, unconfined otherwise.
        let (send2, rx2) = collector();
        let join = Confinement {
            namespaces: Some(Namespaces::Join {
                process: "confined".into(),
            }),
            ..Confinement::default()
        };
        let r = p.run(
            "confined/exec",
            &sh("hostname; echo $$"),
            &[],
            "/",
            "/",
            Io::Pipes,
            &join,
            send2,
        );
        assert!(matches!(r, Response::Started { .. }), "{r:?}");
        let (out, err, status) = until_exit(&rx2);
        assert_eq!(status, 0, "{}", String::from_utf8_lossy(&err));
        let out = String::from_utf8(out).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("confined"));
        let pid: u32 = lines.next().unwrap().parse().unwrap();
        assert!(pid > 1, "the exec is not the namespace's PID 1: {pid}");

        // The init's report is whole once its last line is there.
        let mut out = Vec::new();
        let whole = |o: &[u8]| {
            let o = String::from_utf8_lossy(o);
            o.split_once("\nSeccomp:")
                .is_some_and(|(_, rest)| rest.contains('\n'))
        };
        while !whole(&out) {
            match rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap() {
                FromAgent::Output { data, .. } => out.extend(data),
                other => panic!("{other:?}: {}", String::from_utf8_lossy(&out)),
            }
        }
        p.signal("confined", libc::SIGKILL);
        let (rest, err, _) = until_exit(&rx);
        out.extend(rest);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("confined\n1\n"),
            "{out}\n{}",
            String::from_utf8_lossy(&err)
        );
        assert_eq!(status_line(&out, "Uid:"), "65534\t65534\t65534\t65534");
        assert_eq!(status_line(&out, "Groups:"), "65533");
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(status_line(&out, set), "0000000000000000", "{set}");
        }
        assert_eq!(status_line(&out, "NoNewPrivs:"), "1");
        assert_eq!(status_line(&out, "Seccomp:"), "2");
    }

    #[test]
    fn a_confinement_that_cannot_be_applied_fails_the_start() {
        let p = Processes::get();
        let (send, _rx) = collector();
        let c = Confinement {
            cgroup: Some("no-such-cgroup-here".into()),
            ..Confinement::default()
        };
        assert!(matches!(
            p.run("nocg", &sh("true"), &[], "/", "/", Io::Pipes, &c, send),
            Response::Error {
                kind: ErrorKind::FailedPrecondition,
                ..
            }
        ));
    }

    #[test]
    fn stdin_is_fed_in_order_and_closed() {
        let p = Processes::get();
        let rx = start(p, "cat", "cat; echo done", Io::PipesAndStdin);
        for chunk in ["one\n", "two\n"] {
            feed(p, "cat", chunk.as_bytes());
        }
        assert_eq!(p.close_input("cat"), Response::Ok);
        let (out, _, status) = until_exit(&rx);
        assert_eq!(
            (String::from_utf8(out).unwrap().as_str(), status),
            ("one\ntwo\ndone\n", 0)
        );
        // No stdin any more, and no such process.
        let (tx, answered) = mpsc::channel();
        p.input("cat", b"x".to_vec(), Box::new(move |r| tx.send(r).unwrap()));
        assert!(matches!(
            answered.recv().unwrap(),
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn a_terminal_is_the_processs_controlling_tty_and_takes_its_size() {
        let p = Processes::get();
        let (send, rx) = collector();
        let script = "read size; stty size; tty -s && echo tty; echo $size";
        let r = p.run(
            "tty",
            &sh(script),
            &[],
            "/",
            "/",
            Io::Terminal,
            &open(),
            send,
        );
        assert!(matches!(r, Response::Started { .. }), "{r:?}");
        assert_eq!(p.resize("tty", 33, 101), Response::Ok);
        feed(p, "tty", b"typed\n");
        let (out, err, status) = until_exit(&rx);
        let out = String::from_utf8_lossy(&out).replace('\r', "");
        assert_eq!(status, 0, "{out}");
        assert!(err.is_empty(), "a terminal has no separate stderr");
        // The terminal echoes what was typed, then the script's lines.
        assert_eq!(out, "typed\n33 101\ntty\ntyped\n");
        assert!(matches!(
            p.resize("cat-gone", 1, 1),
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn a_child_left_holding_the_output_does_not_hold_back_the_exit() {
        let p = Processes::get();
        let (send, rx) = collector();
        let t = std::time::Instant::now();
        let r = p.run(
            "daemon",
            &sh("sleep 30 & echo started"),
            &[],
            "/",
            "/",
            Io::Pipes,
            &open(),
            send,
        );
        assert!(matches!(r, Response::Started { .. }), "{r:?}");
        let (out, _, status) = until_exit(&rx);
        assert_eq!((out.as_slice(), status), (b"started\n".as_slice(), 0));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn closing_a_terminals_input_ends_it_after_a_partial_line() {
        let p = Processes::get();
        let rx = start(p, "ttyeof", "stty -echo; cat; echo done", Io::Terminal);
        feed(p, "ttyeof", b"abc");
        assert_eq!(p.close_input("ttyeof"), Response::Ok);
        let (out, _, status) = until_exit(&rx);
        let out = String::from_utf8_lossy(&out).replace('\r', "");
        // The input may reach the terminal before `stty -echo` runs and then
        // be echoed once more; what matters is that cat got it and ended.
        assert!(out.ends_with("abcdone\n"), "{out:?}");
        assert_eq!(status, 0);
    }
}
