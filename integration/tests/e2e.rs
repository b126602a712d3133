//! End-to-end cases, the same for every runtime (runc, crun, airlock) and containerd version
//! (1.6, 2.1). Each case runs in its own namespace of a containerd shared by this test binary.
//!
//! Select: `cargo test -p airlock-integration --test e2e airlock_` (or `runc_`, `crun_`,
//! `_v2_1::`, `::events`).

use airlock_integration::containerd::{Containerd, Version};
use airlock_integration::leaks::{self, Leaks};
use airlock_integration::{proc_util, Runtime, IMAGE_REF};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deadline of any single ctr/gRPC call that should finish quickly.
const T: Duration = Duration::from_secs(45);
/// How long asynchronous cleanup may take before we call it a leak.
const CLEANUP: Duration = Duration::from_secs(10);

struct Case {
    ctd: Arc<Containerd>,
    ns: String,
    rt: Runtime,
    ids: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Case {
    fn new(rt: Runtime, v: Version, name: &str) -> Self {
        let c = airlock_integration::taskapi::Case::new(rt, v, name);
        Case {
            ctd: c.ctd,
            ns: c.ns,
            rt,
            ids: Vec::new(),
        }
    }

    /// A container id unique on this host (cgroup paths and argv are host-wide).
    fn id(&mut self, label: &str) -> String {
        let id = format!(
            "{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.ids.push(id.clone());
        id
    }

    fn run(&self, id: &str, args: &[&str]) -> proc_util::Output {
        self.ctd
            .ctr_run_with(&self.ns, self.rt, &[], id, args, T)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.ctd.log_grep(id)))
    }

    fn ctr(&self, args: &[&str]) -> proc_util::Output {
        self.ctd
            .ctr_timeout(Some(&self.ns), args, T)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Container processes (descendants of the shim serving `id`) whose argv[0] is `name`.
    fn container_procs_named(&self, id: &str, name: &str) -> Vec<i32> {
        self.ctd
            .shims()
            .into_iter()
            .filter(|s| s.namespace == self.ns && s.id == id)
            .flat_map(|s| proc_util::descendants(s.pid))
            .filter(|p| proc_util::cmdline(*p).first().map(String::as_str) == Some(name))
            .collect()
    }

    fn wait_for_proc(&self, id: &str, name: &str) {
        self.wait_for_proc_or(id, name, || false)
    }

    /// Waits for a `name` process in container `id`; gives up early when `gone()` says the
    /// container cannot appear any more (e.g. `ctr run` already exited).
    fn wait_for_proc_or(&self, id: &str, name: &str, mut gone: impl FnMut() -> bool) {
        let mut given_up = false;
        let ok = proc_util::wait_until(T, Duration::from_millis(20), || {
            given_up = gone();
            given_up || !self.container_procs_named(id, name).is_empty()
        });
        if given_up {
            return; // the caller reports why
        }
        assert!(
            ok,
            "no `{name}` process of {id} appeared; tasks: {:?}\n{}",
            self.ctr(&["tasks", "ls"]).stdout,
            self.ctd.log_grep(id)
        );
    }

    fn assert_no_leaks(&self) {
        let rt = self.rt;
        let ns = self.ns.clone();
        let l: Leaks =
            leaks::wait_no_leaks_except(&self.ctd, &self.ns, &self.ids, CLEANUP, move |l| {
                tolerate_peer_quirks(rt, &ns, l)
            });
        assert!(l.is_empty(), "leaks in {}: {l:#?}", self.ns);
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}

/// Known behaviour of the peer runtimes (containerd's runc.v2 shim, used for runc and crun) that
/// Airlock must not copy; tolerated for peers only, and printed so it stays visible.
///
/// - After `kill -9` of the shim, containerd runs `containerd-shim-runc-v2 delete`, which cleans
///   the container but leaves the shim's socket in /run/containerd/s (1.6 and 2.1). The test
///   removes the stale socket so the host stays clean.
fn tolerate_peer_quirks(rt: Runtime, ns: &str, l: &mut Leaks) {
    if rt == Runtime::Airlock {
        return;
    }
    for s in l.shim_sockets.drain(..) {
        eprintln!(
            "peer quirk ({rt}, {ns}): stale shim socket {} removed",
            s.display()
        );
        let _ = std::fs::remove_file(&s);
    }
}

/// containerd 2.x with the runc.v2 shim: TaskDelete is sent by the shim right before containerd
/// shuts it down, and under load it is sometimes lost (seen here with 3 parallel tests).
fn task_delete_event_may_be_lost(rt: Runtime, v: Version) -> bool {
    rt != Runtime::Airlock && v == Version::V2_1
}

fn ctr_rt_args(rt: Runtime) -> Vec<String> {
    rt.ctr_args()
}

// ---------------------------------------------------------------------------------------------
// Cases

fn exit_codes(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "exit");
    for (args, want) in [
        (&["sh", "-c", "exit 3"][..], 3),
        (&["true"][..], 0),
        (&["false"][..], 1),
        (&["sh", "-c", "exit 255"][..], 255),
    ] {
        let id = c.id("exit");
        let out = c.run(&id, args);
        assert_eq!(out.code, Some(want), "{args:?}: {out:?}");
    }
    c.assert_no_leaks();
}

/// Runs `args`; a peer (runc/crun) whose output fails `ok` gets one retry. Known peer behaviour:
/// ctr with the Go runc.v2 shim now and then loses some or all output of a short-lived container
/// (seen about once per matrix run, on 1.6 and 2.1). Airlock gets no retry.
fn run_output(
    c: &mut Case,
    label: &str,
    args: &[&str],
    ok: impl Fn(&proc_util::Output) -> bool,
) -> proc_util::Output {
    let id = c.id(label);
    let out = c.run(&id, args);
    if c.rt == Runtime::Airlock || ok(&out) {
        return out;
    }
    eprintln!("peer quirk: {} lost output ({out:?}); retrying once", c.rt);
    let id = c.id(label);
    c.run(&id, args)
}

fn stdout_stderr(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "stdio");
    let out = run_output(
        &mut c,
        "stdio",
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
        ],
        |o| o.stdout == "out1\nout2\n" && o.stderr == "err1\nerr2\n",
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "out1\nout2\n", "{out:?}");
    assert_eq!(out.stderr, "err1\nerr2\n", "{out:?}");

    // 1 MiB through stdout, nothing lost at exit.
    let out = run_output(
        &mut c,
        "bulk",
        &["sh", "-c", "dd if=/dev/zero bs=1024 count=1024 2>/dev/null"],
        |o| o.stdout.len() == 1024 * 1024,
    );
    assert!(out.success(), "{:?} {}", out.code, out.stderr);
    assert_eq!(out.stdout.len(), 1024 * 1024);

    // Environment and identity reach the process.
    let out = run_output(&mut c, "env", &["sh", "-c", "id -u; echo $PATH"], |o| {
        o.stdout.lines().count() == 2
    });
    assert!(out.success(), "{out:?}");
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("0"));
    assert!(lines.next().unwrap_or_default().contains("/bin"), "{out:?}");
    c.assert_no_leaks();
}

fn kill_signal(rt: Runtime, v: Version, sig: &str, script: &str, want: i32) {
    let mut c = Case::new(rt, v, &format!("kill-{sig}"));
    let id = c.id(&format!("kill{}", sig.to_lowercase()));
    let mut run = c
        .ctd
        .ctr_run_spawn(&c.ns, rt, &[], &id, &["sh", "-c", script])
        .unwrap();
    // The trap is installed once the loop's `sleep` runs.
    let mut exited = false;
    c.wait_for_proc_or(&id, "sleep", || {
        exited = exited || run.exited();
        exited
    });
    if exited {
        panic!(
            "ctr run ended before the container was running: {:?}",
            run.wait(T)
        );
    }
    let k = c.ctr(&["tasks", "kill", "-s", sig, &id]);
    assert!(k.success(), "ctr tasks kill: {k:?}");
    let out = run
        .wait(T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.ctd.log_grep(&id)));
    assert_eq!(out.code, Some(want), "{out:?}");
    c.assert_no_leaks();
}

fn sigterm(rt: Runtime, v: Version) {
    kill_signal(
        rt,
        v,
        "SIGTERM",
        "trap 'exit 143' TERM; while :; do sleep 0.1; done",
        143,
    );
}

fn sigkill(rt: Runtime, v: Version) {
    // TERM ignored: only SIGKILL can end it.
    kill_signal(
        rt,
        v,
        "SIGKILL",
        "trap '' TERM; while :; do sleep 0.1; done",
        137,
    );
}

fn lifecycle_50(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "loop50");
    let ids: Vec<String> = (0..50).map(|_| c.id("loop")).collect();
    let ctd = c.ctd.clone();
    let ns = c.ns.clone();
    let started = std::time::Instant::now();
    c.block_on(async {
        let client = ctd.client().await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let code = (i % 7) as u32;
            let script = format!("exit {code}");
            let spec = ctd.spec(&ns, id, &["sh", "-c", &script]).unwrap();
            let r = client
                .run(&ns, id, rt, spec, T)
                .await
                .unwrap_or_else(|e| panic!("container {i} ({id}): {e:#}\n{}", ctd.log_grep(id)));
            assert_eq!(r.exit_status, code, "container {i}");
            assert!(r.pid > 1, "container {i}: pid {}", r.pid);
        }
    });
    eprintln!(
        "{rt} {}: 50 x create/start/wait/delete in {:?}",
        v.label(),
        started.elapsed()
    );
    c.assert_no_leaks();
    // containerd runs `<shim> delete` after every shim exit and logs what it prints as
    // warnings: after a clean delete ours finds nothing and says nothing.
    if rt == Runtime::Airlock {
        for id in &ids {
            let log = ctd.log_grep(id);
            assert!(!log.contains("shim that is gone"), "{log}");
        }
    }
    // The namespace-level cgroup parents hold no processes and no children.
    for cg in leaks::cgroup_dirs(&c.ns, None) {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        assert!(procs.trim().is_empty(), "{}: {procs}", cg.display());
    }
}

fn bad_spec_json(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "badspec");
    let id = c.id("badspec");
    let ctd = c.ctd.clone();
    let ns = c.ns.clone();
    let err = c.block_on(async {
        let client = ctd.client().await.unwrap();
        let spec = ctd.spec(&ns, &id, &["true"]).unwrap();
        let truncated = spec[..spec.len() / 2].to_vec();
        let r = tokio::time::timeout(T, client.create(&ns, &id, rt, truncated)).await;
        match r {
            Err(_) => panic!("task create with malformed config.json hung for {T:?}"),
            Ok(Ok(pid)) => {
                let _ = client.kill(&ns, &id, 9, true).await;
                let _ = client.delete_task(&ns, &id).await;
                let _ = client.delete_container(&ns, &id).await;
                panic!("malformed config.json accepted (pid {pid})")
            }
            Ok(Err(e)) => format!("{e:#}"),
        }
    });
    eprintln!("{rt} {}: malformed spec error: {err}", v.label());
    let lower = err.to_lowercase();
    assert!(
        lower.contains("json") || lower.contains("config") || lower.contains("spec"),
        "error does not say what is wrong: {err}"
    );
    c.assert_no_leaks();

    // Well-formed JSON that containerd accepts but no runtime can run: no `process`. (containerd
    // itself rejects truncated JSON before any shim sees it; this one reaches the shim.)
    let id = c.id("noprocess");
    let err = c.block_on(async {
        let client = ctd.client().await.unwrap();
        let mut spec: serde_json::Value =
            serde_json::from_slice(&ctd.spec(&ns, &id, &["true"]).unwrap()).unwrap();
        spec.as_object_mut().unwrap().remove("process");
        let spec = serde_json::to_vec(&spec).unwrap();
        match tokio::time::timeout(T, client.run(&ns, &id, rt, spec, T)).await {
            Err(_) => panic!("spec without process hung for {T:?}"),
            Ok(Ok(r)) => panic!("spec without process ran: {r:?}"),
            Ok(Err(e)) => format!("{e:#}"),
        }
    });
    eprintln!("{rt} {}: spec without process: {err}", v.label());
    if rt == Runtime::Crun && !err.to_lowercase().contains("process") {
        // crun 1.8.1 answers "internal error: max number of capabilities not initialized".
        eprintln!("peer quirk (crun): unclear error for a spec without process: {err}");
    } else {
        assert!(
            err.to_lowercase().contains("process"),
            "error does not name the missing field: {err}"
        );
    }
    c.assert_no_leaks();
}

fn missing_binary(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "nobin");
    let id = c.id("nobin");
    let out = c.run(&id, &["/nope"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("/nope"),
        "error does not name the missing binary: {out:?}"
    );
    c.assert_no_leaks();

    // Same through gRPC: create or start fails, wait does not hang.
    let id = c.id("nobin-grpc");
    let ctd = c.ctd.clone();
    let ns = c.ns.clone();
    let res = c.block_on(async {
        let client = ctd.client().await.unwrap();
        let spec = ctd.spec(&ns, &id, &["/nope"]).unwrap();
        tokio::time::timeout(T, client.run(&ns, &id, rt, spec, T)).await
    });
    match res {
        Err(_) => panic!("gRPC run of /nope hung"),
        // Accepted until exec, then an exit status of 127 or similar is also a clear answer.
        Ok(Ok(r)) => assert_ne!(r.exit_status, 0, "{r:?}"),
        Ok(Err(e)) => {
            let e = format!("{e:#}");
            assert!(e.contains("/nope"), "{e}");
            // The runtime's kind of failure crosses its process boundary (airlock_contract):
            // a process.args[0] that the image lacks is the client's mistake.
            if rt == Runtime::Airlock {
                assert!(e.contains("InvalidArgument"), "{e}");
            }
        }
    }
    c.assert_no_leaks();
}

fn bad_rootfs(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "badroot");
    // A rootfs path that does not exist.
    let id = c.id("noroot");
    let missing = format!("/nonexistent-airlock-rootfs-{}", std::process::id());
    let out = c
        .ctd
        .ctr_run_with(
            &c.ns,
            rt,
            &["--rootfs", &missing],
            &id,
            &["/bin/sh", "-c", "true"],
            T,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("nonexistent-airlock-rootfs") || out.stderr.contains("no such file"),
        "error does not point at the rootfs: {out:?}"
    );
    c.assert_no_leaks();

    // A rootfs that exists but has no shell in it.
    let empty = tempfile::tempdir().unwrap();
    let id = c.id("emptyroot");
    let root = empty.path().to_string_lossy().into_owned();
    let out = c
        .ctd
        .ctr_run_with(&c.ns, rt, &["--rootfs", &root], &id, &["/bin/sh"], T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("/bin/sh"), "{out:?}");
    c.assert_no_leaks();
}

/// Mount targets the image makes into symlinks resolve inside the rootfs, and directories the
/// runtime creates for them land there too, never on the host. The runtime skips pathrs'
/// `mkdir_all` for a target that exists, and creates a missing last component with `mkdirat` in
/// its parent resolved inside the rootfs (third_party/README.md, "mount targets that exist");
/// both paths are taken here: `/run` (a tmpfs on an existing directory) and `/data/y` (a bind,
/// created) through symlinks that would reach a host directory if they were followed from the
/// host. The tmpfs shows at the link's target in the container's mountinfo.
#[test]
fn image_symlinks_do_not_move_mount_targets_out_of_the_rootfs() {
    let mut c = Case::new(Runtime::Airlock, Version::V1_6, "symlinks");
    // Outside /tmp: the sandbox mounts a tmpfs at /tmp, which would hide the rootfs' copy.
    let host = tempfile::Builder::new()
        .prefix("airlock-symlink-target-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Writable for the container's root (a mapped, unprivileged host uid): only the confinement
    // of the path keeps the runtime out of it.
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let host_path = host.path().to_str().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    airlock_integration::image::unpack_rootfs(root.path()).unwrap();
    // The same path inside the rootfs, where the links resolve when they stay inside it.
    let inside = root.path().join(host_path.trim_start_matches('/'));
    std::fs::create_dir_all(inside.join("run")).unwrap();
    let _ = std::fs::remove_dir_all(root.path().join("run"));
    let _ = std::fs::remove_file(root.path().join("run"));
    // Absolute: the host's directory when followed from the host.
    std::os::unix::fs::symlink(format!("{host_path}/run"), root.path().join("run")).unwrap();
    // Relative, with more `..` than the rootfs is deep.
    std::os::unix::fs::symlink(
        format!("../../../../../../../../../..{host_path}"),
        root.path().join("data"),
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("marker"), "bound\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data/y,options=rbind:ro",
        src.path().display()
    );
    let id = c.id("links");
    let rootfs = root.path().to_string_lossy().into_owned();
    let out = c
        .ctd
        .ctr_run_with(
            &c.ns,
            Runtime::Airlock,
            // agent-default: agent-strict binds no host path at all.
            &[
                "--annotation",
                "airlock.dev/policy=agent-default",
                "--mount",
                &mount,
                "--rootfs",
                &rootfs,
            ],
            &id,
            &[
                "/bin/sh",
                "-c",
                &format!("cat /data/y/marker && grep -c ' {host_path}/run ' /proc/self/mountinfo"),
            ],
            T,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "bound\n1\n", "{out:?}");
    let on_host: Vec<_> = std::fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        on_host.is_empty(),
        "the runtime created {on_host:?} in the host's {host_path}"
    );
    assert!(
        inside.join("y").is_dir(),
        "/data/y was not created in the rootfs"
    );
    c.assert_no_leaks();
}

fn shim_kill9(rt: Runtime, v: Version) {
    let mut c = Case::new(rt, v, "shimkill");
    let id = c.id("shimkill");
    let ctd = c.ctd.clone();
    let ns = c.ns.clone();
    let rt_args = ctr_rt_args(rt);
    let mut args: Vec<&str> = vec!["run", "-d"];
    args.extend(rt_args.iter().map(String::as_str));
    args.extend([
        IMAGE_REF,
        &id,
        "sh",
        "-c",
        "trap 'exit 143' TERM; while :; do sleep 0.1; done",
    ]);
    let out = c.ctr(&args);
    assert!(out.success(), "{out:?}");
    c.wait_for_proc(&id, "sleep");
    let shim = ctd
        .shims()
        .into_iter()
        .find(|s| s.namespace == ns && s.id == id)
        .expect("shim of the container");
    let container_pids = proc_util::descendants(shim.pid);
    assert!(!container_pids.is_empty());

    let res = c.block_on(async {
        let client = ctd.client().await.unwrap();
        let mut ev = client
            .subscribe(vec![
                format!("namespace=={ns}"),
                "topic==\"/tasks/exit\"".into(),
            ])
            .await
            .unwrap();
        proc_util::signal(shim.pid, libc::SIGKILL);
        ev.collect_until(T, |v| {
            v.iter()
                .any(|e| e.event.container_id() == Some(id.as_str()))
        })
        .await
    });
    let events = res.unwrap_or_else(|e| panic!("no TaskExit after shim kill -9: {e:#}"));
    let exit = events
        .iter()
        .find(|e| e.event.container_id() == Some(id.as_str()))
        .unwrap();
    if let airlock_integration::TaskEvent::Exit { exit_status, .. } = &exit.event {
        assert_eq!(*exit_status, 137, "{exit:?}");
    }
    // containerd ran `<shim> delete`: the container's processes are gone.
    let ok = proc_util::wait_until(CLEANUP, Duration::from_millis(50), || {
        container_pids.iter().all(|p| !proc_util::alive(*p))
    });
    assert!(
        ok,
        "container processes survived shim delete: {:?}",
        container_pids
            .iter()
            .filter(|p| proc_util::alive(**p))
            .map(|p| proc_util::cmdline(*p))
            .collect::<Vec<_>>()
    );
    // The task is stopped or gone; delete whatever containerd still lists.
    let tasks = c.ctr(&["tasks", "ls"]);
    if let Some(line) = tasks.stdout.lines().find(|l| l.contains(&id)) {
        assert!(line.contains("STOPPED"), "task after shim death: {line}");
        let d = c.ctr(&["tasks", "delete", &id]);
        assert!(d.success(), "{d:?}");
    }
    let rm = c.ctr(&["containers", "rm", &id]);
    assert!(rm.success(), "{rm:?}");
    c.assert_no_leaks();
    if rt == Runtime::Airlock {
        // What `<shim> delete` found after the crash reaches containerd's log.
        let log = ctd.log_grep(&id);
        assert!(
            log.contains("cleaned up after a shim that is gone: runtime state and cgroup"),
            "{log}"
        );
    }
}

fn events(rt: Runtime, v: Version) {
    use airlock_integration::TaskEvent as E;
    let mut c = Case::new(rt, v, "events");
    let id = c.id("events");
    let ctd = c.ctd.clone();
    let ns = c.ns.clone();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (run, evs) = c.block_on(async {
        let client = ctd.client().await.unwrap();
        let mut ev = client
            .subscribe(vec![format!("namespace=={ns},topic~=\"^/tasks/\"")])
            .await
            .unwrap();
        let spec = ctd
            .spec(&ns, &id, &["sh", "-c", "sleep 0.2; exit 7"])
            .unwrap();
        let run = client.run(&ns, &id, rt, spec, T).await;
        let wait = if task_delete_event_may_be_lost(rt, v) {
            Duration::from_secs(5)
        } else {
            T
        };
        let evs = ev
            .collect_for(wait, |v| {
                v.iter().any(|e| matches!(&e.event, E::Delete { .. }))
            })
            .await;
        (run, evs)
    });
    let run = run.unwrap_or_else(|e| panic!("{e:#}\n{}", ctd.log_grep(&id)));
    let (evs, got_delete) = evs;
    if !got_delete {
        assert!(
            task_delete_event_may_be_lost(rt, v),
            "no TaskDelete event; got {evs:#?}"
        );
        eprintln!(
            "peer quirk ({rt}, containerd {}): TaskDelete event lost",
            v.label()
        );
    }
    assert_eq!(run.exit_status, 7);
    let mine: Vec<&E> = evs
        .iter()
        .map(|e| &e.event)
        .filter(|e| e.container_id() == Some(id.as_str()))
        .collect();
    let pid = run.pid;
    match mine.as_slice() {
        [E::Create { pid: p1, .. }, E::Start { pid: p2, .. }, E::Exit {
            pid: p3,
            exit_status: s3,
            exited_at: t3,
            id: exec_id,
            ..
        }, E::Delete {
            pid: p4,
            exit_status: s4,
            exited_at: t4,
            ..
        }] => {
            assert_eq!([*p1, *p2, *p3, *p4], [pid; 4], "pids: {mine:#?}");
            assert!(got_delete);
            assert_eq!((*s3, *s4), (7, 7), "{mine:#?}");
            assert_eq!(
                exec_id, &id,
                "TaskExit.id of the init process is the container id"
            );
            let t3 = (*t3).expect("TaskExit.exited_at");
            let t4 = (*t4).expect("TaskDelete.exited_at");
            assert!(
                t3.seconds >= before,
                "exited_at {t3:?} before the test began"
            );
            assert_eq!(t3, t4, "exit and delete disagree on exited_at");
            if let Some(w) = run.exited_at {
                assert_eq!(w, t3, "Wait and TaskExit disagree on exited_at");
            }
        }
        [E::Create { pid: p1, .. }, E::Start { pid: p2, .. }, E::Exit {
            pid: p3,
            exit_status: 7,
            ..
        }] if !got_delete => {
            assert_eq!([*p1, *p2, *p3], [pid; 3], "pids: {mine:#?}");
        }
        other => panic!("unexpected task events: {other:#?}"),
    }
    // Envelope timestamps are ordered.
    let ts: Vec<(i64, i32)> = evs
        .iter()
        .filter(|e| e.event.container_id() == Some(id.as_str()))
        .filter_map(|e| e.timestamp.as_ref().map(|t| (t.seconds, t.nanos)))
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    c.assert_no_leaks();
}

// ---------------------------------------------------------------------------------------------
// The matrix: module `<runtime>_<version>`, one #[test] per case.

macro_rules! cases {
    ($rt:expr, $v:expr) => {
        use super::*;
        const RT: Runtime = $rt;
        const V: Version = $v;
        #[test]
        fn exit_codes() {
            super::exit_codes(RT, V)
        }
        #[test]
        fn stdout_stderr() {
            super::stdout_stderr(RT, V)
        }
        #[test]
        fn sigterm() {
            super::sigterm(RT, V)
        }
        #[test]
        fn sigkill() {
            super::sigkill(RT, V)
        }
        #[test]
        fn lifecycle_50() {
            super::lifecycle_50(RT, V)
        }
        #[test]
        fn bad_spec_json() {
            super::bad_spec_json(RT, V)
        }
        #[test]
        fn missing_binary() {
            super::missing_binary(RT, V)
        }
        #[test]
        fn bad_rootfs() {
            super::bad_rootfs(RT, V)
        }
        #[test]
        fn shim_kill9() {
            super::shim_kill9(RT, V)
        }
        #[test]
        fn events() {
            super::events(RT, V)
        }
    };
}

mod runc_v1_6 {
    cases!(Runtime::Runc, Version::V1_6);
}
mod runc_v2_1 {
    cases!(Runtime::Runc, Version::V2_1);
}
mod crun_v1_6 {
    cases!(Runtime::Crun, Version::V1_6);
}
mod crun_v2_1 {
    cases!(Runtime::Crun, Version::V2_1);
}
mod airlock_v1_6 {
    cases!(Runtime::Airlock, Version::V1_6);
}
mod airlock_v2_1 {
    cases!(Runtime::Airlock, Version::V2_1);
}
