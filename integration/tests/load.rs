//! Faults and load, for figures (never timed assertions): many pods through CRI, one after
//! another and all at once, with a census of what the node holds before and after; a container
//! flooding stdout to a reader that never reads. Each checks that nothing is left and prints
//! its figures. Long: ignored by default, run by hand:
//!
//! ```text
//! cargo test -p airlock-integration --test load -- --ignored --nocapture --test-threads 1
//! AIRLOCK_LOAD_CYCLES=1000 AIRLOCK_LOAD_PODS=64 (the defaults)
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_integration::containerd::{Containerd, Version, CRI_NAMESPACE};
use airlock_integration::cri::Cri;
use airlock_integration::shared::shared_cri;
use airlock_integration::taskapi::Case;
use airlock_integration::{proc_util, Runtime};
use k8s_cri::v1::NamespaceMode;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn count_dir(p: &Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

/// What the node holds that a pod could leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Census {
    processes: usize,
    shims: usize,
    mounts: usize,
    cgroups: usize,
    state_dirs: usize,
    uid_ranges: usize,
    netns: usize,
}

fn cgroup_dirs_under(root: &Path) -> usize {
    let mut n = 0;
    let mut next = vec![root.to_path_buf()];
    while let Some(d) = next.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += 1;
                next.push(e.path());
            }
        }
    }
    n
}

fn census(ctd: &Containerd) -> Census {
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", ctd.pid())).unwrap_or_default();
    Census {
        // User processes (kernel workers come and go with the load).
        processes: proc_util::pids()
            .into_iter()
            .filter(|&p| p != 2 && proc_util::ppid(p) != Some(2))
            .count(),
        shims: ctd
            .shims()
            .into_iter()
            .filter(|s| s.namespace == CRI_NAMESPACE)
            .count(),
        mounts: mountinfo.lines().count(),
        cgroups: ["pids", "memory"]
            .iter()
            .map(|c| cgroup_dirs_under(&Path::new("/sys/fs/cgroup").join(c)))
            .sum(),
        state_dirs: count_dir(&Path::new("/run/airlock").join(CRI_NAMESPACE)),
        uid_ranges: count_dir(Path::new("/run/airlock/.userns")),
        netns: count_dir(Path::new("/var/run/netns")),
    }
}

/// Waits up to `t` for the census to come back to `before` (exits are reaped, cgroups removed
/// asynchronously); the last census.
fn settle(ctd: &Containerd, before: &Census, t: Duration) -> Census {
    let end = Instant::now() + t;
    loop {
        let now = census(ctd);
        if now == *before || Instant::now() > end {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn one_pod(cri: &mut Cri, name: &str) -> anyhow::Result<()> {
    let pc = cri.pod_config(name, &[], NamespaceMode::Pod);
    let pod = cri.run_pod(&pc, "airlock").await?;
    let cfg = cri.container_config(
        "app",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do usleep 50000; done",
        ],
    );
    let app = cri.start_container(&pod, &pc, cfg).await?;
    cri.teardown(&pod, &[app]).await?;
    Ok(())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `AIRLOCK_LOAD_CYCLES` pods (default 1,000), one after another through CRI: run the pod,
/// start a container, stop and remove both. The census after equals the census before.
#[test]
#[ignore = "load: minutes; run by hand for figures"]
fn cri_cycles_leave_nothing() {
    let cycles = env_count("AIRLOCK_LOAD_CYCLES", 1000);
    let ctd: Arc<Containerd> = shared_cri(Version::V1_6).unwrap();
    let before = census(&ctd);
    let t0 = Instant::now();
    let failures = rt().block_on(async {
        let mut cri = Cri::connect(&ctd).await.unwrap();
        let mut failures = Vec::new();
        for i in 0..cycles {
            if let Err(e) = one_pod(&mut cri, "cycle").await {
                failures.push(format!("cycle {i}: {e:#}"));
            }
        }
        failures
    });
    let took = t0.elapsed();
    let after = settle(&ctd, &before, Duration::from_secs(30));
    println!(
        "FIGURE cri cycles: {cycles} pods in {took:?} ({:?} per pod), {} failures; census before {before:?}, after {after:?}",
        took / cycles as u32,
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(after, before, "left behind after {cycles} cycles");
}

/// `AIRLOCK_LOAD_PODS` pods (default 64) started at once through CRI: none fails, and all of
/// them gone leave the census as it was.
#[test]
#[ignore = "load: minutes; run by hand for figures"]
fn cri_pods_at_once() {
    let pods = env_count("AIRLOCK_LOAD_PODS", 64);
    let ctd: Arc<Containerd> = shared_cri(Version::V1_6).unwrap();
    let before = census(&ctd);
    let t0 = Instant::now();
    let results = rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..pods {
            let ctd = ctd.clone();
            tasks.push(tokio::spawn(async move {
                let mut cri = Cri::connect(&ctd).await?;
                one_pod(&mut cri, &format!("burst{i}")).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(anyhow::Error::from).and_then(|r| r));
        }
        out
    });
    let took = t0.elapsed();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    let after = settle(&ctd, &before, Duration::from_secs(60));
    println!(
        "FIGURE cri burst: {pods} pods at once in {took:?}, {} failures; census before {before:?}, after {after:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(after, before, "left behind after {pods} pods at once");
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A container writes to stdout as fast as it can while its reader (a FIFO opened, never
/// read) stalls: the shim's memory stays flat (the pipe fills and the writer blocks; nothing
/// buffers in the shim).
#[test]
#[ignore = "load: half a minute; run by hand for figures"]
fn stdout_flood_keeps_the_shim_flat() {
    use airlock_integration::fifo::TaskFifos;
    let mut c = Case::new(Runtime::Airlock, Version::V1_6, "flood");
    let id = c.id("flood");
    let tokio = c.rt();
    let io = tokio.block_on(async {
        let io = TaskFifos::new().unwrap();
        // Reads the first chunk, then never again.
        io.stall();
        let cl = c.ctd.client().await.unwrap();
        c.start_with_io(&cl, &id, &["sh", "-c", "yes flood-flood-flood"], &io, false)
            .await
            .unwrap();
        io
    });
    let shim = c.shim_pid(&id);
    std::thread::sleep(Duration::from_secs(2));
    let samples: Vec<u64> = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            rss_kib(shim)
        })
        .collect();
    println!("FIGURE stdout flood: shim {shim} RSS KiB each second {samples:?}",);
    let (lo, hi) = (
        *samples.iter().min().unwrap(),
        *samples.iter().max().unwrap(),
    );
    assert!(
        hi - lo < 1024,
        "the shim grew under a stalled reader: {samples:?}"
    );
    drop(io);
    c.remove(&id);
    c.assert_no_leaks();
}
