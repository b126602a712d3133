//! The microVM mode's guest, booted for real: `airlock vm build` makes the initramfs for
//! Debian's cloud kernel, QEMU's microvm boots it (emulated here: this node has no hardware
//! KVM), and the agent answers over the control port. Times are printed, never asserted.
//!
//! Needs qemu-system-x86, linux-image-cloud-amd64 and virtiofsd (scripts/setup.sh installs
//! them) and the static airlock-agent beside the other binaries (scripts/build.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_agent::protocol::{FromAgent, Request, Response, Stream};
use airlock_contract::ErrorKind;
use airlock_integration::airlock_bin_dir;
use airlock_policies::config::AcceleratorChoice;
use airlock_vm::accel::{self, Accelerator, Host};
use airlock_vm::{Qemu, Share, Vm, VmSpec};

const BOOT: Duration = Duration::from_secs(120);

/// Debian's cloud kernel (the newest installed).
fn kernel() -> PathBuf {
    airlock_vm::locate::cloud_kernel(Path::new("/boot"))
        .expect("no /boot/vmlinuz-*-cloud-amd64: scripts/setup.sh installs linux-image-cloud-amd64")
}

fn tool(name: &str) -> PathBuf {
    airlock_vm::locate::tool(name)
        .unwrap_or_else(|| panic!("{name} not found: scripts/setup.sh installs it"))
}

fn airlock() -> Command {
    Command::new(airlock_bin_dir().join("airlock"))
}

/// `airlock vm build` of `kernel` into `out`, with the agent beside the other binaries.
fn vm_build(kernel: &Path, out: &Path) -> std::process::Output {
    airlock()
        .args(["vm", "build", "--kernel"])
        .arg(kernel)
        .arg("--agent")
        .arg(airlock_bin_dir().join("airlock-agent"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// `airlock vm build` for the installed cloud kernel, into `dir`.
fn initramfs(dir: &Path) -> PathBuf {
    let out = dir.join("initramfs.cpio");
    let o = airlock()
        .args([
            "--config",
            "/nonexistent/airlock-test/config.toml",
            "vm",
            "build",
        ])
        .arg("--kernel")
        .arg(kernel())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    // A config path that does not exist is an error unless it is the default one.
    assert!(!o.status.success());
    let o = vm_build(&kernel(), &out);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "airlock vm build: {o:?}");
    assert!(
        said.contains("virtio_console") && said.contains("virtiofs"),
        "{said}"
    );
    println!("{}", said.trim());
    out
}

fn spec(dir: &Path, shares: Vec<Share>) -> VmSpec {
    VmSpec {
        kernel: kernel(),
        initramfs: initramfs(dir),
        vcpus: 1,
        memory_mib: 256,
        // Emulation is what this node allows (and what a test may ask for anywhere).
        accelerator: accel::select(AcceleratorChoice::Tcg, &Host::probe()).unwrap(),
        control_socket: dir.join("ctl.sock"),
        console_log: dir.join("console.log"),
        shares,
        nics: vec![],
        run_as: None,
        cgroup_procs: vec![],
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn the_guest_boots_to_its_agent_and_powers_off_when_told() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec(d.path(), vec![]);
    let qemu = Qemu::new(tool("qemu-system-x86_64"));
    let vm = Vm::boot(&qemu, &spec, &d.path().join("qemu.log"), BOOT).unwrap_or_else(|e| {
        panic!(
            "boot: {e}\nconsole: {}",
            std::fs::read_to_string(d.path().join("console.log")).unwrap_or_default()
        )
    });
    let t = vm.times.clone();
    println!(
        "accelerator {}: VMM start to agent ready {:?}; in the guest: agent started {} ms, \
         modules loaded {} ms, port open {} ms after the kernel's start",
        vm.accelerator, t.to_ready, t.ready.init_ms, t.ready.modules_ms, t.ready.port_ms
    );
    assert!(t.ready.init_ms <= t.ready.modules_ms && t.ready.modules_ms <= t.ready.port_ms);
    // QEMU runs under its own seccomp filter (-sandbox on).
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "the VMM has no seccomp filter:\n{status}"
    );
    // ... and no capabilities, nor a way to get any back.
    for line in [
        ["CapEff:", "0000000000000000"],
        ["CapPrm:", "0000000000000000"],
        ["CapBnd:", "0000000000000000"],
        ["NoNewPrivs:", "1"],
    ] {
        assert!(
            status.lines().any(|l| l.split_whitespace().eq(line)),
            "the VMM has {line:?} wrong:\n{status}"
        );
    }
    let start = Instant::now();
    match vm.call(&Request::Ping, Duration::from_secs(10)).unwrap() {
        Response::Pong { uptime_ms } => assert!(uptime_ms >= t.ready.port_ms),
        other => panic!("ping: {other:?}"),
    }
    println!("ping round trip {:?}", start.elapsed());
    // A share the VM does not have is refused by name, with a kind.
    match vm
        .call(
            &Request::Mount {
                tag: "nosuchshare".into(),
                target: "/run/nosuch".into(),
                read_only: true,
            },
            Duration::from_secs(10),
        )
        .unwrap()
    {
        Response::Error { kind, message } => {
            assert_ne!(kind, ErrorKind::AlreadyExists);
            assert!(message.contains("nosuchshare"), "{message}");
        }
        other => panic!("mount of a missing share: {other:?}"),
    }
    let pid = vm.pid();
    let status = vm.shutdown(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "the VMM ends cleanly on a guest power-off: {status}"
    );
    assert!(!alive(pid));
}

/// Runs `args` in the guest as `name` with `root` as its root; its stdout, stderr and status.
fn run_in_guest(
    vm: &Vm,
    events: &std::sync::mpsc::Receiver<FromAgent>,
    name: &str,
    args: &[&str],
) -> (String, String, u32) {
    let started = vm
        .call(
            &Request::Run {
                process: name.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                root: "/run/rootfs".into(),
                cwd: "/".into(),
                io: Default::default(),
                confine: Default::default(),
            },
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(matches!(started, Response::Started { .. }), "{started:?}");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match events.recv_timeout(Duration::from_secs(60)).unwrap() {
            FromAgent::Output {
                process,
                stream,
                data,
            } if process == name => match stream {
                Stream::Stdout => out.extend(data),
                Stream::Stderr => err.extend(data),
            },
            FromAgent::Exited { process, status } if process == name => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    String::from_utf8_lossy(&err).into_owned(),
                    status,
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn processes_run_on_a_read_only_virtio_fs_root_and_a_dropped_vm_leaves_no_process() {
    let d = tempfile::tempdir().unwrap();
    let shared = d.path().join("rootfs");
    std::fs::create_dir_all(shared.join("bin")).unwrap();
    std::fs::create_dir_all(shared.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", shared.join("bin/busybox"))
        .expect("busybox-static (scripts/setup.sh installs it)");
    std::fs::write(shared.join("etc/hostname"), "guest\n").unwrap();
    let socket = d.path().join("fs.sock");
    let mut virtiofsd = Command::new(tool("virtiofsd"))
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--readonly", "--cache", "auto", "--sandbox", "chroot"])
        .stderr(std::fs::File::create(d.path().join("virtiofsd.log")).unwrap())
        .spawn()
        .unwrap();
    let wait = Instant::now();
    while !socket.exists() && wait.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let spec = spec(
        d.path(),
        vec![Share {
            tag: "rootfs".into(),
            socket: socket.clone(),
        }],
    );
    let qemu = Qemu::new(tool("qemu-system-x86_64"));
    let booted = Vm::boot(&qemu, &spec, &d.path().join("qemu.log"), BOOT);
    let vm = match booted {
        Ok(vm) => vm,
        Err(e) => {
            let _ = virtiofsd.kill();
            let _ = virtiofsd.wait();
            panic!(
                "boot: {e}\nconsole: {}",
                std::fs::read_to_string(d.path().join("console.log")).unwrap_or_default()
            )
        }
    };
    println!(
        "with a virtio-fs share: VMM start to agent ready {:?}",
        vm.times.to_ready
    );
    let events = vm.take_events().unwrap();
    let mounted = vm.call(
        &Request::Mount {
            tag: "rootfs".into(),
            target: "/run/rootfs".into(),
            read_only: true,
        },
        Duration::from_secs(30),
    );
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(mounted.unwrap(), Response::Ok);
        let t = Instant::now();
        let (out, err, status) = run_in_guest(
            &vm,
            &events,
            "hello",
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "/bin/busybox cat /etc/hostname; echo $PATH >&2; exit 7",
            ],
        );
        println!("a process run to its exit in the guest: {:?}", t.elapsed());
        assert_eq!(
            (out.as_str(), err.as_str(), status),
            ("guest\n", "/bin\n", 7)
        );
        let (_, err, status) =
            run_in_guest(&vm, &events, "write", &["/bin/busybox", "touch", "/x"]);
        assert_ne!(status, 0);
        assert!(err.contains("Read-only file system"), "{err}");
        // A long-running process, ended by a signal sent by name.
        let started = vm
            .call(
                &Request::Run {
                    process: "sleeper".into(),
                    args: vec!["/bin/busybox".into(), "sleep".into(), "600".into()],
                    env: vec![],
                    root: "/run/rootfs".into(),
                    cwd: "/".into(),
                    io: Default::default(),
                    confine: Default::default(),
                },
                Duration::from_secs(30),
            )
            .unwrap();
        assert!(matches!(started, Response::Started { .. }), "{started:?}");
        let signalled = vm
            .call(
                &Request::Signal {
                    process: "sleeper".into(),
                    signal: libc::SIGKILL,
                },
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(signalled, Response::Ok);
        match events.recv_timeout(Duration::from_secs(60)).unwrap() {
            FromAgent::Exited { process, status } => {
                assert_eq!((process.as_str(), status), ("sleeper", 128 + 9))
            }
            other => panic!("{other:?}"),
        }
    }));
    let pid = vm.pid();
    drop(vm);
    assert!(!alive(pid), "a dropped VM's VMM is gone");
    // virtiofsd ends when its VMM goes.
    let wait = Instant::now();
    let mut ended = None;
    while wait.elapsed() < Duration::from_secs(10) {
        if let Some(s) = virtiofsd.try_wait().unwrap() {
            ended = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if ended.is_none() {
        let _ = virtiofsd.kill();
        let _ = virtiofsd.wait();
    }
    if let Err(p) = checks {
        std::panic::resume_unwind(p);
    }
    assert!(ended.is_some(), "virtiofsd did not end after its VMM");
}

#[test]
fn airlock_install_puts_a_guest_that_boots_where_the_node_config_expects_it() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("root");
    let o = airlock()
        .arg("install")
        .arg("--prefix")
        .arg(&prefix)
        .args(["--containerd-version", "2.1", "--from"])
        .arg(airlock_bin_dir())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("did: build the microVM guest"), "{said}");
    let defaults = airlock_policies::config::VmConfig::default();
    let staged = |p: &Path| prefix.join(p.strip_prefix("/").unwrap());
    let mut spec = spec(d.path(), vec![]);
    spec.kernel = staged(&defaults.kernel);
    spec.initramfs = staged(&defaults.initramfs);
    let vm = Vm::boot(
        &Qemu::new(tool("qemu-system-x86_64")),
        &spec,
        &d.path().join("qemu.log"),
        BOOT,
    )
    .unwrap();
    assert!(matches!(
        vm.call(&Request::Ping, Duration::from_secs(30)).unwrap(),
        Response::Pong { .. }
    ));
    assert!(vm.shutdown(Duration::from_secs(30)).unwrap().success());
}

#[test]
fn without_hardware_kvm_the_mode_fails_closed_unless_emulation_is_allowed() {
    let host = Host::probe();
    match host.hardware_kvm() {
        Ok(()) => assert_eq!(
            accel::select(AcceleratorChoice::Kvm, &host).unwrap(),
            Accelerator::Kvm
        ),
        Err(why) => {
            let e = accel::select(AcceleratorChoice::Kvm, &host)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&why) && e.contains("accelerator = \"auto\""),
                "{e}"
            );
            assert_eq!(
                accel::select(AcceleratorChoice::Auto, &host).unwrap(),
                Accelerator::Tcg
            );
        }
    }
}

#[test]
fn vm_build_refuses_a_file_that_is_no_kernel_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("vmlinuz"), b"not a kernel").unwrap();
    let out = d.path().join("initramfs.cpio");
    let o = vm_build(&d.path().join("vmlinuz"), &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("is not a bzImage kernel"), "{err}");
    assert!(!out.exists());
}
