//! The escape battery: what a hostile agent tries from inside its sandbox, run by the static
//! `airlock-probe` (integration/probe) under each built-in agent policy, from the init and
//! from an exec'd process, next to runc with containerd's default seccomp profile.
//!
//! Airlock must refuse every attempt (an errno, a kill, or a "contained" outcome that reaches
//! nothing outside); runc's column is recorded for the comparison table, never asserted. The
//! table is printed (`--nocapture`) and written to `target/escape-battery.md`.
//!
//! Fork and memory bombs need real cgroup limits: they run in the cgroup v2 test node
//! (tests/cgroupv2.rs). The host stays unchanged: every attempt either fails or, as under
//! runc, acts inside the container's own namespaces.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_integration::containerd::{Containerd, Version};
use airlock_integration::probe::{parse_report, probe_binary, PROBE_IN_CONTAINER};
use airlock_integration::{shared, Runtime};

const T: Duration = Duration::from_secs(90);

type Report = BTreeMap<String, String>;

/// A rootfs with the image's busybox and the probe at [`PROBE_IN_CONTAINER`]: agent-strict lets
/// a container bind no host path, so the probe comes in the rootfs (`ctr run --rootfs`).
fn probe_rootfs() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    airlock_integration::image::unpack_rootfs(root.path()).unwrap();
    let probe = probe_binary().expect("static probe builds");
    let dst = root.path().join(PROBE_IN_CONTAINER.trim_start_matches('/'));
    std::fs::copy(&probe, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// Runs the probe as the container's init.
fn run_probe(
    ctd: &Containerd,
    ns: &str,
    runtime: Runtime,
    extra: &[&str],
    id: &str,
    rootfs: &std::path::Path,
) -> Report {
    let rootfs = rootfs.to_string_lossy();
    // `--rootfs` is a flag: the rootfs path stands where the image would, after every option.
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["--rootfs", &rootfs]);
    let out = ctd
        .ctr_run_with(ns, runtime, &args, id, &[PROBE_IN_CONTAINER], T)
        .expect("ctr run");
    assert!(
        out.success(),
        "probe under {runtime:?} {extra:?} failed: {out:?}"
    );
    let report = parse_report(&out.stdout);
    assert!(report.len() >= 25, "probe report too short: {out:?}");
    report
}

/// Runs the probe with `ctr task exec` in a running airlock container.
fn exec_probe(ctd: &Containerd, ns: &str, id: &str, rootfs: &std::path::Path) -> Report {
    let rootfs = rootfs.to_string_lossy();
    let init = ctd
        .ctr_run_spawn(
            ns,
            Runtime::Airlock,
            &["--rootfs", &rootfs],
            id,
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            ],
        )
        .expect("start container");
    let mut report = Report::new();
    for _ in 0..100 {
        let out = ctd
            .ctr_timeout(
                Some(ns),
                &["task", "exec", "--exec-id", "probe", id, PROBE_IN_CONTAINER],
                T,
            )
            .expect("ctr task exec");
        if out.success() {
            report = parse_report(&out.stdout);
            break;
        }
        // The task may not be running yet.
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctd.ctr(Some(ns), &["task", "kill", id]);
    let _ = init.wait(Duration::from_secs(20));
    assert!(report.len() >= 25, "exec'd probe gave no report");
    report
}

/// Whether the host's kernel has `vm.memfd_noexec` (Linux >= 6.3), which refuses an
/// executable memfd.
fn host_has_memfd_noexec() -> bool {
    std::path::Path::new("/proc/sys/vm/memfd_noexec").exists()
}

/// `memfd_noexec`: whether the kernel the probe ran on has `vm.memfd_noexec`.
fn refused(report: &Report, what: &str, policy_tmp_mib: usize, memfd_noexec: bool) {
    let mut failures = Vec::new();
    for (attempt, outcome) in report {
        if outcome.starts_with("ALLOWED") || outcome.starts_with("error") {
            failures.push(format!("{attempt}: {outcome}"));
        }
    }
    for (attempt, want) in [
        // Seccomp specifics: the call must be stopped by the filter, not by a missing capability.
        ("x32_syscall", "killed SIGSYS"),
        ("i386_int80", "killed SIGSYS"),
        ("unshare_user", "refused EPERM"),
        ("clone_newuser", "refused EPERM"),
        ("keyctl_join_session", "refused EPERM"),
        ("io_uring_setup", "refused EPERM"),
        ("userfaultfd", "refused EPERM"),
        ("ptrace_attach", "refused EPERM"),
        ("vsock_socket", "refused EPERM"),
        ("setuid_binary_nnp", "contained no_new_privs=1"),
        ("host_pid1_root", "contained"),
    ] {
        match report.get(attempt) {
            Some(o) if o.starts_with(want) => {}
            other => failures.push(format!("{attempt}: want {want:?}, got {other:?}")),
        }
    }
    // An executable memfd: refused where the kernel can (vm.memfd_noexec, Linux >= 6.3).
    if memfd_noexec {
        match report.get("memfd_exec") {
            Some(o) if o.starts_with("refused") => {}
            other => failures.push(format!("memfd_exec: want refused, got {other:?}")),
        }
    }
    match report
        .get("fill_tmp")
        .and_then(|o| o.strip_prefix("refused ENOSPC after "))
    {
        Some(rest) => {
            let mib: usize = rest.trim_end_matches(" MiB").parse().unwrap_or(usize::MAX);
            if mib > policy_tmp_mib {
                failures.push(format!(
                    "fill_tmp: {mib} MiB written, limit {policy_tmp_mib}"
                ));
            }
        }
        None => failures.push(format!("fill_tmp: {:?}", report.get("fill_tmp"))),
    }
    assert!(
        failures.is_empty(),
        "{what}: the sandbox let these through:\n{}",
        failures.join("\n")
    );
}

fn table(columns: &[(&str, &Report)]) -> String {
    let mut s = String::from("| attempt |");
    for (name, _) in columns {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(columns.len()));
    s.push('\n');
    for attempt in columns[0].1.keys() {
        s.push_str(&format!("| {attempt} |"));
        for (_, r) in columns {
            s.push_str(&format!(
                " {} |",
                r.get(attempt).map_or("-", String::as_str)
            ));
        }
        s.push('\n');
    }
    s
}

#[test]
fn escape_battery() {
    let v = Version::V1_6;
    let ctd = shared(v).unwrap();
    let ns = ctd.new_namespace("escape").unwrap();
    let id = |s: &str| format!("esc-{s}-{}", std::process::id());

    let root = probe_rootfs();
    let rootfs = root.path();
    let strict = run_probe(&ctd, &ns, Runtime::Airlock, &[], &id("strict"), rootfs);
    let default = run_probe(
        &ctd,
        &ns,
        Runtime::Airlock,
        &["--annotation", "airlock.dev/policy=agent-default"],
        &id("default"),
        rootfs,
    );
    let exec = exec_probe(&ctd, &ns, &id("exec"), rootfs);
    let runc = run_probe(
        &ctd,
        &ns,
        Runtime::Runc,
        &["--seccomp"],
        &id("runc"),
        rootfs,
    );

    let md = table(&[
        ("airlock agent-strict", &strict),
        ("airlock agent-strict, exec", &exec),
        ("airlock agent-default", &default),
        ("runc + containerd default seccomp", &runc),
    ]);
    println!("{md}");
    let _ = std::fs::write(
        airlock_integration::target_dir().join("escape-battery.md"),
        &md,
    );

    let memfd_noexec = host_has_memfd_noexec();
    refused(&strict, "agent-strict", 64, memfd_noexec);
    refused(&exec, "agent-strict exec", 64, memfd_noexec);
    refused(&default, "agent-default", 256, memfd_noexec);
}

/// The battery inside a container of the microVM mode (emulated: this node has no hardware
/// KVM): the guest's agent confines it with the same policy, so the same attempts fail.
#[test]
fn escape_battery_in_a_vm() {
    let ctd = shared(Version::V2_1).unwrap();
    let ns = ctd.new_namespace("escape-vm").unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = airlock_integration::vm::node_config(
        d.path(),
        &airlock_integration::airlock_bin_dir(),
        "tcg",
    )
    .expect("node config");
    let root = probe_rootfs();
    let id = format!("esc-vm-{}", std::process::id());
    let (cfg, rootfs) = (cfg.to_string_lossy(), root.path().to_string_lossy());
    let out = ctd
        .ctr_timeout(
            Some(&ns),
            &[
                "run",
                "--rm",
                "--runtime",
                "io.containerd.airlock-vm.v2",
                "--runtime-config-path",
                &cfg,
                "--rootfs",
                &rootfs,
                &id,
                PROBE_IN_CONTAINER,
            ],
            T,
        )
        .expect("ctr run");
    assert!(out.success(), "probe in a VM failed: {out:?}");
    let report = parse_report(&out.stdout);
    println!("{}", table(&[("airlock-vm agent-strict", &report)]));
    // The guest's kernel (Debian 12's cloud kernel, 6.1) has no vm.memfd_noexec.
    let guest_memfd_noexec = report
        .get("memfd_exec")
        .is_none_or(|o| !o.contains("no vm.memfd_noexec"));
    refused(&report, "agent-strict in a VM", 64, guest_memfd_noexec);
}
