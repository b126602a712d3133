//! Measures what RuntimeClass.yaml's `overhead.podFixed` is built from: the shim's memory
//! (RSS and PSS from `/proc/PID/smaps_rollup` once idle, and its peak RSS, `VmHWM`, which the
//! start reached before the idle shim gave freed heap back) and the CPU time the shim spent on one container
//! start (its own on-CPU time from `/proc/PID/schedstat`, plus the `airlock-runtime` children
//! it waited for, `cutime + cstime`). Ignored by default (a measurement, not a check):
//!
//!     cargo build --release --bins
//!     AIRLOCK_BIN_DIR=$PWD/target/x86_64-unknown-linux-gnu/release cargo test -p airlock-integration --test overhead -- --ignored --nocapture

use std::time::Duration;

use airlock_integration::containerd::Version;
use airlock_integration::{shared, Runtime};

fn shim_pid(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-airlock-v2"));
        let has_id = args
            .windows(2)
            .any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
        (is_shim && has_id && !args.iter().any(|a| *a == b"start")).then_some(pid)
    })
}

fn kib(smaps: &str, key: &str) -> u64 {
    smaps
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore]
fn shim_overhead() {
    let runs: usize = std::env::var("AIRLOCK_OVERHEAD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    for v in [Version::V1_6, Version::V2_1] {
        if !v.available() {
            continue;
        }
        let ctd = shared(v).unwrap();
        let ns = ctd.new_namespace("overhead").unwrap();
        let (mut rss, mut pss, mut peak, mut cpu) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let id = format!("oh-{}-{i}", std::process::id());
            let out = ctd
                .ctr_run_spawn(
                    &ns,
                    Runtime::Airlock,
                    &[],
                    &id,
                    &["sh", "-c", "trap 'exit 0' TERM; sleep 30 & wait"],
                )
                .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            let pid = shim_pid(&id).expect("shim running");
            let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
            rss.push(kib(&smaps, "Rss:") as f64 / 1024.0);
            pss.push(kib(&smaps, "Pss:") as f64 / 1024.0);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            peak.push(kib(&status, "VmHWM:") as f64 / 1024.0);
            let sched = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
            let own_ns: f64 = sched.split_whitespace().next().unwrap().parse().unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            // Fields 16/17 (cutime/cstime) are at 13/14 after the ")" (state is field 3).
            let children = (f[13].parse::<f64>().unwrap() + f[14].parse::<f64>().unwrap()) / ticks;
            cpu.push(own_ns / 1e6 + children * 1e3);
            ctd.ctr(Some(&ns), &["task", "kill", &id]).unwrap();
            let _ = out.wait(Duration::from_secs(20));
        }
        println!(
            "containerd {}: {runs} starts; idle shim RSS median {:.1} MiB max {:.1}; PSS median {:.1} MiB max {:.1}; \
             peak RSS median {:.1} MiB max {:.1}; \
             shim CPU per start (own + runtime children) median {:.1} ms max {:.1}",
            v.label(),
            median(&mut rss.clone()),
            rss.iter().cloned().fold(0.0, f64::max),
            median(&mut pss.clone()),
            pss.iter().cloned().fold(0.0, f64::max),
            median(&mut peak.clone()),
            peak.iter().cloned().fold(0.0, f64::max),
            median(&mut cpu.clone()),
            cpu.iter().cloned().fold(0.0, f64::max),
        );
    }
}
