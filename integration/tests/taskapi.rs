//! The Task API beyond create/start/wait/delete, through ctr and containerd's events:
//! pause/resume, stats, update, pids, exec, stdin/CloseIO. Every case observes the effect
//! (a counter that stops, figures that are non-zero, cgroup files that change, output and exit
//! codes of execs), for airlock and runc (the reference) on containerd 1.6 and 2.1.
//!
//! Pause/resume (and kill of a paused task), stats, update and block I/O limits are scenarios of
//! `airlock_integration::taskapi`, which the cgroup v2 node (`tests/cgroupv2.rs`) runs too.
//!
//! Select: `cargo test -p airlock-integration --test taskapi -- airlock_`.

use airlock_integration::containerd::Version;
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
    assert!(
        oom.is_some() && oom < exit,
        "TaskOOM must come before TaskExit: {t:?}"
    );
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
            "echo out; echo err >&2; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /proc/1/cmdline | tr '\\0' ' '; echo; for n in pid mnt net uts ipc; do echo ns-$n=$(readlink /proc/self/ns/$n); done; cat /proc/self/cgroup; exit 5",
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
    // Same namespaces and cgroup as the init.
    for n in ["pid", "mnt", "net", "uts", "ipc"] {
        let host = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
        let want = format!("ns-{n}={}", host.display());
        assert!(out.stdout.contains(&want), "{want} not in {out:?}");
    }
    let init_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in init_cg
        .lines()
        .filter(|l| l.contains("memory") || l.contains("pids"))
    {
        assert!(
            out.stdout.contains(l),
            "exec not in init's cgroup {l}: {out:?}"
        );
    }
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
        #[ignore]
        fn measure_latency() {
            super::measure(RT, V)
        }
        #[test]
        fn stdin_cat() {
            super::stdin_cat(RT, V)
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
