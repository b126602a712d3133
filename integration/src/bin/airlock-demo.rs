//! The README's main job: start a private containerd with Airlock registered, run an agent
//! container through it under the default sandbox (`agent-strict`), and print what the sandbox
//! enforced, next to what the same container gets from runc's defaults.

use std::time::Duration;

use airlock_integration::{Containerd, Runtime, Version};
use anyhow::{bail, Context, Result};

/// Each probe prints `key|verdict` lines. Attempts that must fail print what the kernel said.
const PROBE: &str = r#"
st() { grep "^$1:" /proc/self/status | { read -r _ v; echo "$v"; }; }
echo "user|$(id -u):$(id -g)"
echo "capabilities (CapEff)|$(st CapEff)"
echo "no_new_privs|$(st NoNewPrivs)"
echo "seccomp mode|$(st Seccomp)"
if touch /probe-file 2>/dev/null; then echo "write to /|allowed"; else echo "write to /|refused (read-only rootfs)"; fi
if echo x > /tmp/probe 2>/dev/null; then echo "write to /tmp|allowed ($(grep ' /tmp ' /proc/mounts | grep -o 'size=[0-9a-z]*' || echo 'no tmpfs'))"; else echo "write to /tmp|refused"; fi
if mount -t tmpfs x /mnt 2>/dev/null; then echo "mount tmpfs|allowed"; else echo "mount tmpfs|refused"; fi
if echo 1 > /proc/sys/kernel/printk 2>/dev/null; then echo "write /proc/sys|allowed"; else echo "write /proc/sys|refused"; fi
echo "/proc/kcore readable bytes|$(head -c 16 /proc/kcore 2>/dev/null | wc -c)"
echo "network interfaces|$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
"#;

fn probe(ctd: &Containerd, ns: &str, rt: Runtime, id: &str) -> Result<Vec<(String, String)>> {
    let out = ctd
        .ctr_run_with(
            ns,
            rt,
            &[],
            id,
            &["sh", "-c", PROBE],
            Duration::from_secs(60),
        )
        .with_context(|| format!("run the probe under {}", rt.name()))?;
    if out.code != Some(0) {
        bail!(
            "the probe under {} exited with {:?}: {}{}",
            rt.name(),
            out.code,
            out.stdout,
            out.stderr
        );
    }
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// The container's pids limit, read from its cgroup on the host while it runs, and the
/// shim's report of what the policy enforced (from the bundle; none under runc).
fn pids_max(
    ctd: &Containerd,
    ns: &str,
    rt: Runtime,
    id: &str,
) -> Result<(String, Option<serde_json::Value>)> {
    let mut args = vec!["run", "-d"];
    let rt_args = rt.ctr_args();
    args.extend(rt_args.iter().map(String::as_str));
    args.extend([
        airlock_integration::IMAGE_REF,
        id,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1; done",
    ]);
    ctd.ctr_ok(Some(ns), &args)?;
    let candidates = [
        format!("/sys/fs/cgroup/pids/{ns}/{id}/pids.max"),
        format!("/sys/fs/cgroup/{ns}/{id}/pids.max"),
    ];
    let value = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "no pids cgroup found".to_string());
    let report = std::fs::read(
        ctd.state()
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
            .join(airlock_policies::REPORT_FILE),
    )
    .ok()
    .and_then(|raw| serde_json::from_slice(&raw).ok());
    ctd.ctr_ok(Some(ns), &["tasks", "kill", "-s", "KILL", id])?;
    for _ in 0..100 {
        if ctd.ctr(Some(ns), &["tasks", "rm", id])?.code == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ctd.ctr_ok(Some(ns), &["containers", "rm", id])?;
    Ok((value, report))
}

fn main() -> Result<()> {
    let ctd = Containerd::builder()
        .version(Version::V1_6)
        .start()
        .context("start a private containerd")?;
    let ns = ctd.new_namespace("demo")?;
    println!(
        "private containerd {} (pid {}) in {}",
        ctd.version().label(),
        ctd.pid(),
        ctd.dir().display()
    );
    println!(
        "Airlock binaries from {}\n",
        ctd.airlock_bin_dir().display()
    );

    let mut airlock = probe(&ctd, &ns, Runtime::Airlock, "agent-1")?;
    let mut runc = probe(&ctd, &ns, Runtime::Runc, "runc-1")?;
    let (pids, report) = pids_max(&ctd, &ns, Runtime::Airlock, "agent-2")?;
    airlock.push(("pids.max (host side)".into(), pids));
    runc.push((
        "pids.max (host side)".into(),
        pids_max(&ctd, &ns, Runtime::Runc, "runc-2")?.0,
    ));

    println!("An agent container (busybox) through containerd: what the sandbox enforced\n");
    let w = airlock.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
    let w2 = airlock
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(10)
        .max(24);
    println!(
        "| {:w$} | {:w2$} | runc defaults",
        "check", "airlock (agent-strict)"
    );
    println!("|-{:-<w$}-|-{:-<w2$}-|--------------", "", "");
    for (k, v) in &airlock {
        let r = runc
            .iter()
            .find(|(rk, _)| rk == k)
            .map(|(_, rv)| rv.as_str())
            .unwrap_or("?");
        println!("| {k:w$} | {v:w2$} | {r}");
    }
    let report = report.context(
        "the shim wrote no policy report into the container's bundle (airlock-policy.json)",
    )?;
    println!(
        "\nwhat the shim reported for it (policy {}, from the bundle's {}):",
        report["policy"].as_str().unwrap_or("?"),
        airlock_policies::REPORT_FILE
    );
    for rule in report["enforced"].as_array().into_iter().flatten() {
        println!("  - {}", rule.as_str().unwrap_or_default());
    }
    for c in report["clamped"].as_array().into_iter().flatten() {
        println!(
            "  - clamped: {} = {} ({})",
            c["field"], c["asked"], c["done"]
        );
    }
    Ok(())
}
