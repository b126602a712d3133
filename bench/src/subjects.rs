//! The runtimes under test ("subjects"), how each is selected through containerd, which are
//! installed, and their versions.

use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_integration::{Containerd, Version};

/// Annotation that picks an Airlock policy for a pod.
pub const POLICY_ANNOTATION: &str = "airlock.dev/policy";

/// One runtime configuration measured through containerd.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Label in reports (`airlock/agent-strict`, `runc`, ...).
    pub name: String,
    /// containerd runtime type (shim name).
    pub runtime_type: String,
    /// `BinaryName` for the runc.v2 shim (`--runc-binary`), if not runc.
    pub runc_binary: Option<String>,
    /// OCI annotations put on the container (the Airlock policy).
    pub annotations: Vec<(String, String)>,
    /// Whether this is Airlock (the product) rather than a peer.
    pub airlock: bool,
    /// CRI runtime handler registered for it in the harness's containerd, if any.
    pub cri_handler: Option<String>,
}

impl Subject {
    /// `ctr run` flags selecting this subject.
    pub fn ctr_args(&self) -> Vec<String> {
        let mut v = vec!["--runtime".to_string(), self.runtime_type.clone()];
        if let Some(b) = &self.runc_binary {
            v.extend(["--runc-binary".to_string(), b.clone()]);
        }
        for (k, val) in &self.annotations {
            v.extend(["--annotation".to_string(), format!("{k}={val}")]);
        }
        v
    }

    /// An OCI spec from the harness's default with the annotations added.
    pub fn spec(
        &self,
        ctd: &Containerd,
        ns: &str,
        id: &str,
        args: &[&str],
    ) -> anyhow::Result<Vec<u8>> {
        let mut spec: serde_json::Value = serde_json::from_slice(&ctd.spec(ns, id, args)?)?;
        for (k, v) in &self.annotations {
            spec["annotations"][k] = serde_json::Value::String(v.clone());
        }
        Ok(serde_json::to_vec(&spec)?)
    }
}

/// Whether `bin` is an executable file on PATH (or an existing absolute path).
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.starts_with('/') {
        return Path::new(bin).is_file().then(|| PathBuf::from(bin));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|c| c.is_file())
    })
}

/// The subjects this machine can run, in the interleaving order, and one line per skipped one.
pub fn detect(ctd: &Containerd, policies: &[String]) -> (Vec<Subject>, Vec<String>) {
    let mut v = Vec::new();
    let mut skipped = Vec::new();
    for p in policies {
        v.push(Subject {
            name: format!("airlock/{p}"),
            runtime_type: "io.containerd.airlock.v2".into(),
            runc_binary: None,
            annotations: vec![(POLICY_ANNOTATION.into(), p.clone())],
            airlock: true,
            cri_handler: Some("airlock".into()),
        });
    }
    // The CRI handlers are the runtimes `Containerd::config` registers.
    let peer = |name: &str, rt: &str, bin: Option<String>, handler: Option<&str>| Subject {
        name: name.into(),
        runtime_type: rt.into(),
        runc_binary: bin,
        annotations: Vec::new(),
        airlock: false,
        cri_handler: handler.map(String::from),
    };
    match which("runc") {
        Some(_) => v.push(peer("runc", "io.containerd.runc.v2", None, Some("runc"))),
        None => skipped.push("runc: `runc` is not installed".to_string()),
    }
    match which("crun") {
        Some(_) => v.push(peer(
            "crun",
            "io.containerd.runc.v2",
            Some("crun".into()),
            Some("crun"),
        )),
        None => skipped.push("crun: `crun` is not installed".to_string()),
    }
    // containerd/rust-extensions' runc shim: the closest peer (a Rust shim around runc).
    match (which("runc"), which("containerd-shim-runc-v2-rs")) {
        // Its 0.2 release answers `start` with the JSON bootstrap of task API v3, which only
        // containerd >= 2.0 parses (1.6: "dial unix {...}: invalid argument").
        (Some(_), Some(_)) if ctd.version() == Version::V1_6 => skipped.push(
            "runc-v2-rs: containerd-shim-runc-v2-rs 0.2 needs containerd >= 2.0 (try --containerd 2.1)"
                .to_string(),
        ),
        (Some(_), Some(_)) => v.push(peer(
            "runc-v2-rs",
            "io.containerd.runc.v2-rs",
            None,
            Some("runc-v2-rs"),
        )),
        _ => skipped.push(
            "runc-v2-rs: `containerd-shim-runc-v2-rs` is not on PATH (cargo install containerd-runc-shim)"
                .to_string(),
        ),
    }
    match ctd.runsc_wrapper() {
        Some(w) => v.push(peer(
            "gvisor",
            "io.containerd.runc.v2",
            Some(w.to_string_lossy().into_owned()),
            Some("runsc"),
        )),
        None => skipped.push("gvisor: `runsc` is not installed".to_string()),
    }
    skipped.push(
        "airlock-vm in the interleaved rounds, gRPC phases and CRI: measured in its own section (ctr run, one pod's memory, a burst, CRI pod ready) only"
            .to_string(),
    );
    (v, skipped)
}

/// First line of `bin ARGS` (stdout, else stderr), or "not installed".
pub fn version_of(bin: &Path, args: &[&str]) -> String {
    match Command::new(bin).args(args).output() {
        Ok(o) => {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            first_version_line(&String::from_utf8_lossy(&s))
        }
        Err(_) => "not installed".into(),
    }
}

/// The first line of a `--version` output, joined with the next when it only names the binary
/// (`containerd-shim-runc-v2:` / `Version: 1.6.20`).
fn first_version_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut first = lines.next().unwrap_or("").to_string();
    // `/path/to/containerd-shim-x:` -> `containerd-shim-x:`
    if first.ends_with(':') {
        if let Some((_, name)) = first.rsplit_once('/') {
            first = name.to_string();
        }
    }
    let line = match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => format!("{first} {next}"),
        _ => first,
    };
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Versions of every runtime and of containerd.
pub fn versions(ctd: &Containerd) -> Vec<(String, String)> {
    let mut v = vec![(
        "containerd".to_string(),
        version_of(&ctd.ctr_path().with_file_name("containerd"), &["--version"]),
    )];
    let airlock = ctd.airlock_bin_dir().join("containerd-shim-airlock-v2");
    v.push(("airlock".into(), version_of(&airlock, &["-v"])));
    for (name, bin) in [
        ("runc", "runc"),
        ("crun", "crun"),
        ("runsc", "runsc"),
        ("runc-v2-rs", "containerd-shim-runc-v2-rs"),
    ] {
        let ver = match which(bin) {
            Some(p) if name == "runc-v2-rs" => version_of(&p, &["-v"]),
            Some(p) => version_of(&p, &["--version"]),
            None => "not installed".into(),
        };
        v.push((name.to_string(), ver));
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_lines() {
        assert_eq!(
            super::first_version_line("/usr/bin/shim:\n  Version:  1.6.20\n  Revision: x\n"),
            "shim: Version: 1.6.20"
        );
        assert_eq!(
            super::first_version_line("runc version 1.1.5\ncommit: y\n"),
            "runc version 1.1.5"
        );
    }
}
