//! The harness itself: startup, image import, teardown that leaves nothing behind.

use airlock_integration::{proc_util, Containerd, Runtime, Version};
use std::time::Duration;

fn teardown_leaves_nothing(v: Version) {
    let ctd = Containerd::builder()
        .version(v)
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ns = ctd.new_namespace("teardown").unwrap();
    let dir = ctd.dir().to_path_buf();
    let cpid = ctd.pid();
    // A detached container that would live forever, under each working runtime.
    let mut ids = Vec::new();
    for rt in [Runtime::Runc, Runtime::Crun] {
        let id = format!("forever-{rt}");
        let out = ctd
            .ctr(
                Some(&ns),
                &[
                    &["run", "-d"][..],
                    &rt.ctr_args().iter().map(String::as_str).collect::<Vec<_>>(),
                    &[
                        airlock_integration::IMAGE_REF,
                        &id,
                        "sh",
                        "-c",
                        "trap '' TERM; while :; do sleep 1; done",
                    ],
                ]
                .concat(),
            )
            .unwrap();
        assert!(out.success(), "ctr run -d: {out:?}");
        ids.push(id);
    }
    let shims = ctd.shims();
    assert_eq!(shims.len(), 2, "one shim per container: {shims:?}");
    let mut pids: Vec<i32> = shims.iter().map(|s| s.pid).collect();
    for s in &shims {
        pids.extend(proc_util::descendants(s.pid));
    }
    assert!(pids.len() >= 4, "shims and containers: {pids:?}");
    drop(ctd);
    assert!(!proc_util::alive(cpid), "containerd still alive");
    for p in &pids {
        assert!(
            !proc_util::alive(*p),
            "pid {p} survived teardown: {:?}",
            proc_util::cmdline(*p)
        );
    }
    assert!(!dir.exists(), "temp dir {} left", dir.display());
    for id in &ids {
        assert!(airlock_integration::leaks::cgroup_dirs(&ns, Some(id)).is_empty());
    }
}

#[test]
fn teardown_v1_6() {
    teardown_leaves_nothing(Version::V1_6);
}

#[test]
fn teardown_v2_1() {
    teardown_leaves_nothing(Version::V2_1);
}

#[test]
fn image_imports_and_runs_v1_6() {
    let ctd = Containerd::builder()
        .version(Version::V1_6)
        .start()
        .unwrap();
    let ns = ctd.new_namespace("img").unwrap();
    let out = ctd
        .ctr_run_with(
            &ns,
            Runtime::Runc,
            &[],
            "img1",
            &["sh", "-c", "echo hi; ls /bin | wc -l"],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.starts_with("hi\n"), "{out:?}");
}

/// CRI can be switched on (for later CRI tests); the runtimes appear in its config.
fn cri_plugin_loads(v: Version) {
    let ctd = Containerd::builder().version(v).cri(true).start().unwrap();
    let out = ctd.ctr_ok(None, &["plugins", "ls"]).unwrap();
    let cri = out
        .stdout
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.split_whitespace().nth(1) == Some("cri"))
        .unwrap_or_else(|| panic!("no cri plugin: {}", out.stdout));
    assert!(
        cri.trim_end().ends_with("ok"),
        "{cri}\n{}",
        ctd.log_grep("cri")
    );
}

#[test]
fn cri_plugin_loads_v1_6() {
    cri_plugin_loads(Version::V1_6);
}

#[test]
fn cri_plugin_loads_v2_1() {
    cri_plugin_loads(Version::V2_1);
}
