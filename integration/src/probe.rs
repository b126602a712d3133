//! The escape battery's probe binary (`integration/probe`), built statically so it runs in the
//! busybox image, and the parsing of its report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Where the probe is bind-mounted inside test containers.
pub const PROBE_IN_CONTAINER: &str = "/airlock-probe";

/// Builds (once per test process; cargo caches across runs) and returns the static probe.
/// It gets its own target dir, so building it never waits for the lock of the running test build.
pub fn probe_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<PathBuf> {
    let target = crate::target_dir().join("probe");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::workspace_dir())
        .args([
            "rustc",
            "--quiet",
            "--message-format=json",
            "--release",
            "-p",
            "airlock-probe",
            "--target-dir",
        ])
        .arg(&target)
        .args(["--", "-C", "target-feature=+crt-static"])
        .output()
        .context("running cargo to build airlock-probe")?;
    if !out.status.success() {
        bail!(
            "building airlock-probe statically failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Where cargo put it (`<target>/<triple>/release` with the workspace's build target).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| {
            (m["target"]["name"] == "airlock-probe")
                .then(|| m["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .context("cargo did not name the airlock-probe executable it built")
}

/// The probe's report: attempt -> outcome (`refused EPERM`, `killed SIGSYS`, `contained ..`,
/// `ALLOWED ..`).
pub fn parse_report(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, o)| (a.to_string(), o.trim().to_string()))
        .collect()
}

/// A bind mount of the probe, as an OCI spec mount.
pub fn probe_mount(probe: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "destination": PROBE_IN_CONTAINER,
        "type": "bind",
        "source": probe,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    })
}
