//! End-to-end tests of the `airlock-runtime` binary against the real kernel. They need root
//! (namespaces, cgroups, mounts) and skip themselves otherwise.
//!
//! The test process makes itself a child subreaper, like the shim, so container inits are
//! reparented to it when `airlock-runtime create` exits. Tests are serialized by a mutex: the
//! "no process left behind" checks use `waitpid(-1, WNOHANG)`, which must not race with
//! another test's children.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-runtime");
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> Option<MutexGuard<'static, ()>> {
    // These tests create real containers: a non-root run must fail, not pass vacuously.
    assert!(
        nix::unistd::geteuid().is_root(),
        "airlock-runtime's process tests need root (namespaces, cgroups, mounts)"
    );
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: plain prctl.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    Some(g)
}

/// A bundle + state root in a tempdir.
struct TestBundle {
    dir: tempfile::TempDir,
    id: String,
    cgroup_parent: String,
}

impl TestBundle {
    /// A busybox rootfs running `args`, cgroupsPath `/<cgroup_parent>/<id>`.
    fn new(name: &str, args: &[&str]) -> Self {
        Self::with_parent(name, args, "airlock-test")
    }

    fn with_parent(name: &str, args: &[&str], cgroup_parent: &str) -> Self {
        Self::build(name, args, cgroup_parent, false)
    }

    /// `userns`: a user namespace mapping container root to host uid/gid 100000 (it keeps
    /// the network namespace: mounting sysfs needs the netns to be owned by the userns).
    fn build(name: &str, args: &[&str], cgroup_parent: &str, userns: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("{name}-{}", std::process::id());
        let rootfs = dir.path().join("bundle/rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for l in ["sh", "true", "echo", "sleep", "cat", "id"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(l)).unwrap();
        }
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(false));
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        spec.set_process(Some(process));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{cgroup_parent}/{id}"))));
        let ns = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|n| userns || n.typ() != LinuxNamespaceType::Network)
            .collect::<Vec<_>>();
        linux.set_namespaces(Some(ns));
        if userns {
            let mut ns = linux.namespaces().clone().unwrap();
            ns.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .build()
                    .unwrap(),
            );
            linux.set_namespaces(Some(ns));
            let map = LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(100000u32)
                .size(65536u32)
                .build()
                .unwrap();
            linux.set_uid_mappings(Some(vec![map]));
            linux.set_gid_mappings(Some(vec![map]));
        }
        spec.set_linux(Some(linux));
        spec.save(dir.path().join("bundle/config.json")).unwrap();
        Self {
            dir,
            id,
            cgroup_parent: cgroup_parent.to_owned(),
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("init.pid")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(self.root());
        c
    }

    /// Runs a non-create subcommand, capturing its output.
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `create` with the container's stdio on pipes. Returns (exit status, stderr of the
    /// runtime if it failed (read to EOF), readers for the container's stdout/stderr).
    fn create(&self) -> Created {
        self.create_with(&[])
    }

    /// `create` with extra options (before the id).
    fn create_with(&self, extra: &[&std::ffi::OsStr]) -> Created {
        let (out_r, out_w) = std::io::pipe().unwrap();
        let (err_r, err_w) = std::io::pipe().unwrap();
        let status = self
            .cmd()
            .arg("create")
            .arg("--bundle")
            .arg(self.bundle())
            .arg("--pid-file")
            .arg(self.pid_file())
            .args(extra)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(out_w)
            .stderr(err_w)
            .status()
            .unwrap();
        Created {
            ok: status.success(),
            stdout: out_r,
            stderr: err_r,
        }
    }

    fn init_pid(&self) -> Pid {
        let s = std::fs::read_to_string(self.pid_file()).unwrap();
        Pid::from_raw(s.trim().parse().unwrap())
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_hierarchies()
            .into_iter()
            .map(|h| h.join(&self.cgroup_parent).join(&self.id))
            .collect()
    }

    fn assert_nothing_left(&self) {
        assert!(
            !self.root().join(&self.id).exists(),
            "state dir left behind"
        );
        for d in self.cgroup_dirs() {
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => {}
            other => panic!("a process was left behind: {other:?}"),
        }
    }
}

struct Created {
    ok: bool,
    stdout: std::io::PipeReader,
    stderr: std::io::PipeReader,
}

fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}

/// The hierarchies a container's cgroup dirs appear in on this host.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    airlock_runtime::cgroups::managed_hierarchies(&airlock_runtime::cgroups::parse_mountinfo(&text))
}

fn ppid_of(pid: Pid) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn stderr_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn runs_workload_with_stdio_and_exit_code() {
    let Some(_g) = serial() else { return };
    let b = TestBundle::new("stdio", &["sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();

    // The init must be our child now: no runtime or intermediate process in between.
    assert_eq!(ppid_of(pid), std::process::id() as i32);

    let st = b.run(&["state", &b.id]);
    assert!(st.status.success(), "{}", stderr_line(&st));
    let state: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid.as_raw());
    for d in b.cgroup_dirs() {
        assert!(d.exists(), "cgroup {} missing", d.display());
    }

    let s = b.run(&["start", &b.id]);
    assert!(s.status.success(), "{}", stderr_line(&s));
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 3));
    assert_eq!(read_all(c.stdout), "hello\n");
    assert_eq!(read_all(c.stderr), "oops\n");

    let st = b.run(&["state", &b.id]);
    let state: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(state["status"], "stopped");

    let d = b.run(&["delete", &b.id]);
    assert!(d.status.success(), "{}", stderr_line(&d));
    b.assert_nothing_left();
}

#[test]
fn kill_term_and_kill_all() {
    let Some(_g) = serial() else { return };
    // TERM: a shell that traps it (a bare sleep as PID 1 would ignore TERM).
    let b = TestBundle::new(
        "term",
        &["sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"],
    );
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();
    assert!(b.run(&["start", &b.id]).status.success());
    // Let the shell install its trap: wait until the sleep child exists.
    let children = format!("/proc/{pid}/task/{pid}/children");
    let mut spins = 0;
    while std::fs::read_to_string(&children)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
        spins += 1;
        if spins > 400 || !Path::new(&children).exists() {
            // No /proc/.../children on this kernel: give the shell a moment instead.
            std::thread::sleep(std::time::Duration::from_millis(200));
            break;
        }
    }
    let k = b.run(&["kill", &b.id, "TERM"]);
    assert!(k.status.success(), "{}", stderr_line(&k));
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 7));
    assert!(b.run(&["delete", &b.id]).status.success());
    b.assert_nothing_left();

    // KILL --all, by number.
    let b = TestBundle::new("killall", &["sh", "-c", "sleep 1000 & sleep 1000"]);
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();
    assert!(b.run(&["start", &b.id]).status.success());
    let k = b.run(&["kill", "--all", &b.id, "9"]);
    assert!(k.status.success(), "{}", stderr_line(&k));
    assert!(matches!(
        waitpid(pid, None).unwrap(),
        WaitStatus::Signaled(p, nix::sys::signal::Signal::SIGKILL, _) if p == pid
    ));
    assert!(b.run(&["delete", &b.id]).status.success());
    b.assert_nothing_left();

    // Bad signal name: clear error, container untouched.
    let b = TestBundle::new("badsig", &["true"]);
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();
    let k = b.run(&["kill", &b.id, "NOPE"]);
    assert!(!k.status.success());
    assert!(stderr_line(&k).contains("unknown signal \"NOPE\""));
    // delete of a created container kills its init
    assert!(b.run(&["delete", &b.id]).status.success());
    assert!(matches!(
        waitpid(pid, None).unwrap(),
        WaitStatus::Signaled(..)
    ));
    b.assert_nothing_left();
}

#[test]
fn delete_force_kills_running_and_removes_created_parents() {
    let Some(_g) = serial() else { return };
    let parent = format!("airlock-test-parent-{}", std::process::id());
    let b = TestBundle::with_parent("force", &["sleep", "1000"], &parent);
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();
    assert!(b.run(&["start", &b.id]).status.success());
    let d = b.run(&["delete", &b.id]);
    assert!(
        !d.status.success(),
        "delete of a running container needs --force"
    );
    assert!(
        stderr_line(&d).contains("use delete --force"),
        "{}",
        stderr_line(&d)
    );
    let d = b.run(&["delete", "--force", &b.id]);
    assert!(d.status.success(), "{}", stderr_line(&d));
    assert!(matches!(
        waitpid(pid, None).unwrap(),
        WaitStatus::Signaled(..)
    ));
    b.assert_nothing_left();
    for h in cgroup_hierarchies() {
        assert!(
            !h.join(&parent).exists(),
            "parent cgroup left in {}",
            h.display()
        );
    }
    // Unknown id: --force is silent success, without it an error.
    let d = b.run(&["delete", "--force", "never-existed"]);
    assert!(d.status.success());
    assert!(d.stderr.is_empty());
    let d = b.run(&["delete", "never-existed"]);
    assert!(!d.status.success());
    assert!(stderr_line(&d).contains("does not exist"));
}

#[test]
fn existing_parent_is_kept() {
    let Some(_g) = serial() else { return };
    let parent = format!("airlock-test-keep-{}", std::process::id());
    let hs = cgroup_hierarchies();
    for h in &hs {
        std::fs::create_dir(h.join(&parent)).unwrap();
    }
    let b = TestBundle::with_parent("keep", &["true"], &parent);
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();
    assert!(b.run(&["start", &b.id]).status.success());
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
    assert!(b.run(&["delete", &b.id]).status.success());
    b.assert_nothing_left();
    for h in &hs {
        assert!(h.join(&parent).exists(), "pre-existing parent was removed");
        std::fs::remove_dir(h.join(&parent)).unwrap();
    }
}

/// Runs a create that must fail; returns the runtime's stderr.
fn failing_create(b: &TestBundle) -> String {
    let c = b.create();
    assert!(!c.ok, "create unexpectedly succeeded");
    let msg = read_all(c.stderr);
    eprintln!("create failed as expected: {msg}");
    assert_eq!(msg.lines().count(), 1, "one line expected: {msg:?}");
    assert!(read_all(c.stdout).is_empty());
    assert!(
        !b.pid_file().exists(),
        "pid file of a failed create left behind"
    );
    b.assert_nothing_left();
    msg
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing() {
    let Some(_g) = serial() else { return };
    let parent = format!("airlock-test-bad-{}", std::process::id());

    // malformed config.json
    let b = TestBundle::with_parent("malformed", &["true"], &parent);
    std::fs::write(
        b.bundle().join("config.json"),
        "{\n \"ociVersion\": \"1.0.2\",\n  \"process\" {}\n}",
    )
    .unwrap();
    let msg = failing_create(&b);
    assert!(msg.contains("is malformed at line 3 column"), "{msg}");
    assert!(msg.contains("fix the bundle's config.json"), "{msg}");

    // missing config.json
    let b = TestBundle::with_parent("noconfig", &["true"], &parent);
    std::fs::remove_file(b.bundle().join("config.json")).unwrap();
    let msg = failing_create(&b);
    assert!(msg.contains("no config.json in bundle"), "{msg}");
    assert_eq!(
        msg.matches("os error 2").count(),
        1,
        "cause printed once: {msg}"
    );

    // nonexistent rootfs
    let b = TestBundle::with_parent("norootfs", &["true"], &parent);
    std::fs::remove_dir_all(b.bundle().join("rootfs")).unwrap();
    let msg = failing_create(&b);
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(msg.contains("rootfs"), "{msg}");

    // missing executable: fails at create (inside the init, after cgroup + rootfs setup),
    // so this also checks that the cgroup leaf and the parent it made are removed.
    let b = TestBundle::with_parent("noexe", &["/nope"], &parent);
    let msg = failing_create(&b);
    assert!(
        msg.contains("executable \"/nope\" not found in the container's rootfs (PATH="),
        "{msg}"
    );
    let b = TestBundle::with_parent("noexe2", &["no-such-tool", "x"], &parent);
    let msg = failing_create(&b);
    assert!(msg.contains("\"no-such-tool\" not found"), "{msg}");

    for h in cgroup_hierarchies() {
        assert!(
            !h.join(&parent).exists(),
            "parent cgroup left in {}",
            h.display()
        );
    }
}

/// Sets `process.terminal` in the bundle's config.json.
fn set_terminal(b: &TestBundle, terminal: bool) {
    let path = b.bundle().join("config.json");
    let mut spec = Spec::load(&path).unwrap();
    let mut process = spec.process().clone().unwrap();
    process.set_terminal(Some(terminal));
    spec.set_process(Some(process));
    spec.save(&path).unwrap();
}

/// Accepts the runtime's connection and takes the descriptor it sent (SCM_RIGHTS).
fn receive_master(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("the runtime sent no descriptor");
    // SAFETY: the kernel just installed this descriptor for us.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// With process.terminal, `create --console-socket` sends a pty master; the init's stdio is the
/// pty's slave and its controlling terminal, in a session of its own. The socket is required
/// exactly when the process has a terminal.
#[test]
fn terminal_over_the_console_socket() {
    let Some(_g) = serial() else { return };
    let script =
        "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-a-tty; read line; echo got-$line; exit 4";
    let b = TestBundle::new("tty", &["sh", "-c", script]);
    set_terminal(&b, true);
    let msg = failing_create(&b);
    assert!(msg.contains("no --console-socket was given"), "{msg}");

    let sock = b.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let c = b.create_with(&["--console-socket".as_ref(), sock.as_os_str()]);
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let mut master = receive_master(&listener);
    let pid = b.init_pid();
    // /proc/PID/stat: "pid (comm) state ppid pgrp session tty_nr ..."
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(f[3], pid.to_string(), "init leads its own session: {stat}");
    assert_ne!(f[4], "0", "init has a controlling terminal: {stat}");

    assert!(b.run(&["start", &b.id]).status.success());
    std::io::Write::write_all(&mut master, b"hi\n").unwrap();
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 4));
    // Every slave is closed now: the master reads what is left, then fails with EIO.
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match std::io::Read::read(&mut master, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("read master: {e}"),
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("all-a-tty\r\n"), "{out:?}");
    assert!(out.contains("got-hi\r\n"), "{out:?}");
    assert!(b.run(&["delete", &b.id]).status.success());
    b.assert_nothing_left();

    // A socket for a process without a terminal is refused too.
    let b = TestBundle::new("notty", &["true"]);
    let c = b.create_with(&["--console-socket".as_ref(), sock.as_os_str()]);
    assert!(!c.ok);
    let msg = read_all(c.stderr);
    assert!(
        msg.contains("has no terminal (process.terminal is false)"),
        "{msg}"
    );
    b.assert_nothing_left();
}

#[test]
fn user_namespace_maps_root() {
    let Some(_g) = serial() else { return };
    let b = TestBundle::build(
        "userns",
        &["sh", "-c", "id -u; cat /proc/self/uid_map"],
        "airlock-test",
        true,
    );
    let c = b.create();
    assert!(c.ok, "create failed: {}", read_all(c.stderr));
    let pid = b.init_pid();
    assert_eq!(ppid_of(pid), std::process::id() as i32);
    assert!(b.run(&["start", &b.id]).status.success());
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
    let out = read_all(c.stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"]);
    assert!(b.run(&["delete", &b.id]).status.success());
    b.assert_nothing_left();
}
