//! deploy/ against real containerd: each drop-in is loaded by a private containerd (1.6 and 2.1)
//! with CRI on, which then knows the `airlock` runtime with its pod annotations and ConfigPath;
//! and the shim honours the runtime options' ConfigPath (`ctr run --runtime-config-path`, the
//! same `runtimeoptions.v1.Options` CRI sends).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_integration::containerd::{Containerd, Version};
use airlock_integration::{shared, workspace_dir, Runtime};

const T: Duration = Duration::from_secs(45);

fn dropin(file: &str) -> PathBuf {
    workspace_dir().join("deploy").join(file)
}

/// containerd `v` started with CRI on and Airlock registered the way `airlock install` does
/// (`file` imported, or for 1.x merged into config.toml) knows the runtime, and CRI still runs.
fn loads(v: Version, file: Option<&str>) {
    if !v.available() {
        eprintln!("containerd {} not installed; skipped", v.label());
        return;
    }
    let mut b = Containerd::builder().version(v).cri(true);
    b = match file {
        Some(f) => b.import(dropin(f)),
        None => b.edit_config(|t| {
            airlock_cli::install::merge_runtime(t, Path::new("config.toml"))
                .unwrap()
                .0
        }),
    };
    let ctd = b.start().unwrap();
    // The daemon's merged config, as it loaded it (same binary, same file).
    let dump = Command::new(v.bin_dir().join("containerd"))
        .arg("--config")
        .arg(ctd.dir().join("config.toml"))
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    let table = dump
        .split("\n[")
        .flat_map(|s| s.split("\n  ["))
        .find(|s| s.contains("containerd.runtimes.airlock]"))
        .unwrap_or_else(|| panic!("no airlock runtime in config dump:\n{dump}"));
    assert!(table.contains("io.containerd.airlock.v2"), "{table}");
    assert!(table.contains("airlock.dev/*"), "{table}");
    assert!(dump.contains("/etc/airlock/config.toml"), "{dump}");
    // The running daemon's CRI plugin is up and logged the runtime with the drop-in's options.
    let plugins = ctd.ctr(None, &["plugins", "ls"]).unwrap().stdout;
    let cri = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.split_whitespace().any(|w| w == "cri"))
        .unwrap_or_else(|| panic!("no CRI plugin:\n{plugins}"));
    assert!(cri.trim_end().ends_with("ok"), "CRI plugin not ok: {cri}");
    let log = ctd.log_grep("airlock.dev/*");
    assert!(
        log.contains("io.containerd.airlock.v2") && log.contains("/etc/airlock/config.toml"),
        "containerd did not log the CRI runtime config with the drop-in:\n{}",
        ctd.log_tail(30)
    );
}

/// containerd 1.6: the v2 tables merged into config.toml (what `airlock install` does there).
#[test]
fn merged_v2_containerd_1_6() {
    loads(Version::V1_6, None);
}

/// Importing the v2 file into containerd 1.6 wipes its CRI section (the trap install avoids):
/// the CRI plugin no longer loads, since the main config's default runtime `runc` is gone.
#[test]
fn imported_v2_breaks_containerd_1_6_cri() {
    let ctd = Containerd::builder()
        .version(Version::V1_6)
        .cri(true)
        .import(dropin("containerd-airlock.toml"))
        .start()
        .unwrap();
    let plugins = ctd.ctr(None, &["plugins", "ls"]).unwrap().stdout;
    assert!(
        plugins.lines().any(|l| l.contains("io.containerd.grpc.v1")
            && l.contains(" cri ")
            && l.trim_end().ends_with("error")),
        "{plugins}"
    );
}

/// containerd 2.1 merges imported tables: the v2 file (migrated) and the v3 file both work.
#[test]
fn dropin_v2_containerd_2_1() {
    loads(Version::V2_1, Some("containerd-airlock.toml"));
}

#[test]
fn dropin_v3_containerd_2_1() {
    loads(Version::V2_1, Some("containerd2-airlock.toml"));
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let f = dir.join("config.toml");
    std::fs::write(&f, body).unwrap();
    f
}

/// ConfigPath picks the node config: its handler default applies, its operator policies are
/// selectable by annotation, and a malformed one is a create error naming file and field.
fn config_path(v: Version) {
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("cfgpath").unwrap();
    let d = tempfile::tempdir().unwrap();
    let pol = d.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    std::fs::write(
        pol.join("team-rw.toml"),
        "name = \"team-rw\"\nselectable = false\n[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = false\n",
    )
    .unwrap();
    std::fs::write(
        pol.join("team-ro.toml"),
        "name = \"team-ro\"\nselectable = true\n[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = true\n",
    )
    .unwrap();
    let cfg = write_config(
        d.path(),
        &format!(
            "policies_dir = {:?}\n[handlers.airlock]\ndefault_policy = \"team-rw\"\n",
            pol.display().to_string()
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    let touch = ["sh", "-c", "touch /written || exit 2"];
    let pid = std::process::id();

    // Default of handler airlock from the config: writable rootfs (agent-strict is read-only).
    let out = ctd
        .ctr_run_with(
            &ns,
            Runtime::Airlock,
            &["--runtime-config-path", cfg_s],
            &format!("cfg-rw-{pid}"),
            &touch,
            T,
        )
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");

    // An operator policy picked by annotation.
    let out = ctd
        .ctr_run_with(
            &ns,
            Runtime::Airlock,
            &[
                "--runtime-config-path",
                cfg_s,
                "--annotation",
                "airlock.dev/policy=team-ro",
            ],
            &format!("cfg-ro-{pid}"),
            &touch,
            T,
        )
        .unwrap();
    assert_eq!(out.code, Some(2), "team-ro has a read-only rootfs: {out:?}");

    // Malformed: refused at create, naming the file, the line and the field.
    let bad = d.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let bad_cfg = write_config(&bad, "policies_dir = \"/x\"\npolicy = \"oops\"\n");
    let out = ctd
        .ctr_run_with(
            &ns,
            Runtime::Airlock,
            &["--runtime-config-path", bad_cfg.to_str().unwrap()],
            &format!("cfg-bad-{pid}"),
            &["true"],
            T,
        )
        .unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    let msg = format!("{}{}", out.stdout, out.stderr);
    assert!(
        msg.contains(bad_cfg.to_str().unwrap()) && msg.contains("line 2") && msg.contains("policy"),
        "{msg}"
    );
}

#[test]
fn config_path_v1_6() {
    config_path(Version::V1_6);
}

#[test]
fn config_path_v2_1() {
    if Version::V2_1.available() {
        config_path(Version::V2_1);
    }
}
