//! Airlock-specific end-to-end cases: one shim per pod, and policies chosen and enforced at
//! create, through a real containerd (1.6 and 2.1).

use std::time::Duration;

use airlock_integration::containerd::{Containerd, Version};
use airlock_integration::{leaks, shared, test_rt as rt, unique_id as uid, Runtime};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(45);
/// Runs until TERM, then exits 0.
const TERM_LOOP: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 0.1; done",
];

fn spec(
    ctd: &Containerd,
    ns: &str,
    id: &str,
    args: &[&str],
    edit: impl FnOnce(&mut Value),
) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&ctd.spec(ns, id, args).unwrap()).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn annotate(v: &mut Value, key: &str, value: &str) {
    let obj = v.as_object_mut().unwrap();
    let ann = obj.entry("annotations").or_insert_with(|| json!({}));
    ann[key] = json!(value);
}

fn assert_clean(ctd: &Containerd, ns: &str, ids: &[String]) {
    let l = leaks::wait_no_leaks(ctd, ns, ids, Duration::from_secs(10));
    assert!(l.is_empty(), "leaks: {l:#?}");
}

/// Checks that each container of a pod still runs (the TERM-trapping loop), then stops (TERM,
/// exit 0) and deletes each.
async fn stop_running_pod(c: &airlock_integration::Client, ns: &str, ids: &[String]) {
    for id in ids {
        let procs = leaks::processes_of(ns, id);
        assert!(!procs.is_empty(), "container {id} has no processes");
    }
    for id in ids {
        c.kill(ns, id, libc::SIGTERM as u32, false).await.unwrap();
        let (status, _) = c.wait(ns, id, T).await.unwrap();
        assert_eq!(status, 0, "trapped TERM exits 0");
        c.delete_task(ns, id).await.unwrap();
        c.delete_container(ns, id).await.unwrap();
    }
}

/// Containers carrying the same CRI sandbox id are served by one shim, which exits once the
/// last of them is deleted.
fn pod_shares_one_shim(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("pod-shim").unwrap();
    let pod = uid("pod");
    let ids = [uid("sandbox"), uid("app")];
    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        for id in &ids {
            let s = spec(&ctd, &ns, id, &TERM_LOOP, |v| {
                annotate(v, "io.kubernetes.cri.sandbox-id", &pod)
            });
            c.create(&ns, id, Runtime::Airlock, s).await.unwrap();
            c.start(&ns, id).await.unwrap();
        }
        let shims: Vec<_> = ctd
            .shims()
            .into_iter()
            .filter(|s| s.namespace == ns)
            .collect();
        assert_eq!(shims.len(), 1, "one shim for the pod, got {shims:#?}");
        // Both inits are the shim's children (it is their subreaper).
        stop_running_pod(&c, &ns, &ids).await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ctd.shims().iter().any(|s| s.namespace == ns) {
        assert!(
            std::time::Instant::now() < deadline,
            "pod shim still running after its last container was deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_clean(&ctd, &ns, &ids);
}

/// A pod asking for more than its policy allows is refused at create with a message that names
/// the field and the policy, and nothing is left behind.
fn policy_refusal(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("policy-refuse").unwrap();
    let id = uid("sysadmin");
    let s = spec(&ctd, &ns, &id, &["true"], |v| {
        for set in ["bounding", "effective", "permitted"] {
            v["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_ADMIN"));
        }
    });
    let err = rt()
        .block_on(async {
            let c = ctd.client().await.unwrap();
            c.create(&ns, &id, Runtime::Airlock, s).await
        })
        .expect_err("CAP_SYS_ADMIN must be refused by agent-strict");
    let msg = format!("{err:#}");
    assert!(msg.contains("process.capabilities"), "{msg}");
    assert!(msg.contains("agent-strict"), "{msg}");
    assert!(msg.contains("CAP_SYS_ADMIN"), "{msg}");
    assert_clean(&ctd, &ns, &[id]);
}

/// A writable bind of a host path and a device beyond the standard set are refused at create
/// by agent-strict, naming the field, the path and the operator's setting; so is a read-only
/// bind of the same path, which runs (read-only) under agent-default; nothing is left behind.
fn host_access_refusal(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("host-access").unwrap();
    let host_dir = tempfile::tempdir().unwrap();
    let src = host_dir.path().to_str().unwrap().to_string();
    let bind = |opts: &str| {
        let src = src.clone();
        let opts: Vec<String> = opts.split(',').map(String::from).collect();
        move |v: &mut serde_json::Value| {
            v["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/host", "type": "bind", "source": src, "options": opts
            }));
        }
    };
    let (rw, dev, ro) = (uid("rw"), uid("dev"), uid("ro"));
    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        let s = spec(&ctd, &ns, &rw, &["true"], bind("rbind,rw"));
        let err = c
            .create(&ns, &rw, Runtime::Airlock, s)
            .await
            .expect_err("a writable host bind must be refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("mounts")
                && msg.contains(&src)
                && msg.contains("writable_host_paths")
                && msg.contains("agent-strict"),
            "{msg}"
        );

        let s = spec(&ctd, &ns, &dev, &["true"], |v| {
            v["linux"]["devices"] = json!([{
                "path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438
            }]);
        });
        let err = c
            .create(&ns, &dev, Runtime::Airlock, s)
            .await
            .expect_err("/dev/fuse must be refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("linux.devices") && msg.contains("/dev/fuse"),
            "{msg}"
        );

        // agent-strict binds no host path, not even read-only; agent-default binds any
        // read-only.
        let s = spec(&ctd, &ns, &ro, &["true"], bind("rbind,ro"));
        let err = c
            .create(&ns, &ro, Runtime::Airlock, s)
            .await
            .expect_err("agent-strict refuses a read-only host bind");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&src) && msg.contains("readonly_host_paths"),
            "{msg}"
        );
        let read_only = bind("rbind,ro");
        let s = spec(
            &ctd,
            &ns,
            &ro,
            &["sh", "-c", "test -d /host && ! touch /host/x"],
            |v| {
                read_only(v);
                annotate(v, "airlock.dev/policy", "agent-default");
            },
        );
        let r = c.run(&ns, &ro, Runtime::Airlock, s, T).await.unwrap();
        assert_eq!(
            r.exit_status, 0,
            "a read-only bind runs and stays read-only"
        );
    });
    assert!(std::fs::read_dir(host_dir.path()).unwrap().next().is_none());
    assert_clean(&ctd, &ns, &[rw, dev, ro]);
}

/// The `airlock.dev/policy` annotation picks a selectable policy; an unknown one is refused.
fn policy_annotation(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("policy-pick").unwrap();
    // Exit 2: rootfs not writable; exit 3: stdout (no client stream) not writable.
    let write_root = ["sh", "-c", "touch /written || exit 2; echo ok || exit 3"];
    let (strict, default, unknown) = (uid("strict"), uid("default"), uid("unknown"));
    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        let s = spec(&ctd, &ns, &strict, &write_root, |_| {});
        let r = c.run(&ns, &strict, Runtime::Airlock, s, T).await.unwrap();
        assert_eq!(r.exit_status, 2, "agent-strict has a read-only rootfs");

        let s = spec(&ctd, &ns, &default, &write_root, |v| {
            annotate(v, "airlock.dev/policy", "agent-default")
        });
        c.create(&ns, &default, Runtime::Airlock, s).await.unwrap();
        // The shim's typed report of what the policy enforced, beside the spec in the bundle.
        let file = ctd
            .state()
            .join("io.containerd.runtime.v2.task")
            .join(&ns)
            .join(&default)
            .join(airlock_policies::REPORT_FILE);
        let report: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(report["policy"], "agent-default", "{report}");
        let enforced = report["enforced"].as_array().unwrap();
        assert!(
            enforced
                .iter()
                .any(|r| r.as_str().unwrap().contains("seccomp")),
            "{report}"
        );
        assert_eq!(report["clamped"], json!([]), "{report}");
        c.start(&ns, &default).await.unwrap();
        let (status, _) = c.wait(&ns, &default, T).await.unwrap();
        c.delete_task(&ns, &default).await.unwrap();
        c.delete_container(&ns, &default).await.unwrap();
        assert_eq!(status, 0, "agent-default has a writable rootfs");

        let s = spec(&ctd, &ns, &unknown, &["true"], |v| {
            annotate(v, "airlock.dev/policy", "no-such-policy")
        });
        let err = c
            .create(&ns, &unknown, Runtime::Airlock, s)
            .await
            .expect_err("an unknown policy must be refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("no-such-policy") && msg.contains("agent-strict"),
            "{msg}"
        );
    });
    assert_clean(&ctd, &ns, &[strict, default, unknown]);
}

/// The `airlock-runtime --zygote` children of process `shim`: runtimes started ahead of need.
fn zygotes_of(shim: i32) -> Vec<i32> {
    airlock_integration::proc_util::pids()
        .into_iter()
        .filter(|pid| {
            airlock_integration::proc_util::ppid(*pid) == Some(shim)
                && airlock_integration::proc_util::cmdline(*pid)
                    .get(1)
                    .is_some_and(|a| a == "--zygote")
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pod sandbox's create starts a runtime ahead of need (a zygote) for the pod's app
/// containers. The next create takes it; an app container's create starts none; and a create
/// whose zygote is gone (here: killed) still works.
fn runtime_started_ahead(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("zygote").unwrap();
    let pod = uid("pod");
    let ids = [uid("sandbox"), uid("app"), uid("sandbox2"), uid("app2")];
    let kinds = ["sandbox", "container", "sandbox", "container"];
    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        let mut shim = None;
        let mut zygote = None;
        for (i, (id, kind)) in ids.iter().zip(kinds).enumerate() {
            if i == 3 {
                // The second sandbox's zygote: kill it before app2's create.
                let z: i32 = zygote.take().unwrap();
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(z), nix::sys::signal::SIGKILL)
                    .unwrap();
                let shim = shim.unwrap();
                wait_until("the killed zygote is reaped", || {
                    !zygotes_of(shim).contains(&z)
                });
            }
            let s = spec(&ctd, &ns, id, &TERM_LOOP, |v| {
                annotate(v, "io.kubernetes.cri.sandbox-id", &pod);
                annotate(v, "io.kubernetes.cri.container-type", kind);
            });
            c.create(&ns, id, Runtime::Airlock, s).await.unwrap();
            c.start(&ns, id).await.unwrap();
            let pid = *shim.get_or_insert_with(|| {
                ctd.shims()
                    .into_iter()
                    .find(|s| s.namespace == ns)
                    .expect("the pod's shim")
                    .pid
            });
            if kind == "sandbox" {
                wait_until("a zygote after the sandbox's create", || {
                    zygotes_of(pid).len() == 1
                });
                zygote = zygotes_of(pid).first().copied();
            } else if i == 1 {
                let z = zygote.take().unwrap();
                // Well within the zygote's idle time (10 s): the create took it.
                wait_until("the app container's create took the zygote", || {
                    !zygotes_of(pid).contains(&z)
                });
                std::thread::sleep(Duration::from_millis(200));
                assert!(
                    zygotes_of(pid).is_empty(),
                    "an app container's create starts none"
                );
            }
        }
        // A runtime started ahead gives its container the shim's oom_score_adj at the time
        // of the create (the spec sets none), as a runtime started then would: `start` gives
        // the shim its score before spawning it, so its first zygote has it too.
        let oom = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"));
        let shim_score = oom(shim.unwrap()).unwrap();
        for id in &ids {
            for (pid, cmd) in leaks::processes_of(&ns, id) {
                // The loop's `sleep 0.1` children may exit before they are read.
                if let Ok(score) = oom(pid) {
                    assert_eq!(score, shim_score, "{id} process {pid} ({cmd})");
                }
            }
        }
        stop_running_pod(&c, &ns, &ids).await;
    });
    assert_clean(&ctd, &ns, &ids);
}

/// The pod's own seccomp profile applies on top of the policy's filter: containerd's default
/// profile (`ctr run --seccomp`, what Kubernetes' RuntimeDefault gives) runs a workload, and a
/// stricter profile (mkdir denied with EACCES) narrows what agent-strict allows.
fn pod_seccomp_profile(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("pod-seccomp").unwrap();
    let t = Duration::from_secs(60);
    let mkdir = ["sh", "-c", "mkdir /tmp/d && echo made"];
    let out = ctd
        .ctr_run_with(
            &ns,
            Runtime::Airlock,
            &["--seccomp"],
            &uid("rtdefault"),
            &mkdir,
            t,
        )
        .unwrap();
    assert!(out.success() && out.stdout.contains("made"), "{out:?}");

    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let profile = profile.display().to_string();
    let out = ctd
        .ctr_run_with(
            &ns,
            Runtime::Airlock,
            &["--seccomp", "--seccomp-profile", &profile],
            &uid("nomkdir"),
            &mkdir,
            t,
        )
        .unwrap();
    assert!(
        !out.success(),
        "mkdir must fail under the pod's profile: {out:?}"
    );
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
}

macro_rules! versions {
    ($($name:ident => $v:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn pod_shares_one_shim() { super::pod_shares_one_shim($v) }
            #[test]
            fn policy_refusal() { super::policy_refusal($v) }
            #[test]
            fn host_access_refusal() { super::host_access_refusal($v) }
            #[test]
            fn policy_annotation() { super::policy_annotation($v) }
            #[test]
            fn pod_seccomp_profile() { super::pod_seccomp_profile($v) }
            #[test]
            fn runtime_started_ahead() { super::runtime_started_ahead($v) }
        }
    )*};
}

versions! {
    airlock_v1_6 => Version::V1_6,
    airlock_v2_1 => Version::V2_1,
}
