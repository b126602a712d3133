//! User namespaces (agent-strict and agent-default): the container's root is an unprivileged
//! host id range, one per pod, the image's files appear owned by it through an idmapped rootfs
//! (no chown), execs join it, and ranges are released when the pod's last container goes.
//! Through a real containerd, 1.6 and 2.1.

use std::time::{Duration, Instant};

use airlock_integration::containerd::{Containerd, Version};
use airlock_integration::{leaks, shared, test_rt as rt, unique_id as uid, Runtime};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(45);
/// The allocator's first range (shim/src/process/userns.rs `BASE`) and range size.
const BASE: u64 = 1 << 30;
const SIZE: u64 = 65536;

fn spec(ctd: &Containerd, ns: &str, id: &str, args: &[&str], pod: Option<&str>) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&ctd.spec(ns, id, args).unwrap()).unwrap();
    if let Some(pod) = pod {
        let obj = v.as_object_mut().unwrap();
        let ann = obj.entry("annotations").or_insert_with(|| json!({}));
        ann["io.kubernetes.cri.sandbox-id"] = json!(pod);
    }
    serde_json::to_vec(&v).unwrap()
}

/// `(container id, host id, size)` of the first line of a uid_map.
fn parse_map(text: &str) -> (u64, u64, u64) {
    let f: Vec<u64> = text
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f.len(), 3, "uid_map {text:?}");
    (f[0], f[1], f[2])
}

fn host_uid_of(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn assert_clean(ctd: &Containerd, ns: &str, ids: &[String]) {
    let l = leaks::wait_no_leaks(ctd, ns, ids, Duration::from_secs(10));
    assert!(l.is_empty(), "leaks: {l:#?}");
}

/// Inside: root maps to an unprivileged range of 65536 ids, the image's files are owned by
/// (container) root, and the rootfs root too; agent-default's writable rootfs works as root.
fn root_is_an_unprivileged_range(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("userns-map").unwrap();
    let id = uid("map");
    let out = ctd
        .ctr_run(
            &ns,
            Runtime::Airlock,
            &id,
            &[
                "sh",
                "-c",
                "cat /proc/self/uid_map; cat /proc/self/gid_map; stat -c %u:%g /bin/busybox; stat -c %u /; id -u",
            ],
        )
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{out:?}");
    let (inside, host, size) = parse_map(lines[0]);
    assert_eq!((inside, size), (0, SIZE), "{out:?}");
    assert!(host >= BASE && host != 0, "root maps to host uid {host}");
    assert_eq!(parse_map(lines[1]).1, host, "gids map like uids");
    assert_eq!(
        lines[2], "0:0",
        "idmapped rootfs: image files owned by root inside"
    );
    assert_eq!(
        lines[3], "0",
        "the rootfs root belongs to the container's root"
    );
    assert_eq!(lines[4], "0");

    let id2 = uid("write");
    let s = {
        let mut v: Value = serde_json::from_slice(
            &ctd.spec(
                &ns,
                &id2,
                &[
                    "sh",
                    "-c",
                    "echo x > /etc/written && stat -c %u /etc/written",
                ],
            )
            .unwrap(),
        )
        .unwrap();
        v["annotations"] = json!({"airlock.dev/policy": "agent-default"});
        serde_json::to_vec(&v).unwrap()
    };
    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        let r = c.run(&ns, &id2, Runtime::Airlock, s, T).await.unwrap();
        assert_eq!(r.exit_status, 0, "container root writes its rootfs: {r:?}");
    });
    assert_clean(&ctd, &ns, &[id, id2]);
}

/// Seen from the host: the container's processes run as the range's first uid; two pods get
/// disjoint ranges, two containers of one pod share one; exec joins the user namespace; the
/// ranges are released when the pods' containers are deleted.
fn pods_get_disjoint_ranges(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("userns-pods").unwrap();
    let (pod_a, pod_b) = (uid("poda"), uid("podb"));
    let ids = [uid("a1"), uid("a2"), uid("b1")];
    let pods = [&pod_a, &pod_a, &pod_b];
    let loop_ = [
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 0.1; done",
    ];
    let maps: Vec<(u64, u64, u64)> = rt().block_on(async {
        let c = ctd.client().await.unwrap();
        let mut pids = Vec::new();
        for (id, pod) in ids.iter().zip(pods) {
            let s = spec(&ctd, &ns, id, &loop_, Some(pod));
            c.create(&ns, id, Runtime::Airlock, s).await.unwrap();
            pids.push(c.start(&ns, id).await.unwrap() as i32);
        }
        ids.iter()
            .zip(pids)
            .map(|(id, pid)| {
                let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
                let m = parse_map(&map);
                assert_eq!(host_uid_of(pid), m.1, "{id} runs as its range's first uid");
                m
            })
            .collect()
    });
    let (a1, a2, b1) = (maps[0].1, maps[1].1, maps[2].1);
    assert_eq!(a1, a2, "containers of one pod share its range");
    assert!(
        a1.abs_diff(b1) >= SIZE,
        "pods' ranges overlap: {a1} and {b1}"
    );
    // The allocator lists both containers of pod A in one range file.
    let ranges = leaks::userns_ranges();
    let a = ranges.iter().find(|(_, h, _)| u64::from(*h) == a1).unwrap();
    assert!(
        a.2.contains(&format!("{ns}/{}", ids[0])) && a.2.contains(&format!("{ns}/{}", ids[1])),
        "{a:?}"
    );

    // An exec lands in the container's user namespace.
    let out = ctd
        .ctr(
            Some(&ns),
            &[
                "tasks",
                "exec",
                "--exec-id",
                "e1",
                &ids[0],
                "cat",
                "/proc/self/uid_map",
            ],
        )
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        parse_map(&out.stdout).1,
        a1,
        "exec joins the user namespace: {out:?}"
    );

    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            c.kill(&ns, id, libc::SIGTERM as u32, false).await.unwrap();
            c.wait(&ns, id, T).await.unwrap();
            c.delete_task(&ns, id).await.unwrap();
            c.delete_container(&ns, id).await.unwrap();
            if i == 0 {
                // a2 still runs: pod A keeps its range.
                assert!(
                    leaks::userns_ranges()
                        .iter()
                        .any(|(_, h, _)| u64::from(*h) == a1),
                    "pod A's range released while a2 still runs"
                );
            }
        }
    });
    assert_clean(&ctd, &ns, &ids);
    assert!(leaks::userns_ranges_of(&ns, None).is_empty());
}

/// A container whose shim is killed (-9) still gives its range back: containerd runs
/// `shim delete`, which releases it.
fn range_released_after_shim_crash(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("userns-crash").unwrap();
    let id = uid("crash");
    // Bounded: this once hung a CI run (1.6, cause not reproduced): fail with containerd's stacks.
    airlock_integration::bounded(&ctd, Duration::from_secs(90), "shim crash", async {
        let c = ctd.client().await.unwrap();
        let s = spec(&ctd, &ns, &id, &["sleep", "60"], None);
        c.create(&ns, &id, Runtime::Airlock, s).await.unwrap();
        c.start(&ns, &id).await.unwrap();
        assert_eq!(leaks::userns_ranges_of(&ns, Some(&id)).len(), 1);
        let shim = ctd
            .shims()
            .into_iter()
            .find(|s| s.namespace == ns)
            .expect("shim");
        unsafe { libc::kill(shim.pid, libc::SIGKILL) };
        // containerd reports the exit (or has already dropped the task) once it has run
        // `shim delete`; either way one wait is enough.
        let _ = c.wait(&ns, &id, Duration::from_secs(10)).await;
        let _ = c.delete_task(&ns, &id).await;
        c.delete_container(&ns, &id).await.unwrap();
    });
    assert_clean(&ctd, &ns, std::slice::from_ref(&id));
}

/// Two containerd instances on one node, with different state dirs (containerd 1.6 and 2.1),
/// start pods at the same time: every pod gets a range of its own, because the registry of
/// ranges is one directory for every shim on the node, whichever containerd started it.
#[test]
fn two_containerds_hand_out_disjoint_ranges() {
    const PODS: usize = 4;
    let ctds = [
        shared(Version::V1_6).unwrap(),
        shared(Version::V2_1).unwrap(),
    ];
    let namespaces: Vec<String> = ctds
        .iter()
        .map(|c| c.new_namespace("userns-two").unwrap())
        .collect();
    let loop_ = [
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 0.1; done",
    ];
    let ids: Vec<Vec<String>> = (0..2)
        .map(|_| (0..PODS).map(|i| uid(&format!("two{i}"))).collect())
        .collect();
    let pids: Vec<i32> = rt().block_on(async {
        let mut all = Vec::new();
        for ((ctd, ns), ids) in ctds.iter().zip(&namespaces).zip(&ids) {
            let c = ctd.client().await.unwrap();
            for id in ids {
                let (ctd, ns, id, c) = (ctd.clone(), ns.clone(), id.clone(), c.clone());
                all.push(tokio::spawn(async move {
                    let s = spec(&ctd, &ns, &id, &loop_, None);
                    c.create(&ns, &id, Runtime::Airlock, s).await.unwrap();
                    c.start(&ns, &id).await.unwrap() as i32
                }));
            }
        }
        let mut pids = Vec::new();
        for h in all {
            pids.push(h.await.unwrap());
        }
        pids
    });
    let hosts: Vec<u64> = pids
        .iter()
        .map(|pid| parse_map(&std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap()).1)
        .collect();
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            assert!(a.abs_diff(*b) >= SIZE, "two pods share ids: {hosts:?}");
        }
    }
    for ((ctd, ns), ids) in ctds.iter().zip(&namespaces).zip(&ids) {
        for id in ids {
            let _ = ctd.ctr(Some(ns), &["tasks", "kill", "-s", "KILL", id]);
        }
        rt().block_on(async {
            let c = ctd.client().await.unwrap();
            for id in ids {
                let _ = c.wait(ns, id, Duration::from_secs(10)).await;
                let _ = c.delete_task(ns, id).await;
                c.delete_container(ns, id).await.unwrap();
            }
        });
        assert_clean(ctd, ns, ids);
    }
}

/// create+start+wait+delete p50 through containerd, interleaved: airlock with its user
/// namespace (agent-strict) and a network namespace of its own, the same on a spec that joins a
/// network namespace made beforehand (as a CRI pod's sandbox joins CNI's: joined before the user
/// namespace, with the shim mounting that namespace's sysfs), and runc.v2 as the yardstick.
/// Prints p50/p95 per variant.
fn measure_start_cost(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("userns-cost").unwrap();
    let runs = 30;
    let mut netns_holder = std::process::Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let netns = format!("/proc/{}/ns/net", netns_holder.id());
    let join_netns = |s: Vec<u8>| -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&s).unwrap();
        for n in v["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(netns);
            }
        }
        serde_json::to_vec(&v).unwrap()
    };
    let variants: [(&str, Runtime, bool); 3] = [
        ("airlock, own netns", Runtime::Airlock, false),
        ("airlock, joined netns", Runtime::Airlock, true),
        ("runc.v2", Runtime::Runc, false),
    ];
    // Per variant: (create+start, whole lifecycle) in ms.
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); variants.len()];
    rt().block_on(async {
        let c = ctd.client().await.unwrap();
        for i in 0..runs + 2 {
            for (k, (_, runtime, join)) in variants.iter().enumerate() {
                let id = uid("cost");
                let mut s = spec(&ctd, &ns, &id, &["true"], None);
                if *join {
                    s = join_netns(s);
                }
                let t = Instant::now();
                c.create(&ns, &id, *runtime, s).await.unwrap();
                c.start(&ns, &id).await.unwrap();
                let started = t.elapsed();
                let (status, _) = c.wait(&ns, &id, T).await.unwrap();
                assert_eq!(status, 0);
                c.delete_task(&ns, &id).await.unwrap();
                c.delete_container(&ns, &id).await.unwrap();
                if i >= 2 {
                    times[k].0.push(started.as_secs_f64() * 1e3);
                    times[k].1.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    });
    let _ = netns_holder.kill();
    let _ = netns_holder.wait();
    println!("{v:?}: through containerd's API, {runs} interleaved runs, p50 / p95 ms");
    println!(
        "  {:<28} {:>15} {:>15}",
        "", "create+start", "whole lifecycle"
    );
    let pct = |t: &mut Vec<f64>, p: usize| {
        t.sort_by(f64::total_cmp);
        t[(t.len() * p / 100).min(t.len() - 1)]
    };
    for ((name, ..), (start, all)) in variants.iter().zip(times.iter_mut()) {
        println!(
            "  {name:<28} {:>6.1} / {:>6.1} {:>6.1} / {:>6.1}",
            pct(start, 50),
            pct(start, 95),
            pct(all, 50),
            pct(all, 95)
        );
    }
}

macro_rules! versions {
    ($($name:ident => $v:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn root_is_an_unprivileged_range() { super::root_is_an_unprivileged_range($v) }
            #[test]
            fn pods_get_disjoint_ranges() { super::pods_get_disjoint_ranges($v) }
            #[test]
            fn range_released_after_shim_crash() { super::range_released_after_shim_crash($v) }
            #[test]
            #[ignore = "measurement: run with --ignored --nocapture --test-threads=1"]
            fn measure_start_cost() { super::measure_start_cost($v) }
        }
    )*};
}

versions! {
    airlock_v1_6 => Version::V1_6,
    airlock_v2_1 => Version::V2_1,
}
