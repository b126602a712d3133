//! What a careless or hostile client asks of a runtime through containerd's API, beyond the
//! escape battery's attempts from inside a container (`tests/escape.rs`).

use crate::containerd::{Containerd, Version};
use crate::proc_util;
use crate::taskapi::{cgroup_dir, Case, IDLE, T};
use crate::Runtime;
use std::process::{Command, Stdio};

/// A container whose `linux.cgroupsPath` names another container's cgroup, or a hierarchy's
/// root, is refused at create with an error that names the field: its delete (or the failed
/// create's cleanup) would otherwise SIGKILL every process in that cgroup, the victim's or the
/// node's. The victim and a canary process in the test's own cgroup survive both attempts.
pub fn cgroup_hijack(v: Version) {
    let mut c = Case::new(Runtime::Airlock, v, "hijack");
    let victim = c.id("victim");
    let pid = c.run_detached(&victim, IDLE);
    // The victim's cgroup path as containerd named it (`/<namespace>/<id>`), read from the
    // pids hierarchy (or the unified one) of its init.
    let dir = cgroup_dir(pid, "pids");
    let root = if dir.starts_with("/sys/fs/cgroup/pids") {
        "/sys/fs/cgroup/pids"
    } else {
        "/sys/fs/cgroup"
    };
    let path = format!("/{}", dir.strip_prefix(root).unwrap().display());
    let mut canary = Command::new("sleep")
        .arg("600")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn canary");
    let canary_pid = canary.id() as i32;
    for (label, target) in [("into-victim", path.as_str()), ("into-root", "/")] {
        let attacker = c.id(label);
        let mut args = vec!["run", "-d", "--cgroup", target];
        args.extend(c.runtime_args());
        args.extend([crate::IMAGE_REF, &attacker, "true"]);
        let out = c.ctr(&args);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !out.success(),
            "a create into {target} was accepted: {out:?}"
        );
        assert!(
            text.contains("linux.cgroupsPath") && text.contains("cannot be the container's own"),
            "unclear error for {target}: {text}"
        );
        let _ = c.ctr(&["containers", "rm", &attacker]);
        assert!(
            proc_util::alive(pid) && c.status(&victim) == "RUNNING",
            "the victim died after a create into {target}"
        );
        assert!(
            proc_util::alive(canary_pid),
            "a process outside any container was signalled after a create into {target}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&dir).map(|_| ()).ok(),
        Some(()),
        "victim's cgroup gone"
    );
    let _ = canary.kill();
    let _ = canary.wait();
    c.remove(&victim);
    c.assert_no_leaks();
}

/// What agent-strict gives a container started without CRI (`ctr run`), checked from inside:
/// `lo` is up and a server binds port 80 with no capability, then answers on 127.0.0.1; no
/// writable mount executes a file written to it; the cgroup namespace is the container's own;
/// `/proc/cmdline` is masked; devpts hands out a bounded number of ptys.
pub fn agent_strict_defaults(v: Version) {
    let mut c = Case::new(Runtime::Airlock, v, "strict");
    let id = c.id("strict");
    let script = r#"
        echo "lo_flags=$(cat /sys/class/net/lo/flags)"
        mkdir -p /tmp/www && echo served-on-80 > /tmp/www/index.html
        httpd -f -p 80 -h /tmp/www 2>/tmp/httpd.err &
        for i in $(seq 50); do
            wget -O /tmp/got http://127.0.0.1:80/index.html 2>/tmp/wget.err && break
            usleep 100000
        done
        kill -0 $! 2>/dev/null && echo "bind80=ok" || echo "bind80=refused $(cat /tmp/httpd.err)"
        echo "fetch=$(cat /tmp/got) $(tail -n 1 /tmp/wget.err)"
        for d in /run /dev /dev/shm /tmp; do
            if cp /bin/busybox $d/bb 2>/dev/null; then
                $d/bb true 2>/dev/null && echo "exec$d=ran" || echo "exec$d=refused"
            else
                echo "exec$d=unwritable"
            fi
        done
        echo "cgroup=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\n' ' ')"
        echo "cmdline_bytes=$(wc -c < /proc/cmdline)"
        echo "devpts=$(grep ' /dev/pts ' /proc/mounts | grep -o 'max=[0-9]*')"
    "#;
    let mut args = vec!["run", "--rm"];
    args.extend(c.runtime_args());
    args.extend([crate::IMAGE_REF, &id, "sh", "-c", script]);
    let out = c.ctr_ok(&args);
    let get = |k: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {:?}", out.stdout))
            .trim()
            .to_owned()
    };
    eprintln!("agent-strict defaults ({}):\n{}", v.label(), out.stdout);
    let flags = u32::from_str_radix(get("lo_flags").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: flags {flags:#x}");
    assert_eq!(get("bind80"), "ok", "port 80 without a capability");
    assert!(get("fetch").starts_with("served-on-80"), "127.0.0.1:80");
    for d in ["/run", "/dev", "/dev/shm", "/tmp"] {
        let r = get(&format!("exec{d}"));
        assert!(r == "refused" || r == "unwritable", "{d}: {r}");
    }
    assert_eq!(
        get("cgroup"),
        "/",
        "a private cgroup namespace shows its root only"
    );
    assert_eq!(get("cmdline_bytes"), "0", "/proc/cmdline is masked");
    assert_eq!(get("devpts"), "max=128");
    c.assert_no_leaks();
}

/// containerd's Go client names a cgroup for the shim with `containerd.WithShimCgroup`, which,
/// for a runtime whose name does not start with `io.containerd.runc`, sends (containerd 1.x)
/// `containerd.linux.runc.CreateOptions` (the shim cgroup is field 9) as the task's options;
/// containerd writes them to `shim start`'s stdin. The pod's shim joins that cgroup.
pub fn shim_cgroup(v: Version) {
    use crate::client::TaskStdio;
    let mut c = Case::new(Runtime::Airlock, v, "shimcg");
    let id = c.id("shimcg");
    let rel = format!("airlock-test-shim-{id}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dirs: Vec<std::path::PathBuf> = airlock_state::cgroups::parse_mountinfo(&mountinfo)
        .into_iter()
        .filter(|m| !m.unified)
        .map(|m| m.mount_point.join(&rel))
        .collect();
    assert!(!dirs.is_empty(), "no cgroup v1 hierarchy: {mountinfo}");
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
        // A v1 cpuset cgroup takes no task until it has CPUs and memory nodes.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(d.parent().unwrap().join(f)) {
                std::fs::write(d.join(f), v.trim()).unwrap();
            }
        }
    }
    // containerd 1.x's Go client sends containerd.linux.runc.CreateOptions { shim_cgroup (9) };
    // containerd 2.x does not know that type, and its client sends containerd.runc.v1.Options
    // { shim_cgroup (3) }. Encoded by hand.
    let path = format!("/{rel}");
    let (type_url, field) = match v {
        Version::V1_6 => ("containerd.linux.runc.CreateOptions", 9u8),
        Version::V2_1 => ("containerd.runc.v1.Options", 3u8),
    };
    let mut value = vec![(field << 3) | 2, path.len() as u8];
    value.extend_from_slice(path.as_bytes());
    let options = prost_types::Any {
        type_url: type_url.into(),
        value,
    };
    let spec = c.ctd.spec(&c.ns, &id, &["sh", "-c", IDLE]).unwrap();
    let pid = c.rt().block_on(async {
        let cl = c.ctd.client().await.unwrap();
        cl.create_container(&c.ns, &id, Runtime::Airlock, spec)
            .await
            .unwrap();
        let mounts = cl.prepare_rootfs(&c.ns, &id).await.unwrap();
        let pid = cl
            .create_task_with(&c.ns, &id, mounts, &TaskStdio::default(), Some(options))
            .await
            .unwrap_or_else(|e| panic!("create with a shim cgroup: {e:#}"));
        cl.start(&c.ns, &id).await.unwrap();
        pid as i32
    });
    let shim = proc_util::ppid(pid).expect("the init's parent, the shim");
    let cgroups = proc_util::cgroup(shim);
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains("pids") && l.ends_with(&path)),
        "shim {shim} is not in {path}: {cgroups}"
    );
    c.remove(&id);
    c.assert_no_leaks();
    proc_util::wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || !proc_util::alive(shim),
    );
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// A container's own uid/gid mappings (`ctr run --uidmap`): one that covers the node's users
/// (`0:1:65536`: container root is host uid 1) is refused, and so is a second pod that maps
/// host ids a running pod holds; once that pod is gone, the second runs.
pub fn pod_mappings(v: Version) {
    let mut c = Case::new(Runtime::Airlock, v, "uidmap");
    let run = |c: &Case, id: &str, map: &str, detach: bool| {
        let mut args = vec!["run"];
        args.push(if detach { "-d" } else { "--rm" });
        args.extend(c.runtime_args());
        args.extend(["--uidmap", map, "--gidmap", map]);
        args.extend([crate::IMAGE_REF, id, "sh", "-c", IDLE]);
        c.ctr(&args)
    };
    let low = c.id("low");
    let out = run(&c, &low, "0:1:65536", false);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !out.success() && text.contains("covers host ids below 65536"),
        "a mapping onto the node's users: {out:?}"
    );
    let _ = c.ctr(&["containers", "rm", &low]);
    // Outside Airlock's pool (2^30..2^31), as a kubelet's own range; one per version, as the
    // two versions' tests run at once.
    let slot = match v {
        Version::V1_6 => 11,
        Version::V2_1 => 12,
    };
    let map = format!("0:{}:65536", (1u64 << 31) + slot * 65536);
    let (a, b) = (c.id("a"), c.id("b"));
    let out = run(&c, &a, &map, true);
    assert!(out.success(), "first pod with {map}: {out:?}");
    let out = run(&c, &b, &map, true);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !out.success() && text.contains("two pods may never share host ids"),
        "a second pod on the same host ids: {out:?}"
    );
    let _ = c.ctr(&["containers", "rm", &b]);
    c.remove(&a);
    let out = run(&c, &b, &map, true);
    assert!(out.success(), "the host ids are free again: {out:?}");
    c.remove(&b);
    c.assert_no_leaks();
}

/// The script of a container that stops the next process of its pid namespace (the next
/// exec's setup process) and records its pid in /tmp/stopped; /tmp/armed once it waits. Only
/// builtins once armed (`read`, arithmetic, `kill`, `[`, `case`, `echo >`): no fork of the
/// shell takes the pid it waits for. On a loaded node the exec's process can get past its
/// setup before the loop's next turn: a stopped process that already runs the exec's command
/// (`sh`) is let go, and so is a pid that came and went; the loop then arms for the next.
const HOLD_NEXT_EXEC: &str = "trap 'exit 0' TERM; \
    while :; do \
      read last < /proc/sys/kernel/ns_last_pid; n=$((last + 1)); echo $n > /tmp/armed; \
      while :; do \
        if kill -STOP $n 2>/dev/null; then \
          read comm < /proc/$n/comm; \
          case \"$comm\" in sh) kill -CONT $n; break;; esac; \
          echo $n > /tmp/stopped; while :; do usleep 50000; done; \
        fi; \
        read now < /proc/sys/kernel/ns_last_pid; \
        if [ $now -ge $n ] && ! kill -0 $n 2>/dev/null; then break; fi; \
      done; \
    done";

/// Runs [`HOLD_NEXT_EXEC`] as container `id`; its init's pid once it is armed.
fn run_holding(c: &Case, id: &str) -> i32 {
    let pid = c.run_detached(id, HOLD_NEXT_EXEC);
    let armed = std::path::PathBuf::from(format!("/proc/{pid}/root/tmp/armed"));
    assert!(
        proc_util::wait_until(T, std::time::Duration::from_millis(20), || armed.exists()),
        "the container never armed"
    );
    pid
}

/// Starts `ctr tasks exec ... sh -c 'echo ran'` in container `id` (init `pid`, running
/// [`HOLD_NEXT_EXEC`]) until the container holds the exec's setup; the exec in flight and when
/// it started. An exec that ran to its end before the container caught it is tried again, up
/// to five times.
fn exec_until_held(c: &Case, id: &str, pid: i32) -> (proc_util::Running, std::time::Instant) {
    let stopped = std::path::PathBuf::from(format!("/proc/{pid}/root/tmp/stopped"));
    for attempt in 0..5 {
        let exec_id = format!("held{attempt}");
        let t0 = std::time::Instant::now();
        let mut exec = c
            .ctd
            .ctr_spawn(
                Some(&c.ns),
                &[
                    "tasks",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    id,
                    "sh",
                    "-c",
                    "echo ran",
                ],
            )
            .unwrap();
        proc_util::wait_until(T, std::time::Duration::from_millis(10), || {
            stopped.exists() || exec.exited()
        });
        if stopped.exists() {
            return (exec, t0);
        }
        let out = exec.wait(T).unwrap();
        assert!(
            out.success() && out.stdout.contains("ran"),
            "an exec the container did not hold failed: {out:?}"
        );
        eprintln!("exec {exec_id} ran before the container caught its setup; again");
    }
    panic!("the container caught none of five execs' setup processes");
}

/// The shim is killed (SIGKILL) while an exec's setup is held inside the container: the
/// client's exec fails, containerd's `shim delete` cleans up, and nothing of the container, its
/// held setup process included, is left.
pub fn shim_killed_during_exec(v: Version) {
    let mut c = Case::new(Runtime::Airlock, v, "killexec");
    let id = c.id("killexec");
    let pid = run_holding(&c, &id);
    let (exec, _) = exec_until_held(&c, &id, pid);
    let shim = c.shim_pid(&id);
    proc_util::signal(shim, libc::SIGKILL);
    let out = exec.wait(T).unwrap();
    assert!(
        !out.success(),
        "the exec through a killed shim succeeded: {out:?}"
    );
    assert!(
        proc_util::wait_until(T, std::time::Duration::from_millis(50), || {
            !proc_util::alive(pid)
        }),
        "the container's init outlived its shim's cleanup"
    );
    if c.status(&id) == "STOPPED" {
        c.ctr_ok(&["tasks", "delete", &id]);
    }
    c.ctr_ok(&["containers", "rm", &id]);
    c.assert_no_leaks();
}

/// An exec whose setup a process inside the container stops (`kill -STOP` on the next pid of
/// the container's pid namespace, which the exec's setup process takes) fails within the
/// shim's limit with an error that says so, instead of waiting for ever; the runtime and the
/// setup processes are gone, and the next exec runs.
pub fn exec_setup_held(v: Version) {
    let mut c = Case::new(Runtime::Airlock, v, "held");
    let id = c.id("held");
    let pid = run_holding(&c, &id);
    let (exec, t0) = exec_until_held(&c, &id, pid);
    let out = exec.wait(T).unwrap();
    let took = t0.elapsed();
    let stopped = std::fs::read_to_string(format!("/proc/{pid}/root/tmp/stopped"));
    eprintln!(
        "held exec ({}): {out:?} after {took:?}; stopped {stopped:?}",
        v.label()
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !out.success() && text.contains("did not finish within") && !text.contains("ran"),
        "{out:?}"
    );
    assert!(took < T, "the exec waited {took:?}");
    // Nothing of the held exec is left: no setup process, stopped or not, in the container's
    // cgroup (the init and its loop's `usleep` are the container's own).
    let procs = std::fs::read_to_string(cgroup_dir(pid, "pids").join("cgroup.procs")).unwrap();
    for p in procs.split_whitespace() {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            !stat.contains("(youki:") && !stat.contains(") T "),
            "left of the held exec: {stat}"
        );
    }
    let out = c.exec(&id, "after", &["sh", "-c", "echo ran"]);
    assert!(out.success() && out.stdout.contains("ran"), "{out:?}");
    c.remove(&id);
    c.assert_no_leaks();
}

/// containerd stopped (SIGTERM) and started again on the same state while 20 Airlock tasks
/// run, as a node's `systemctl restart containerd` does: every task keeps running under its
/// own shim, the new containerd lists them all as running with their pids, and through it an
/// exec runs, a kill's exit reaches a new subscriber as an event, and every task is deleted
/// with nothing left.
pub fn containerd_restart(v: Version) {
    const TASKS: usize = 20;
    let ctd = Containerd::builder()
        .version(v)
        .start()
        .unwrap_or_else(|e| panic!("start containerd {}: {e:#}", v.label()));
    let ns = ctd.new_namespace("airlock-restart").unwrap();
    let mut c = Case {
        ctd: std::sync::Arc::new(ctd),
        ns,
        rt: Runtime::Airlock,
        ids: Vec::new(),
    };
    let ids: Vec<String> = (0..TASKS).map(|i| c.id(&format!("r{i}"))).collect();
    let before: Vec<(i32, i32)> = ids
        .iter()
        .map(|id| (c.run_detached(id, IDLE), c.shim_pid(id)))
        .collect();
    let t0 = std::time::Instant::now();
    std::sync::Arc::get_mut(&mut c.ctd)
        .expect("this test alone holds its containerd")
        .restart()
        .unwrap_or_else(|e| panic!("restart containerd {}: {e:#}", v.label()));
    let took = t0.elapsed();
    for (id, (pid, shim)) in ids.iter().zip(&before) {
        assert!(proc_util::alive(*shim), "{id}'s shim died with containerd");
        assert_eq!(
            c.task_line(id),
            Some((*pid, "RUNNING".to_owned())),
            "{id} after the restart"
        );
    }
    let t_listed = t0.elapsed();
    let out = c.exec(&ids[0], "after", &["sh", "-c", "echo exec-after-restart"]);
    assert!(
        out.success() && out.stdout.contains("exec-after-restart"),
        "exec through the new containerd: {out:?}"
    );
    let tokio = c.rt();
    let mut ev = c.subscribe(&tokio);
    c.ctr_ok(&["tasks", "kill", "-s", "KILL", &ids[1]]);
    tokio
        .block_on(ev.collect_until(T, |evs| {
            evs.iter().any(|e| {
                matches!(&e.event, crate::client::TaskEvent::Exit { container_id, .. }
                    if *container_id == ids[1])
            })
        }))
        .unwrap_or_else(|e| panic!("no exit event of {} after the restart: {e:#}", ids[1]));
    eprintln!(
        "containerd {} restarted with {TASKS} Airlock tasks running: ready in {took:?}, \
         all listed RUNNING after {t_listed:?}",
        v.label()
    );
    for id in &ids {
        c.remove(id);
    }
    c.assert_no_leaks();
}

/// Where a SIGKILL of the shim landed: the step in flight, and the shim's descendants then.
struct Landing {
    delay: std::time::Duration,
    seen: Vec<String>,
    /// The step answered OK before the kill.
    answered: bool,
    outcome: String,
}

/// The shim SIGKILLed at points spread through a Task.Create (from the moment the shim
/// exists), and through a Task.Start: whatever the step had done, the client gets an answer
/// (no hang), containerd's cleanup (`shim delete`) leaves no process, mount, cgroup, state
/// or uid range, and the container is removed. At least one kill must land after the
/// runtime has started the container's processes (a `youki:[` process under the shim) and
/// before Create answered, or the test did not test what it says.
pub fn shim_killed_during_create_and_start(v: Version) {
    let mut c = Case::new(Runtime::Airlock, v, "killcreate");
    let tokio = c.rt();
    let cl = tokio.block_on(c.ctd.client()).unwrap();
    let mut landings = Vec::new();
    // Create: from the shim's first moment on, 1 ms further each time, until two kills land
    // after Create has answered (however slow the node). Start: a few points of its far
    // shorter step.
    for (step, delays_us) in [
        ("create", (0..300).map(|i| i * 1000).collect::<Vec<u64>>()),
        ("start", vec![0, 100, 300, 1000, 3000]),
    ] {
        let mut answered = 0;
        for d in delays_us {
            if answered == 2 {
                break;
            }
            let delay = std::time::Duration::from_micros(d);
            let id = c.id(step);
            let spec = c.spec(&id, &["sh", "-c", IDLE], false);
            let landing = tokio.block_on(async {
                cl.create_container(&c.ns, &id, c.rt, spec).await.unwrap();
                let mounts = cl.prepare_rootfs(&c.ns, &id).await.unwrap();
                let call = if step == "create" {
                    let (cl, ns, id) = (cl.clone(), c.ns.clone(), id.clone());
                    tokio::spawn(async move { cl.create_task(&ns, &id, mounts).await })
                } else {
                    cl.create_task(&c.ns, &id, mounts).await.unwrap();
                    let (cl, ns, id) = (cl.clone(), c.ns.clone(), id.clone());
                    tokio::spawn(async move { cl.start(&ns, &id).await })
                };
                // The shim's daemon (it serves `-socket`), not the `shim start` that spawns it.
                let daemon = |pid: i32| proc_util::cmdline(pid).iter().any(|a| a == "-socket");
                let shim = loop {
                    if let Some(s) = c
                        .ctd
                        .shims()
                        .into_iter()
                        .find(|s| s.id == id && daemon(s.pid))
                    {
                        break s.pid;
                    }
                    assert!(
                        !call.is_finished(),
                        "{step} of {id} ended with no shim seen"
                    );
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                };
                tokio::time::sleep(delay).await;
                let seen = proc_util::descendants(shim)
                    .into_iter()
                    .filter_map(|p| {
                        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                        Some(stat.split_once(" (")?.1.rsplit_once(") ")?.0.to_owned())
                    })
                    .collect();
                proc_util::signal(shim, libc::SIGKILL);
                let (answered, outcome) = match tokio::time::timeout(T, call).await {
                    Ok(Ok(Ok(pid))) => (true, format!("{step} ok (pid {pid})")),
                    Ok(Ok(Err(e))) => (false, format!("{step} failed: {e:#}")),
                    Ok(Err(e)) => panic!("{e}"),
                    Err(_) => panic!("{step} of {id} hung after its shim was killed"),
                };
                Landing {
                    delay,
                    seen,
                    answered,
                    outcome,
                }
            });
            // containerd's cleanup of a dead shim is asynchronous: the task ends stopped or gone.
            assert!(
                proc_util::wait_until(T, std::time::Duration::from_millis(50), || {
                    matches!(c.status(&id).as_str(), "STOPPED" | "")
                }),
                "{id}: task {} after its shim was killed; containerd's log:\n{}",
                c.status(&id),
                c.ctd.log_tail(30)
            );
            let _ = c.ctr(&["tasks", "delete", "--force", &id]);
            c.ctr_ok(&["containers", "rm", &id]);
            eprintln!(
                "shim killed {:?} into {step} ({}): saw {:?}; {}; socket left {}",
                landing.delay,
                v.label(),
                landing.seen,
                landing.outcome,
                c.ctd.shim_socket_path(&c.ns, &id).exists()
            );
            answered += usize::from(landing.answered);
            landings.push(landing);
        }
    }
    // A kill that containerd's cleanup misses (its failed-create path removes the bundle
    // before `shim delete` could run there) leaves the shim's socket, and may leave the
    // created init: the next shim on the node cleans up after it soon after its start.
    let next = c.id("next");
    c.run_detached(&next, IDLE);
    let left = |c: &Case| -> Vec<std::path::PathBuf> {
        c.ids
            .iter()
            .filter(|id| **id != next)
            .map(|id| c.ctd.shim_socket_path(&c.ns, id))
            .filter(|p| p.exists())
            .collect()
    };
    let before = left(&c);
    assert!(
        proc_util::wait_until(T, std::time::Duration::from_millis(100), || left(&c)
            .is_empty()),
        "dead shim sockets stay: {:?}",
        left(&c)
    );
    eprintln!(
        "{} dead shim socket(s) left by the kills; the next shim cleaned up after them",
        before.len()
    );
    c.remove(&next);
    assert!(
        landings
            .iter()
            .any(|l| !l.answered && l.seen.iter().any(|s| s.starts_with("youki:["))),
        "no kill landed between the runtime's start of the container and Create's answer"
    );
    c.assert_no_leaks();
}
