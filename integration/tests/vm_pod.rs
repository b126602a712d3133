//! Containers in the microVM mode through a real containerd (1.6 and 2.1): runtime
//! `io.containerd.airlock-vm.v2` (the shim under the name `containerd-shim-airlock-vm-v2`),
//! with a node config given through `--runtime-config-path` that allows emulation, since this
//! node has no hardware KVM. Fail closed: with the default config (`accelerator = "kvm"`) on a
//! node without hardware KVM, the create fails and nothing runs.

use std::path::Path;
use std::time::Duration;

use airlock_integration::{Containerd, Version, IMAGE_REF};

const RUNTIME: &str = "io.containerd.airlock-vm.v2";

/// A node config that allows emulation (or, with "kvm", does not).
fn config(dir: &Path, accelerator: &str) -> std::path::PathBuf {
    airlock_integration::vm::node_config(dir, &airlock_integration::airlock_bin_dir(), accelerator)
        .expect("node config")
}

/// `ctr run MODE --runtime <the VM mode> --runtime-config-path CFG IMAGE ID ARGS..`.
fn ctr_run(
    ctd: &Containerd,
    ns: &str,
    mode: &[&str],
    cfg: &Path,
    id: &str,
    args: &[&str],
) -> airlock_integration::proc_util::Output {
    let cfg = cfg.to_str().unwrap();
    let mut all = vec!["run"];
    all.extend(mode);
    all.extend(["--runtime", RUNTIME, "--runtime-config-path", cfg]);
    all.extend([IMAGE_REF, id]);
    all.extend(args);
    ctd.ctr_timeout(Some(ns), &all, Duration::from_secs(180))
        .unwrap()
}

/// `ctr run --rm` with `input` on its stdin (to the container's stdin, then its end).
fn run_with_input(
    ctd: &Containerd,
    ns: &str,
    cfg: &Path,
    id: &str,
    args: &[&str],
    input: &str,
) -> (Option<i32>, String) {
    use std::io::Read;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), input).unwrap();
    let mut cmd = ctd.ctr_command(Some(ns));
    cmd.args(["run", "--rm", "--runtime", RUNTIME, "--runtime-config-path"])
        .arg(cfg)
        .args([IMAGE_REF, id])
        .args(args)
        .stdin(std::fs::File::open(file.path()).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("ctr run {id} with input did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.code(), out)
}

fn run(
    ctd: &Containerd,
    ns: &str,
    cfg: &Path,
    id: &str,
    args: &[&str],
) -> airlock_integration::proc_util::Output {
    ctr_run(ctd, ns, &["--rm"], cfg, id, args)
}

/// `ctr run -d` of a container that sleeps.
fn run_detached(ctd: &Containerd, ns: &str, cfg: &Path, id: &str) {
    let out = ctr_run(ctd, ns, &["-d"], cfg, id, &["sleep", "600"]);
    assert!(out.success(), "ctr run -d {id}: {out:?}");
}

/// Kills container `id` and removes its task and the container (its task may take a moment
/// to stop, or to be noticed gone with its shim).
fn remove(ctd: &Containerd, ns: &str, id: &str) {
    airlock_integration::vm::remove_container(ctd, ns, id).unwrap();
}

fn vm_processes() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("/run/airlock/vm/") {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

fn containers_run_in_a_vm(v: Version) {
    // One version at a time: the leak checks look at every VM on the node.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let ctd = Containerd::builder().version(v).start().unwrap();
    let ns = ctd.new_namespace("vm").unwrap();
    let d = tempfile::tempdir().unwrap();
    let allow = config(d.path(), "tcg");
    let out = run(
        &ctd,
        &ns,
        &allow,
        "vm-hello",
        &[
            "sh",
            "-c",
            "echo hello from the guest; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.code, Some(3), "{out:?}\n{}", ctd.log_tail(40));
    assert!(out.stdout.contains("hello from the guest"), "{out:?}");
    assert!(out.stderr.contains("oops"), "{out:?}");
    // The kernel in the container's view is the guest's, not the host's.
    let out = run(&ctd, &ns, &allow, "vm-uname", &["busybox", "uname", "-r"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        out.stdout.trim(),
        host.trim(),
        "ran on the host kernel: {out:?}"
    );
    assert!(out.stdout.contains("cloud-amd64"), "{out:?}");
    // agent-strict: a read-only rootfs in the guest too.
    let out = run(&ctd, &ns, &allow, "vm-write", &["touch", "/written"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    // The policy inside the guest too: PID 1 of its own PID namespace, seeing only its own
    // processes, in its own guest cgroup, no capabilities, no_new_privs, the policy's
    // seccomp filter (unshare is refused).
    let out = run(
        &ctd,
        &ns,
        &allow,
        "vm-confined",
        &[
            "sh",
            "-c",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; echo pid=$$; \
             echo procs=$(ls /proc | grep -c '^[0-9]'); cat /proc/self/cgroup; \
             unshare -m true; echo unshare=$?; \
             (echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null; echo procsys=$?; \
             echo cmdline=$(cat /proc/cmdline); echo sid=$(cut -d' ' -f6 /proc/self/stat); \
             echo null=$(stat -c %a /dev/null)",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}\n{}", ctd.log_tail(40));
    for line in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "pid=1",
        "0::/vm-confined",
        // /proc/sys read-only, /proc/cmdline masked (agent-strict), a session of its own,
        // device nodes with their modes.
        "procsys=1",
        "cmdline=",
        "sid=1",
        "null=666",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no {line:?} in {out:?}"
        );
    }
    let procs: u32 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(procs <= 4, "sees the guest's other processes: {out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("unshare=") && l != "unshare=0"),
        "{out:?}"
    );
    // Its memory limit holds in the guest: 64 MiB of buffer under a 32 MiB limit is killed.
    let dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
    let limited = ["--rm", "--memory-limit", "33554432"];
    let out = ctr_run(&ctd, &ns, &limited, &allow, "vm-oom", &dd);
    assert_eq!(out.code, Some(137), "{out:?}");
    // The agent reported the OOM kill (the core publishes TaskOOM before TaskExit).
    let log = ctd.log_grep("vm-oom");
    assert!(log.contains("OOM kill in the container's cgroup"), "{log}");
    let out = run(&ctd, &ns, &allow, "vm-no-oom", &dd);
    assert_eq!(out.code, Some(0), "{out:?}");
    // stdin reaches the container, and its end closes the container's stdin.
    let (code, out) = run_with_input(
        &ctd,
        &ns,
        &allow,
        "vm-stdin",
        &[
            "sh",
            "-c",
            "while read l; do echo \"got $l\"; done; echo eof",
        ],
        "hello\nworld\n",
    );
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "got hello\ngot world\neof\n")
    );
    // A terminal (`ctr run -t`, which needs one of its own: `script` gives it one, 40 x 100):
    // stdin is a tty, ctr's ResizePty reaches the guest's pty, the exit code comes back.
    let mut words: Vec<String> = {
        let ctr = ctd.ctr_command(Some(&ns));
        std::iter::once(ctr.get_program())
            .chain(ctr.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    words.extend(
        [
            "run",
            "-t",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
        ]
        .map(String::from),
    );
    words.push(allow.to_string_lossy().into_owned());
    words.extend(
        [
            IMAGE_REF,
            "vm-tty",
            "sh",
            "-c",
            // ctr resizes right after Start, racing the first `stty size`: poll.
            "[ -t 0 ] && echo is-a-tty; for i in $(seq 100); do s=$(stty size 2>/dev/null); [ \"$s\" = \"40 100\" ] && break; usleep 100000; done; echo size=$s; exit 5",
        ]
        .map(String::from),
    );
    let out =
        airlock_integration::proc_util::run_in_terminal(&words, 40, 100, Duration::from_secs(180))
            .unwrap();
    assert_eq!(out.code, Some(5), "{out:?}\n{}", ctd.log_tail(30));
    assert!(out.stdout.contains("is-a-tty"), "{out:?}");
    assert!(out.stdout.contains("size=40 100"), "{out:?}");
    // A long-running container: an exec runs beside it in the same guest, then a kill ends it.
    run_detached(&ctd, &ns, &allow, "vm-long");
    let out = ctd
        .ctr(
            Some(&ns),
            &[
                "task",
                "exec",
                "--exec-id",
                "e1",
                "vm-long",
                "sh",
                "-c",
                "echo beside; busybox uname -r",
            ],
        )
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("beside") && out.stdout.contains("cloud-amd64"),
        "{out:?}"
    );
    // Pause and resume freeze the guest cgroup; Pids and Stats read it.
    let status = |ctd: &Containerd| {
        let ls = ctd.ctr(Some(&ns), &["task", "ls"]).unwrap().stdout;
        ls.lines()
            .find(|l| l.starts_with("vm-long "))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    ctd.ctr_ok(Some(&ns), &["task", "pause", "vm-long"])
        .unwrap();
    assert_eq!(status(&ctd), "PAUSED");
    ctd.ctr_ok(Some(&ns), &["task", "resume", "vm-long"])
        .unwrap();
    assert_eq!(status(&ctd), "RUNNING");
    let ps = ctd.ctr(Some(&ns), &["task", "ps", "vm-long"]).unwrap();
    assert!(ps.success(), "{ps:?}");
    assert!(
        ps.stdout.lines().skip(1).any(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|p| p.parse::<u32>().is_ok())),
        "{ps:?}"
    );
    let metrics = ctd.ctr(Some(&ns), &["task", "metrics", "vm-long"]).unwrap();
    assert!(
        metrics.success() && metrics.stdout.contains("pids"),
        "{metrics:?}"
    );
    // Task.Update sets the guest cgroup's limits; an exec is held to them.
    airlock_integration::test_rt()
        .block_on(async {
            let memory = r#"{"memory":{"limit":33554432}}"#;
            ctd.client().await?.update(&ns, "vm-long", memory).await
        })
        .unwrap();
    let mut exec_dd = vec!["task", "exec", "--exec-id", "e2", "vm-long"];
    exec_dd.extend(dd);
    let out = ctd.ctr(Some(&ns), &exec_dd).unwrap();
    assert_eq!(out.code, Some(137), "{out:?}");
    ctd.ctr_ok(Some(&ns), &["task", "kill", "-s", "KILL", "vm-long"])
        .unwrap();
    remove(&ctd, &ns, "vm-long");
    // The shim killed with its VM running: the VMM and virtiofsd die with it, and the
    // cleanup containerd runs after it (`shim delete`) unbinds the rootfs from the share and
    // removes the VM's directory.
    run_detached(&ctd, &ns, &allow, "vm-kill9");
    let shim = ctd
        .shims()
        .into_iter()
        .find(|s| s.id == "vm-kill9" && s.binary.ends_with("containerd-shim-airlock-vm-v2"))
        .expect("the VM shim of vm-kill9");
    // The VMM runs as a uid of the pod's own, from the node's id pool, not as root.
    let qemu = airlock_integration::proc_util::descendants(shim.pid)
        .into_iter()
        .find(|p| {
            airlock_integration::proc_util::cmdline(*p)
                .first()
                .is_some_and(|a| a.contains("qemu-system"))
        })
        .expect("the VMM of vm-kill9");
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    for key in ["Uid:", "Gid:"] {
        let v = ids(key);
        assert!(
            v.iter().all(|id| *id == v[0] && *id >= 1 << 30),
            "the VMM's {key} {v:?}"
        );
    }
    // The VMM is in the pod's host cgroup (the container's cgroupsPath), with a memory limit
    // of the guest's RAM plus the VMM's allowance.
    let cgroups = std::fs::read_to_string(format!("/proc/{qemu}/cgroup")).unwrap();
    let memory = cgroups
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            (controllers == "memory" || controllers.is_empty()).then(|| path.to_string())
        })
        .filter(|p| p.ends_with("/vm-kill9"))
        .unwrap_or_else(|| panic!("the VMM's cgroups: {cgroups}"));
    let limit_file = ["memory/", ""]
        .iter()
        .map(|h| format!("/sys/fs/cgroup/{h}{}", memory.trim_start_matches('/')))
        .find_map(|d| {
            std::fs::read_to_string(format!("{d}/memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(format!("{d}/memory.max")))
                .ok()
        })
        .expect("the VMM's memory limit");
    assert_eq!(limit_file.trim(), ((256 + 160) << 20).to_string());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    remove(&ctd, &ns, "vm-kill9");
    // Fail closed: the default accelerator (hardware KVM only) on a node without it.
    if airlock_vm::accel::Host::probe().hardware_kvm().is_err() {
        let closed = config(d.path(), "kvm");
        let out = run(&ctd, &ns, &closed, "vm-closed", &["true"]);
        assert_ne!(out.code, Some(0), "{out:?}");
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains("needs hardware KVM"), "{said}");
    }
    let left = vm_processes();
    assert!(left.is_empty(), "left running: {left:#?}");
    let dirs: Vec<_> = std::fs::read_dir("/run/airlock/vm")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "VM directories left: {dirs:?}");
}

#[test]
fn containers_run_in_a_vm_v1_6() {
    containers_run_in_a_vm(Version::V1_6)
}

#[test]
fn containers_run_in_a_vm_v2_1() {
    containers_run_in_a_vm(Version::V2_1)
}
