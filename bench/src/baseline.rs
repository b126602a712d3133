//! The floor without containerd: each OCI runtime driven directly on a bundle made from the same
//! busybox rootfs (create, start, wait, delete, as a shim would), interleaved, with private
//! `--root` dirs. The difference to the gRPC path is what containerd + the shim cost.
//!
//! It runs in a child process (`airlock-bench baseline-worker`): on a hybrid-cgroup host in a
//! private mount namespace with a tmpfs over `/sys/fs/cgroup/unified` (crun refuses the hybrid
//! layout).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Phases of the direct baseline, in sample order.
pub const PHASES: [&str; 5] = ["create", "start", "wait", "delete", "total"];

/// Samples of one runtime (ms per phase, [`PHASES`] order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub samples: Vec<[f64; 5]>,
    pub failures: usize,
    pub first_error: Option<String>,
}

/// A runtime binary and the global flags it needs.
#[derive(Debug, Clone)]
pub struct Direct {
    pub name: String,
    pub bin: PathBuf,
    pub flags: Vec<String>,
}

impl Direct {
    fn parse(s: &str) -> Result<Self> {
        let (name, bin) = s.split_once('=').context("expected NAME=BINARY")?;
        // gVisor works here only with these (ARCHITECTURE.md, "Facts measured here").
        let flags = if name == "gvisor" {
            vec!["--platform=ptrace".into(), "--network=none".into()]
        } else {
            Vec::new()
        };
        Ok(Self {
            name: name.into(),
            bin: bin.into(),
            flags,
        })
    }

    /// Runs `BIN FLAGS --root ROOT ARGS`. Its stdio is the container's (create passes it on), so
    /// it must not be a pipe we wait on: /dev/null in, files out (the workload writes nothing).
    fn run(&self, root: &Path, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.flags).arg("--root").arg(root).args(args);
        let (status, _, stderr) = crate::measure::timed(cmd, Duration::from_secs(60))?;
        if !status.success() {
            bail!("{} {args:?}: {status}: {}", self.name, stderr.trim());
        }
        Ok(())
    }
}

/// Writes a bundle running `true` over the busybox rootfs into `dir`.
pub fn make_bundle(dir: &Path) -> Result<()> {
    airlock_integration::image::unpack_rootfs(&dir.join("rootfs"))?;
    let spec_tool = ["runc", "crun"]
        .into_iter()
        .find(|b| crate::subjects::which(b).is_some())
        .context("neither runc nor crun installed (needed for `spec`)")?;
    let st = Command::new(spec_tool)
        .arg("spec")
        .current_dir(dir)
        .status()?;
    anyhow::ensure!(st.success(), "{spec_tool} spec failed");
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["process"]["args"] = serde_json::json!(["true"]);
    v["process"]["terminal"] = serde_json::json!(false);
    v["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
    std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

/// Waits for the container init to exit by polling /proc: it is not our child (it is reparented
/// to the host's init, which reaps it). Not a subreaper on purpose: gVisor's gofer would then
/// become our zombie and `runsc delete` waits for it until its deadline.
fn wait_exit(pid: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while airlock_integration::proc_util::alive(pid) {
        if Instant::now() > deadline {
            bail!("init {pid} still running after 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn one(rt: &Direct, tmp: &Path, bundle: &Path, id: &str) -> Result<[f64; 5]> {
    let root = tmp.join(format!("root-{}", rt.name));
    let pid_file = tmp.join(format!("{id}.pid"));
    let b = bundle.to_string_lossy();
    let pf = pid_file.to_string_lossy();
    let t0 = Instant::now();
    rt.run(&root, &["create", "--bundle", &b, "--pid-file", &pf, id])?;
    let t1 = Instant::now();
    let res = (|| {
        let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        rt.run(&root, &["start", id])?;
        let t2 = Instant::now();
        wait_exit(pid)?;
        Ok::<_, anyhow::Error>((t2, Instant::now()))
    })();
    if res.is_err() {
        let _ = rt.run(&root, &["delete", "--force", id]);
    }
    let (t2, t3) = res?;
    rt.run(&root, &["delete", id])?;
    let t4 = Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok([
        ms(t1 - t0),
        ms(t2 - t1),
        ms(t3 - t2),
        ms(t4 - t3),
        ms(t4 - t0),
    ])
}

/// The worker: `rounds` interleaved rounds (plus one warm-up) over `runtimes` (`NAME=BINARY`);
/// prints the series as JSON on stdout.
pub fn worker(bundle: &Path, rounds: usize, runtimes: &[String]) -> Result<()> {
    let rts: Vec<Direct> = runtimes
        .iter()
        .map(|s| Direct::parse(s))
        .collect::<Result<_>>()?;
    let tmp = tempfile::Builder::new()
        .prefix("airlock-bench-direct-")
        .tempdir()?;
    let mut series: Vec<Series> = rts
        .iter()
        .map(|r| Series {
            name: r.name.clone(),
            samples: Vec::new(),
            failures: 0,
            first_error: None,
        })
        .collect();
    for round in 0..=rounds {
        for j in crate::order::round_order(round, rts.len()) {
            let id = format!("abd-{}-{}-{round}", std::process::id(), rts[j].name);
            match one(&rts[j], tmp.path(), bundle, &id) {
                Ok(s) if round > 0 => series[j].samples.push(s),
                Ok(_) => {}
                Err(e) => {
                    series[j].failures += 1;
                    series[j]
                        .first_error
                        .get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    println!("{}", serde_json::to_string(&series)?);
    Ok(())
}

/// Runs the worker in a child (in a private mount namespace on a hybrid host) and returns its
/// series.
pub fn run(bundle: &Path, rounds: usize, runtimes: &[(String, PathBuf)]) -> Result<Vec<Series>> {
    let me = std::env::current_exe()?;
    let hybrid = airlock_integration::proc_util::is_mount_of_type(
        Path::new("/sys/fs/cgroup/unified"),
        "cgroup2",
    );
    let mut cmd = if hybrid {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=1m,mode=755 x /sys/fs/cgroup/unified && exec \"$0\" \"$@\"",
            )
            .arg(&me);
        c
    } else {
        Command::new(&me)
    };
    cmd.arg("baseline-worker")
        .arg("--bundle")
        .arg(bundle)
        .arg("--rounds")
        .arg(rounds.to_string());
    for (name, bin) in runtimes {
        cmd.arg(format!("{name}={}", bin.display()));
    }
    let out = airlock_integration::proc_util::run(cmd, Duration::from_secs(900))
        .context("run baseline worker")?;
    if !out.success() {
        bail!(
            "baseline worker failed ({:?}): {}",
            out.code,
            out.stderr.trim()
        );
    }
    serde_json::from_str(&out.stdout).context("parse baseline worker output")
}
