//! The Task API beyond create/start/wait/delete, through ctr, the gRPC API and containerd's
//! events: pause/resume, stats, update, pids, exec, stdin/CloseIO, terminals (ResizePty,
//! Ctrl-C, CloseIO on a terminal). Every case observes the effect
//! (a counter that stops, figures that are non-zero, cgroup files that change, output and exit
//! codes of execs), for airlock and runc (the reference) on containerd 1.6 and 2.1.
//!
//! Pause/resume (and kill of a paused task), stats, update and block I/O limits are scenarios of
//! `airlock_integration::taskapi`, which the cgroup v2 node (`tests/cgroupv2.rs`) runs too.
//!
//! Select: `cargo test -p airlock-integration --test taskapi -- airlock_`.

use airlock_integration::containerd::Version;
use airlock_integration::fifo::TaskFifos;
use airlock_integration::taskapi::{io_limits, pause_resume, stats, topics, update, Case, T};
use airlock_integration::{proc_util, Runtime, TaskEvent};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A memory bomb under a 32 MiB limit is OOM-killed: TaskOOM is published before the
/// container's TaskExit, and the exit status is 137.
fn oom_before_exit(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "oom");
    let id = c.id("oom");
    let tokio = c.rt();
    let mut ev = c.subscribe(&tokio);
    let mut args = vec!["run", "--rm", "--memory-limit", "33554432"];
    args.extend(c.runtime_args());
    // The string doubles until the cgroup's limit is hit.
    args.extend([
        airlock_integration::IMAGE_REF,
        &id,
        "sh",
        "-c",
        "x=a; while :; do x=$x$x; done",
    ]);
    let out = c.ctr(&args);
    assert_eq!(out.code, Some(137), "OOM-killed init exits 137: {out:?}");
    let evs = tokio
        .block_on(ev.collect_until(T, |v| topics(v).iter().any(|t| t == "/tasks/exit")))
        .unwrap();
    let t = topics(&evs);
    let oom = t.iter().position(|t| t == "/tasks/oom");
    let exit = t.iter().position(|t| t == "/tasks/exit");
    if rt == Runtime::Airlock {
        assert!(
            oom.is_some() && oom < exit,
            "TaskOOM must come before TaskExit: {t:?}"
        );
    } else if !(oom.is_some() && oom < exit) {
        // runc.v2's v1 OOM watcher races the exit under load (seen once in a full run):
        // the reference shows the expected order most of the time, never a hard guarantee.
        println!("PEER {rt} {v:?}: TaskOOM not before TaskExit: {t:?}");
    }
    c.assert_no_leaks();
}

/// Exec output and exit code, in the container's namespaces and under its init's
/// capabilities and no_new_privs; exec events.
fn exec(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "exec");
    let id = c.id("exec");
    let tokio = c.rt();
    let mut ev = c.subscribe(&tokio);
    let pid = c.run_detached(&id, "trap 'exit 0' TERM; while :; do usleep 50000; done");
    let out = c.exec(
        &id,
        "e1",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /proc/1/cmdline | tr '\\0' ' '; echo; for n in pid mnt net uts ipc cgroup; do echo ns-$n=$(readlink /proc/self/ns/$n); done; [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] && echo same-cgroup-as-init; exit 5",
        ],
    );
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stdout.starts_with("out\n"), "{out:?}");
    assert!(out.stderr.contains("err"), "{out:?}");
    // Same pid namespace: pid 1 is the init's shell.
    assert!(out.stdout.contains("sh -c trap"), "{out:?}");
    // Same capabilities and no_new_privs as the init.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["CapEff", "NoNewPrivs"] {
        let line = |s: &str| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        };
        assert_eq!(line(&out.stdout), line(&status), "{key}: {out:?}");
    }
    // Same namespaces (the cgroup namespace too: agent-strict gives the container its own)
    // and cgroup as the init (read inside, so both paths are relative to one namespace).
    for n in ["pid", "mnt", "net", "uts", "ipc", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
        let want = format!("ns-{n}={}", host.display());
        assert!(out.stdout.contains(&want), "{want} not in {out:?}");
    }
    assert!(
        out.stdout.contains("same-cgroup-as-init"),
        "exec not in init's cgroup: {out:?}"
    );
    let evs = tokio
        .block_on(ev.collect_until(T, |v| {
            v.iter()
                .any(|e| matches!(&e.event, TaskEvent::Exit { id: x, .. } if x == "e1"))
        }))
        .unwrap();
    let t = topics(&evs);
    let added = t.iter().position(|t| t == "/tasks/exec-added");
    let started = t.iter().position(|t| t == "/tasks/exec-started");
    assert!(
        added.is_some() && added < started,
        "exec events out of order: {t:?}"
    );
    let exit = evs.iter().find_map(|e| match &e.event {
        TaskEvent::Exit {
            id: x, exit_status, ..
        } if x == "e1" => Some(*exit_status),
        _ => None,
    });
    assert_eq!(exit, Some(5));
    c.remove(&id);
    c.assert_no_leaks();
}

/// Many execs at once, each with its own output and exit code.
fn exec_concurrent(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "execn");
    let id = c.id("execn");
    c.run_detached(&id, "trap 'exit 0' TERM; while :; do usleep 50000; done");
    let c = Arc::new(c);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                let script = format!("echo exec{i}; exit {}", 10 + i);
                let out = c.exec(&id, &format!("x{i}"), &["sh", "-c", &script]);
                (i, out)
            })
        })
        .collect();
    for h in handles {
        let (i, out) = h.join().unwrap();
        assert_eq!(out.code, Some(10 + i), "exec {i}: {out:?}");
        assert_eq!(out.stdout.trim(), format!("exec{i}"), "exec {i}: {out:?}");
    }
    c.remove(&id);
    c.assert_no_leaks();
}

/// An exec of a missing binary fails with a clear error; the container keeps running.
fn exec_missing_binary(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "execmiss");
    let id = c.id("execmiss");
    c.run_detached(&id, "trap 'exit 0' TERM; while :; do usleep 50000; done");
    let out = c.exec(&id, "miss", &["/no/such/binary"]);
    assert!(!out.success(), "{out:?}");
    if rt == Runtime::Airlock {
        assert!(
            out.stderr.contains("/no/such/binary"),
            "unclear error: {out:?}"
        );
    }
    assert_eq!(c.status(&id), "RUNNING");
    let ok = c.exec(&id, "after", &["true"]);
    assert!(ok.success(), "{ok:?}");
    c.remove(&id);
    c.assert_no_leaks();
}

/// Exec into a stopped container fails with a clear error.
fn exec_stopped(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "execstop");
    let id = c.id("execstop");
    c.run_detached(&id, "exit 0");
    c.wait_status(&id, "STOPPED");
    let out = c.exec(&id, "late", &["true"]);
    assert!(!out.success(), "exec into a stopped container: {out:?}");
    if rt == Runtime::Airlock {
        assert!(
            out.stderr.contains("stopped") && out.stderr.contains("running container"),
            "unclear error: {out:?}"
        );
    }
    c.ctr_ok(&["tasks", "delete", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    c.assert_no_leaks();
}

/// Pids lists every process of the container (the init and an exec'd sleep); an exec can be
/// signalled on its own; when the init dies, running execs end and report their exits.
fn pids_and_exec_lifecycle(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "pids");
    let id = c.id("pids");
    let pid = c.run_detached(&id, "trap 'exit 0' TERM; while :; do usleep 50000; done");
    let mut a = vec!["tasks", "exec", "--exec-id", "s1", &id, "sleep", "300"];
    let s1 = c.ctd.ctr_spawn(Some(&c.ns), &a).unwrap();
    a[3] = "s2";
    let s2 = c.ctd.ctr_spawn(Some(&c.ns), &a).unwrap();
    let list = || -> Vec<i32> {
        c.ctr_ok(&["tasks", "ps", &id])
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let sleeps = |procs: &[i32]| -> Vec<i32> {
        procs
            .iter()
            .copied()
            .filter(|p| proc_util::cmdline(*p).first().map(String::as_str) == Some("sleep"))
            .collect()
    };
    // An exec shows up in the cgroup before it has exec'd `sleep` (runc's shim reports the
    // exec started while `runc init` still runs): wait for both sleeps, not just three pids.
    assert!(
        proc_util::wait_until(T, Duration::from_millis(50), || sleeps(&list()).len() >= 2),
        "ps: {:?}",
        list()
    );
    let procs = list();
    assert!(procs.contains(&pid), "init {pid} not in {procs:?}");
    assert_eq!(sleeps(&procs).len(), 2, "{procs:?}");
    // Signal one exec alone.
    c.ctr_ok(&["tasks", "kill", "--exec-id", "s1", "-s", "KILL", &id]);
    let o1 = s1.wait(T).unwrap();
    assert_eq!(o1.code, Some(137), "{o1:?}");
    assert_eq!(c.status(&id), "RUNNING");
    // The init dies; the other exec goes with it and its ctr returns.
    let t0 = Instant::now();
    c.ctr_ok(&["tasks", "kill", "-s", "KILL", &id]);
    let o2 = s2.wait(T).unwrap();
    assert!(
        o2.code == Some(137) || o2.code == Some(255),
        "exec after init death: {o2:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    c.wait_status(&id, "STOPPED");
    c.ctr_ok(&["tasks", "delete", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    c.assert_no_leaks();
}

/// A stopped container's cgroup and rootfs mount go when its init exits, before Delete (which
/// then has less to do); `kill --all` on it still succeeds, as containerd 1.6's CRI sends one
/// before deleting an exited sandbox; Delete leaves nothing behind.
fn stopped_cleanup(rt: Runtime, v: Version) {
    use airlock_integration::leaks;
    let mut c = Case::new(rt, v, "stopclean");
    let id = c.id("stopclean");
    c.run_detached(&id, "exit 3");
    c.wait_status(&id, "STOPPED");
    if rt == Runtime::Airlock {
        let gone = proc_util::wait_until(T, Duration::from_millis(20), || {
            leaks::cgroup_dirs(&c.ns, Some(&id)).is_empty()
                && leaks::mounts_of(&c.ctd, &id).is_empty()
        });
        assert!(
            gone,
            "left after the exit: cgroups {:?}, mounts {:?}",
            leaks::cgroup_dirs(&c.ns, Some(&id)),
            leaks::mounts_of(&c.ctd, &id)
        );
        c.ctr_ok(&["tasks", "kill", "--all", "-s", "KILL", &id]);
    }
    c.ctr_ok(&["tasks", "delete", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    c.assert_no_leaks();
}

/// `kill --all` reaches every process of the container.
fn kill_all(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "killall");
    let id = c.id("killall");
    c.run_detached(
        &id,
        "trap '' TERM; sleep 300 & sleep 300 & while :; do usleep 50000; done",
    );
    assert!(proc_util::wait_until(T, Duration::from_millis(50), || {
        c.ctr_ok(&["tasks", "ps", &id]).stdout.lines().count() >= 4
    }));
    c.ctr_ok(&["tasks", "kill", "--all", "-s", "KILL", &id]);
    c.wait_status(&id, "STOPPED");
    c.ctr_ok(&["tasks", "delete", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    c.assert_no_leaks();
}

/// `ctr run` with piped stdin: `cat` gets the input, then EOF (CloseIO), and exits.
fn stdin_cat(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "stdin");
    let id = c.id("stdin");
    let mut args: Vec<&str> = vec!["run", "--rm"];
    args.extend(c.runtime_args());
    args.extend([airlock_integration::IMAGE_REF, id.as_str(), "cat"]);
    let mut cmd = c.ctd.ctr_command(Some(&c.ns));
    cmd.args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // ctr 1.6 can lose an EOF that arrives before the task runs: write once it does.
    assert!(proc_util::wait_until(T, Duration::from_millis(20), || c
        .status(&id)
        == "RUNNING"));
    stdin.write_all(b"hello from stdin\n").unwrap();
    drop(stdin);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "cat did not exit after stdin EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(status.success(), "{status:?} {stdout}");
    assert_eq!(stdout.trim(), "hello from stdin");
    c.assert_no_leaks();
}

/// A shell on a terminal: no window size until ResizePty sets it, stdin is a tty, the
/// output (echo included) arrives before the exit is reported, and the exit code propagates.
fn tty_run(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "ttyrun");
    let id = c.id("ttyrun");
    let tokio = c.rt();
    tokio.block_on(async {
        let cl = c.ctd.client().await.unwrap();
        let mut io = TaskFifos::new().unwrap();
        c.start_with_io(&cl, &id, &["sh"], &io, true).await.unwrap();
        io.write(b"stty size; tty\n").await.unwrap();
        io.expect("/dev/pts/", T).await.unwrap();
        // busybox's stty refuses a 0 x 0 window ("stty: standard input").
        assert!(!io.output().contains("40 100"), "{:?}", io.output());
        cl.resize_pty(&c.ns, &id, "", 100, 40).await.unwrap();
        io.write(b"stty size\n").await.unwrap();
        io.expect("40 100", T).await.unwrap();
        io.write(b"echo $((6*7))done; exit 3\n").await.unwrap();
        let (status, _) = cl.wait(&c.ns, &id, T).await.unwrap();
        assert_eq!(status, 3, "output: {:?}", io.output());
        // Delivered before the exit was reported: already in the FIFO.
        io.expect("42done", Duration::from_secs(2)).await.unwrap();
    });
    c.delete_stopped(&id);
    c.assert_no_leaks();
}

/// `ctr run -t` as users run it. ctr needs a terminal of its own: `script` gives it one, sized
/// 40 x 100 first; ctr sends that size with ResizePty (right after Start), and the exit code
/// comes back.
fn ctr_run_tty(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "ctrtty");
    let id = c.id("ctrtty");
    let ctr = c.ctd.ctr_command(Some(&c.ns));
    let mut words: Vec<String> = std::iter::once(ctr.get_program())
        .chain(ctr.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    words.extend(["run", "-t", "--rm"].map(String::from));
    words.extend(c.runtime_args().into_iter().map(String::from));
    words.extend(
        [
            airlock_integration::IMAGE_REF,
            &id,
            "sh",
            "-c",
            // ctr resizes right after Start, racing the first `stty size`: poll (busybox's
            // stty exits 0 without a window size, printing nothing).
            "tty; for i in $(seq 50); do s=$(stty size 2>/dev/null); [ -n \"$s\" ] && break; usleep 100000; done; echo size=$s; exit 5",
        ]
        .map(String::from),
    );
    let out = proc_util::run_in_terminal(&words, 40, 100, T).unwrap();
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stdout.contains("/dev/pts/"), "{out:?}");
    assert!(out.stdout.contains("size=40 100"), "{out:?}");
    c.assert_no_leaks();
}

/// `exec -t` into a running container, resized; a tty exec whose process spec says
/// terminal: false (the request decides); ResizePty of an unknown exec (NotFound) and of a
/// process without a terminal (OK, as runc's shim answers).
fn tty_exec(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "ttyexec");
    let id = c.id("ttyexec");
    c.run_detached(&id, "trap 'exit 0' TERM; while :; do usleep 50000; done");
    let tokio = c.rt();
    tokio.block_on(async {
        let cl = c.ctd.client().await.unwrap();
        let mut io = TaskFifos::new().unwrap();
        c.exec_with_io(&cl, &id, "t1", &["sh"], &io, true)
            .await
            .unwrap();
        cl.resize_pty(&c.ns, &id, "t1", 100, 40).await.unwrap();
        io.write(b"stty size; tty\n").await.unwrap();
        io.expect("40 100", T).await.unwrap();
        io.expect("/dev/pts/", T).await.unwrap();
        io.write(b"echo $((6*7))done; exit 4\n").await.unwrap();
        let status = cl.wait_exec(&c.ns, &id, "t1", T).await.unwrap();
        assert_eq!(status, 4, "output: {:?}", io.output());
        io.expect("42done", Duration::from_secs(2)).await.unwrap();
        cl.delete_exec(&c.ns, &id, "t1").await.unwrap();

        // containerd's Go client copies the container's process (terminal: false) and asks
        // for a tty in the request only (`kubectl exec -it`): the request decides.
        let io = TaskFifos::new().unwrap();
        let process = c.process(&["sh", "-c", "tty; echo tty-ok"], false);
        let r = async {
            cl.exec_io(&c.ns, &id, "t2", process, &io.stdio(true))
                .await?;
            cl.start_exec(&c.ns, &id, "t2").await?;
            let status = cl.wait_exec(&c.ns, &id, "t2", T).await?;
            cl.delete_exec(&c.ns, &id, "t2").await?;
            anyhow::Ok(status)
        }
        .await;
        if rt == Runtime::Airlock {
            assert_eq!(r.unwrap(), 0, "output: {:?}", io.output());
            io.expect("tty-ok", Duration::from_secs(2)).await.unwrap();
            assert!(io.output().contains("/dev/pts/"), "{:?}", io.output());
        } else {
            eprintln!("PEER {rt} {}: tty exec of a terminal: false process: {r:?}, output {:?}", v.label(), io.output());
        }

        let unknown = cl.resize_pty(&c.ns, &id, "nope", 80, 24).await;
        let no_tty = cl.resize_pty(&c.ns, &id, "", 80, 24).await;
        if rt == Runtime::Airlock {
            let e = unknown.unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
            // As runc's shim: a client may resize without checking for a terminal first.
            no_tty.expect("ResizePty of a process without a terminal is OK");
        } else {
            eprintln!("PEER {rt} {}: ResizePty of an unknown exec: {unknown:?}; of a process without a terminal: {no_tty:?}", v.label());
        }
    });
    c.remove(&id);
    c.assert_no_leaks();
}

/// Ctrl-C: a 0x03 byte on a terminal's input interrupts its foreground process group (the
/// pty is the process's controlling terminal): an exec'd `sleep` dies of SIGINT (130), and
/// the init's trap runs.
fn tty_ctrl_c(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "ttyintr");
    let id = c.id("ttyintr");
    let tokio = c.rt();
    tokio.block_on(async {
        let cl = c.ctd.client().await.unwrap();
        let mut io = TaskFifos::new().unwrap();
        let script = "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 1; done";
        c.start_with_io(&cl, &id, &["sh", "-c", script], &io, true)
            .await
            .unwrap();
        io.expect("ready", T).await.unwrap();
        let mut exec_io = TaskFifos::new().unwrap();
        c.exec_with_io(&cl, &id, "s1", &["sleep", "100"], &exec_io, true)
            .await
            .unwrap();
        exec_io.write(&[0x03]).await.unwrap();
        let status = cl.wait_exec(&c.ns, &id, "s1", T).await.unwrap();
        assert_eq!(status, 130, "exec'd sleep after ^C");
        cl.delete_exec(&c.ns, &id, "s1").await.unwrap();
        io.write(&[0x03]).await.unwrap();
        let (status, _) = cl.wait(&c.ns, &id, T).await.unwrap();
        assert_eq!(status, 7, "init after ^C; output: {:?}", io.output());
        io.expect("got-int", Duration::from_secs(2)).await.unwrap();
    });
    c.delete_stopped(&id);
    c.assert_no_leaks();
}

/// CloseIO through the gRPC API, with a terminal or without: `cat` reads what was written, a
/// pending partial line included, then end of input, and exits 0. (A terminal echoes the
/// input, so there each text shows twice: the echo, then cat's copy.)
fn cat_close_io(rt: Runtime, v: Version, terminal: bool) {
    let mut c = Case::new(rt, v, if terminal { "ttycat" } else { "closeio" });
    let id = c.id("cat");
    let copies = if terminal { 2 } else { 1 };
    let tokio = c.rt();
    tokio.block_on(async {
        let cl = c.ctd.client().await.unwrap();
        let mut io = TaskFifos::new().unwrap();
        c.start_with_io(&cl, &id, &["cat"], &io, terminal)
            .await
            .unwrap();
        io.write(b"hello\n").await.unwrap();
        io.expect_n("hello", copies, T).await.unwrap();
        io.write(b"partial").await.unwrap();
        io.expect("partial", T).await.unwrap();
        if rt != Runtime::Airlock {
            // runc's shim holds its own writer of the stdin FIFO until CloseIO, so its copy
            // ends only once the client's writer is gone too (ctr closes it); Airlock ends
            // the input on CloseIO alone.
            io.close_stdin();
        }
        cl.close_stdin(&c.ns, &id, "").await.unwrap();
        let r = cl.wait(&c.ns, &id, T).await;
        let out = io.output();
        if rt == Runtime::Airlock || !terminal {
            let (status, _) = r.unwrap();
            assert_eq!(status, 0, "cat after CloseIO; output: {out:?}");
            io.expect_n("partial", copies, Duration::from_secs(2))
                .await
                .unwrap();
        } else {
            // runc's shim closes the pty master: cat fails reading (EIO) and exits 1.
            eprintln!(
                "PEER {rt} {}: cat on a terminal after CloseIO: {r:?}; output {out:?}",
                v.label()
            );
        }
    });
    if c.status(&id) != "STOPPED" {
        let _ = c.ctr(&["tasks", "kill", "-s", "KILL", &id]);
    }
    c.delete_stopped(&id);
    c.assert_no_leaks();
}

/// Prints the latency of `ctr task exec` and other calls (p50/p95 of 20); run with
/// `-- --ignored --nocapture measure_`.
fn measure(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "measure");
    let id = c.id("measure");
    c.run_detached(&id, "trap 'exit 0' TERM; while :; do usleep 50000; done");
    let time = |f: &mut dyn FnMut(usize)| {
        let mut d: Vec<Duration> = (0..20)
            .map(|i| {
                let t = Instant::now();
                f(i);
                t.elapsed()
            })
            .collect();
        d.sort();
        (d[10], d[18])
    };
    let exec = time(&mut |i| {
        let out = c.exec(&id, &format!("m{i}"), &["true"]);
        assert!(out.success(), "{out:?}");
    });
    let pause = time(&mut |_| {
        c.ctr_ok(&["tasks", "pause", &id]);
        c.ctr_ok(&["tasks", "resume", &id]);
    });
    let metrics = time(&mut |_| {
        c.ctr_ok(&["tasks", "metrics", &id]);
    });
    let ps = time(&mut |_| {
        c.ctr_ok(&["tasks", "ps", &id]);
    });
    eprintln!(
        "MEASURE {rt} {}: ctr exec true {:?}/{:?}; pause+resume {:?}/{:?}; metrics {:?}/{:?}; ps {:?}/{:?} (p50/p95)",
        v.label(),
        exec.0, exec.1, pause.0, pause.1, metrics.0, metrics.1, ps.0, ps.1
    );
    c.remove(&id);
}

/// Prints what a terminal costs: create + start until the first output, and until the exit,
/// of `sh -c 'echo ready'` with and without a terminal (gRPC, 20 interleaved runs each, p50/p95);
/// run with `-- --ignored --nocapture measure_tty`.
fn measure_tty(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "measuretty");
    let tokio = c.rt();
    let mut samples: [Vec<(Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
    for i in 0..40 {
        let terminal = i % 2 == 1;
        let id = c.id(if terminal { "mtty" } else { "mplain" });
        let sample = tokio.block_on(async {
            let cl = c.ctd.client().await.unwrap();
            let io = TaskFifos::new().unwrap();
            let t0 = Instant::now();
            c.start_with_io(&cl, &id, &["sh", "-c", "echo ready"], &io, terminal)
                .await
                .unwrap();
            io.expect("ready", T).await.unwrap();
            let first = t0.elapsed();
            cl.wait(&c.ns, &id, T).await.unwrap();
            let exit = t0.elapsed();
            cl.delete_task(&c.ns, &id).await.unwrap();
            cl.delete_container(&c.ns, &id).await.unwrap();
            (first, exit)
        });
        samples[terminal as usize].push(sample);
    }
    let stats = |runs: &[(Duration, Duration)], pick: fn(&(Duration, Duration)) -> Duration| {
        let mut d: Vec<Duration> = runs.iter().map(pick).collect();
        d.sort();
        (d[d.len() / 2], d[d.len() * 95 / 100])
    };
    for (name, runs) in [("plain", &samples[0]), ("tty", &samples[1])] {
        let first = stats(runs, |s| s.0);
        let exit = stats(runs, |s| s.1);
        eprintln!(
            "MEASURE {rt} {} {name}: create+start -> first output {:?}/{:?}, -> exit {:?}/{:?} (p50/p95 of {})",
            v.label(),
            first.0,
            first.1,
            exit.0,
            exit.1,
            runs.len()
        );
    }
}

macro_rules! cases {
    ($rt:expr, $v:expr) => {
        use super::*;
        const RT: Runtime = $rt;
        const V: Version = $v;
        #[test]
        fn pause_resume() {
            super::pause_resume(RT, V)
        }
        #[test]
        fn oom_before_exit() {
            super::oom_before_exit(RT, V)
        }
        #[test]
        fn stats() {
            super::stats(RT, V)
        }
        #[test]
        fn update() {
            super::update(RT, V)
        }
        #[test]
        fn io_limits() {
            super::io_limits(RT, V)
        }
        #[test]
        fn exec() {
            super::exec(RT, V)
        }
        #[test]
        fn exec_concurrent() {
            super::exec_concurrent(RT, V)
        }
        #[test]
        fn exec_missing_binary() {
            super::exec_missing_binary(RT, V)
        }
        #[test]
        fn exec_stopped() {
            super::exec_stopped(RT, V)
        }
        #[test]
        fn pids_and_exec_lifecycle() {
            super::pids_and_exec_lifecycle(RT, V)
        }
        #[test]
        fn kill_all() {
            super::kill_all(RT, V)
        }
        #[test]
        fn stopped_cleanup() {
            super::stopped_cleanup(RT, V)
        }
        #[test]
        #[ignore]
        fn measure_latency() {
            super::measure(RT, V)
        }
        #[test]
        #[ignore]
        fn measure_tty_latency() {
            super::measure_tty(RT, V)
        }
        #[test]
        fn stdin_cat() {
            super::stdin_cat(RT, V)
        }
        #[test]
        fn close_io_cat() {
            super::cat_close_io(RT, V, false)
        }
        #[test]
        fn tty_run() {
            super::tty_run(RT, V)
        }
        #[test]
        fn ctr_run_tty() {
            super::ctr_run_tty(RT, V)
        }
        #[test]
        fn tty_exec() {
            super::tty_exec(RT, V)
        }
        #[test]
        fn tty_ctrl_c() {
            super::tty_ctrl_c(RT, V)
        }
        #[test]
        fn tty_close_io_cat() {
            super::cat_close_io(RT, V, true)
        }
    };
}

mod runc_v1_6 {
    cases!(Runtime::Runc, Version::V1_6);
}
mod runc_v2_1 {
    cases!(Runtime::Runc, Version::V2_1);
}
mod airlock_v1_6 {
    cases!(Runtime::Airlock, Version::V1_6);
}
mod airlock_v2_1 {
    cases!(Runtime::Airlock, Version::V2_1);
}

/// Requests a hostile client makes of Airlock through containerd's API
/// (`airlock_integration::hostile`).
mod hostile {
    use super::*;
    use airlock_integration::hostile;

    #[test]
    fn cgroup_hijack_v1_6() {
        hostile::cgroup_hijack(Version::V1_6)
    }
    #[test]
    fn cgroup_hijack_v2_1() {
        hostile::cgroup_hijack(Version::V2_1)
    }
    #[test]
    fn shim_cgroup_v1_6() {
        hostile::shim_cgroup(Version::V1_6)
    }
    #[test]
    fn shim_cgroup_v2_1() {
        hostile::shim_cgroup(Version::V2_1)
    }
    #[test]
    fn pod_mappings_v1_6() {
        hostile::pod_mappings(Version::V1_6)
    }
    #[test]
    fn pod_mappings_v2_1() {
        hostile::pod_mappings(Version::V2_1)
    }
    #[test]
    fn exec_setup_held_v1_6() {
        hostile::exec_setup_held(Version::V1_6)
    }
    #[test]
    fn exec_setup_held_v2_1() {
        hostile::exec_setup_held(Version::V2_1)
    }
    #[test]
    fn shim_killed_during_exec_v1_6() {
        hostile::shim_killed_during_exec(Version::V1_6)
    }
    #[test]
    fn shim_killed_during_exec_v2_1() {
        hostile::shim_killed_during_exec(Version::V2_1)
    }
    #[test]
    fn agent_strict_defaults_v1_6() {
        hostile::agent_strict_defaults(Version::V1_6)
    }
    #[test]
    fn agent_strict_defaults_v2_1() {
        hostile::agent_strict_defaults(Version::V2_1)
    }
    #[test]
    fn shim_killed_during_create_and_start_v1_6() {
        hostile::shim_killed_during_create_and_start(Version::V1_6)
    }
    #[test]
    fn shim_killed_during_create_and_start_v2_1() {
        hostile::shim_killed_during_create_and_start(Version::V2_1)
    }
    #[test]
    fn containerd_restart_v1_6() {
        hostile::containerd_restart(Version::V1_6)
    }
    #[test]
    fn containerd_restart_v2_1() {
        hostile::containerd_restart(Version::V2_1)
    }
}
