//! `airlock doctor`: is this node ready for Airlock? One line per check: ok, warn (works, with
//! less), or missing (an essential is absent: creates would fail). Every non-ok line says what
//! to do. Reads `/proc` and `/sys` under a root directory, so tests run on a fake tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_policies::config::{self, DEFAULT_CONFIG_PATH};

mod block_io;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Missing,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do (empty when ok).
    pub fix: String,
}

impl Check {
    fn new(
        name: &'static str,
        status: Status,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            name,
            status,
            found: found.into(),
            fix: fix.into(),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok     ",
            Status::Warn => "warn   ",
            Status::Missing => "missing",
        };
        write!(f, "{tag} {:<18} {}", self.name, self.found)?;
        if !self.fix.is_empty() {
            write!(f, "\n        {:<18} -> {}", "", self.fix)?;
        }
        Ok(())
    }
}

/// Where doctor looks.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Prefix of `/proc`, `/sys`, `/dev` (`/` on a real node).
    pub root: PathBuf,
    /// Directories searched for the shim and runtime binaries.
    pub path: Vec<PathBuf>,
    /// The containerd binary (`None`: not found).
    pub containerd: Option<PathBuf>,
    pub containerd_config: PathBuf,
    pub airlock_config: PathBuf,
    /// Probe syscalls of the running kernel (off in tests with a fake root).
    pub syscalls: bool,
}

impl Probe {
    /// This node, with the given containerd config and the current `PATH`.
    pub fn host(containerd_config: PathBuf, airlock_config: PathBuf) -> Self {
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/local/bin", "/usr/bin"] {
            if !path.iter().any(|p| p == Path::new(d)) {
                path.push(d.into());
            }
        }
        let containerd = find_in(&path, "containerd");
        Probe {
            root: PathBuf::from("/"),
            path,
            containerd,
            containerd_config,
            airlock_config,
            syscalls: true,
        }
    }

    fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(p.trim_start_matches('/')))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

pub fn find_in(path: &[PathBuf], name: &str) -> Option<PathBuf> {
    path.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Run every check.
pub fn run(p: &Probe) -> Vec<Check> {
    let mut v = vec![
        kernel(p),
        userns(p),
        cgroups(p),
        cgroup_attach(p),
        block_io::block_io(p),
        seccomp(p),
        idmap(p),
        kvm(p),
    ];
    for bin in ["containerd-shim-airlock-v2", "airlock-runtime"] {
        v.push(binary(p, bin));
    }
    v.extend(containerd(p));
    v.push(airlock_config(p));
    v
}

/// Exit status: 1 if an essential is missing.
pub fn exit_code(checks: &[Check]) -> i32 {
    i32::from(checks.iter().any(|c| c.status == Status::Missing))
}

fn kernel_version(p: &Probe) -> Option<(u32, u32)> {
    let r = p.read("/proc/sys/kernel/osrelease")?;
    let mut it = r.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel(p: &Probe) -> Check {
    let rel = p.read("/proc/sys/kernel/osrelease").unwrap_or_default();
    match kernel_version(p) {
        Some(v) if v >= (5, 3) => Check::new("kernel", Status::Ok, rel, ""),
        Some(_) => Check::new(
            "kernel",
            Status::Missing,
            rel,
            "the shim waits for exits with pidfds (Linux >= 5.3): upgrade the kernel",
        ),
        None => Check::new(
            "kernel",
            Status::Missing,
            "unknown",
            "cannot read /proc/sys/kernel/osrelease",
        ),
    }
}

fn userns(p: &Probe) -> Check {
    let max = p.read("/proc/sys/user/max_user_namespaces");
    let unpriv = p
        .read("/proc/sys/kernel/unprivileged_userns_clone")
        .map(|v| if v == "1" { "allowed" } else { "disabled" })
        .unwrap_or("allowed (no sysctl)");
    match max.as_deref().and_then(|m| m.parse::<u64>().ok()) {
        Some(n) if n > 0 => Check::new(
            "user namespaces",
            Status::Ok,
            format!(
                "max_user_namespaces={n}, unprivileged {unpriv} (not needed: the shim is root)"
            ),
            "",
        ),
        Some(_) => Check::new(
            "user namespaces",
            Status::Warn,
            "max_user_namespaces=0",
            "policies with a user namespace cannot start: sysctl -w user.max_user_namespaces=15000",
        ),
        None => Check::new(
            "user namespaces",
            Status::Warn,
            "not supported by this kernel",
            "build the kernel with CONFIG_USER_NS for user-namespaced policies",
        ),
    }
}

/// Field `field` of the last `/proc/self/mounts` line for the mount point `at` (2: the
/// filesystem type, 3: the mount options).
fn mount_field(p: &Probe, at: &str, field: usize) -> Option<String> {
    let mounts = p.read("/proc/self/mounts")?;
    mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > field && f[1] == at).then(|| f[field].to_string())
    })
}

fn mount_type(p: &Probe, at: &str) -> Option<String> {
    mount_field(p, at, 2)
}

fn cgroups(p: &Probe) -> Check {
    let top = mount_type(p, "/sys/fs/cgroup");
    let unified = mount_type(p, "/sys/fs/cgroup/unified");
    match (top.as_deref(), unified.as_deref()) {
        (Some("cgroup2"), _) => {
            let ctl = p.read("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
            let missing: Vec<&str> = ["cpu", "memory", "pids"]
                .into_iter()
                .filter(|c| !ctl.split_whitespace().any(|x| x == *c))
                .collect();
            if missing.is_empty() {
                Check::new("cgroups", Status::Ok, format!("v2 (unified), controllers: {ctl}"), "")
            } else {
                Check::new(
                    "cgroups",
                    Status::Warn,
                    format!("v2, controllers: {ctl}"),
                    format!("limits need the {} controller(s): enable them in the root cgroup.subtree_control", missing.join(", ")),
                )
            }
        }
        (_, Some("cgroup2")) => Check::new(
            "cgroups",
            Status::Warn,
            "hybrid (v1 controllers, v2 without controllers)",
            "works with the v1 manager; OOM events and device rules are best on a pure v2 node (systemd.unified_cgroup_hierarchy=1)",
        ),
        (Some(_), _) | (None, Some(_)) => Check::new(
            "cgroups",
            Status::Warn,
            "v1 (legacy)",
            "works with the v1 manager; boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2",
        ),
        (None, None) => Check::new(
            "cgroups",
            Status::Missing,
            "no cgroup filesystem at /sys/fs/cgroup",
            "mount cgroup2 at /sys/fs/cgroup",
        ),
    }
}

/// Whether moving a process into a cgroup waits for an RCU grace period. Without cgroup2's
/// `favordynmods` (Linux >= 6.0), the first migration after a quiet spell waits one (7-16 ms
/// measured here): in every container start and exec, for every runtime.
fn cgroup_attach(p: &Probe) -> Check {
    const NAME: &str = "cgroup attach";
    if mount_type(p, "/sys/fs/cgroup").as_deref() != Some("cgroup2") {
        return Check::new(
            NAME,
            Status::Ok,
            "not a cgroup v2 node (favordynmods does not apply); the shim keeps the attach fast",
            "",
        );
    }
    let opts = mount_field(p, "/sys/fs/cgroup", 3).unwrap_or_default();
    if opts.split(',').any(|o| o == "favordynmods") {
        return Check::new(NAME, Status::Ok, "favordynmods: no grace-period wait", "");
    }
    match kernel_version(p) {
        Some(v) if v >= (6, 0) => Check::new(
            NAME,
            Status::Warn,
            "cgroup2 without favordynmods: a start's first cgroup move can wait for an RCU grace period (7-16 ms measured); the shim hides most of it during its own requests",
            "for the fastest starts of every runtime: mount -o remount,favordynmods /sys/fs/cgroup (or boot with cgroup_favordynmods=true); it makes fork and exit a little slower node-wide",
        ),
        _ => Check::new(
            NAME,
            Status::Ok,
            "kernel before 6.0 has no favordynmods; the shim keeps the attach fast",
            "",
        ),
    }
}

fn seccomp(p: &Probe) -> Check {
    match p.read("/proc/sys/kernel/seccomp/actions_avail") {
        Some(a) if a.split_whitespace().any(|x| x == "errno") => {
            Check::new("seccomp", Status::Ok, format!("actions: {a}"), "")
        }
        Some(a) => Check::new(
            "seccomp",
            Status::Warn,
            format!("actions: {a}"),
            "the kernel lacks SECCOMP_RET_ERRNO: seccomp policies cannot be enforced",
        ),
        None => Check::new(
            "seccomp",
            Status::Warn,
            "no /proc/sys/kernel/seccomp",
            "build the kernel with CONFIG_SECCOMP_FILTER; seccomp policies cannot be enforced",
        ),
    }
}

fn idmap(p: &Probe) -> Check {
    let syscall = if p.syscalls {
        // mount_setattr(-1, "", 0, NULL, 0): EBADF/EINVAL when the syscall exists, ENOSYS if not.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                0,
                std::ptr::null::<u8>(),
                0,
            )
        };
        Some(r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS))
    } else {
        None
    };
    let v = kernel_version(p).unwrap_or((0, 0));
    match (syscall, v) {
        (Some(false), _) => Check::new(
            "idmapped mounts",
            Status::Warn,
            "mount_setattr(2) not available",
            "user-namespaced containers fall back to chowned rootfs copies (slow): Linux >= 5.19",
        ),
        (_, v) if v >= (5, 19) => Check::new(
            "idmapped mounts",
            Status::Ok,
            "mount_setattr(2) present; overlayfs idmapping (>= 5.19)",
            "",
        ),
        (_, v) if v >= (5, 12) => Check::new(
            "idmapped mounts",
            Status::Warn,
            "mount_setattr(2) present, overlayfs cannot be idmapped before 5.19",
            "upgrade to Linux >= 5.19 for idmapped overlay rootfs",
        ),
        _ => Check::new(
            "idmapped mounts",
            Status::Warn,
            "kernel older than 5.12",
            "upgrade to Linux >= 5.19 for idmapped rootfs",
        ),
    }
}

/// Which accelerator the microVM mode runs on here, and why not hardware KVM.
fn kvm(p: &Probe) -> Check {
    const NAME: &str = "kvm (airlock-vm)";
    let host = airlock_vm::accel::Host::probe_at(&p.root);
    // The node config's choice; a config that does not load is reported by its own check.
    let choice = std::fs::read_to_string(&p.airlock_config)
        .ok()
        .and_then(|t| airlock_policies::Config::parse(&t, "").ok())
        .map(|c| c.vm.accelerator)
        .unwrap_or_default();
    let why = match host.hardware_kvm() {
        Ok(()) => {
            let module = host.hardware_module.unwrap_or_default();
            return Check::new(NAME, Status::Ok, format!("hardware KVM ({module})"), "");
        }
        Err(why) => match host.other_module.as_deref() {
            Some("kvm_pvm") => format!("PVM host: {why}"),
            _ => why,
        },
    };
    match airlock_vm::accel::select(choice, &host) {
        Ok(accel) => Check::new(
            NAME,
            Status::Warn,
            format!("no hardware KVM ({why}); airlock-vm pods run emulated ({accel}), as [vm] accelerator allows"),
            "emulation boots a guest in seconds; for hardware speed run VM pods on a node with VT-x or AMD-V and kvm_intel or kvm_amd",
        ),
        Err(_) => Check::new(
            NAME,
            Status::Warn,
            format!("no hardware KVM ({why}); airlock-vm pods are refused ([vm] accelerator = \"kvm\")"),
            "run VM pods on a node with hardware KVM, or allow emulation with [vm] accelerator = \"auto\" in the node config (much slower); airlock (process) is unaffected",
        ),
    }
}

fn binary(p: &Probe, name: &'static str) -> Check {
    match find_in(&p.path, name) {
        Some(b) => Check::new(name, Status::Ok, b.display().to_string(), ""),
        None => Check::new(
            name,
            Status::Missing,
            "not on PATH",
            "airlock install (or copy it to /usr/local/bin, on containerd's PATH)",
        ),
    }
}

fn containerd(p: &Probe) -> Vec<Check> {
    let Some(bin) = &p.containerd else {
        return vec![Check::new(
            "containerd",
            Status::Missing,
            "not found on PATH",
            "install containerd (apt-get install containerd) >= 1.6",
        )];
    };
    let out = Command::new(bin).arg("--version").output();
    let version = out
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .and_then(|s| crate::dropin::ContainerdVersion::parse(&s));
    let mut v = vec![match version {
        Some(ver) if ver >= (crate::dropin::ContainerdVersion { major: 1, minor: 6 }) => {
            Check::new(
                "containerd",
                Status::Ok,
                format!("{ver} ({})", bin.display()),
                "",
            )
        }
        Some(ver) => Check::new(
            "containerd",
            Status::Missing,
            ver.to_string(),
            "Airlock needs containerd >= 1.6",
        ),
        None => Check::new(
            "containerd",
            Status::Warn,
            "version unknown",
            "check `containerd --version`",
        ),
    }];
    let dump = Command::new(bin)
        .arg("--config")
        .arg(&p.containerd_config)
        .args(["config", "dump"])
        .output();
    v.push(match dump {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            if text.contains(crate::RUNTIME_TYPE) {
                let cfg = if text.contains("ConfigPath") { "with ConfigPath" } else { "without ConfigPath (default config path)" };
                Check::new("containerd config", Status::Ok, format!("{} registers {} {cfg}", p.containerd_config.display(), crate::RUNTIME_TYPE), "")
            } else {
                Check::new(
                    "containerd config",
                    Status::Missing,
                    format!("{} does not register {}", p.containerd_config.display(), crate::RUNTIME_TYPE),
                    "airlock install (writes the drop-in and its imports line), then restart containerd",
                )
            }
        }
        Ok(o) => Check::new(
            "containerd config",
            Status::Missing,
            format!("`containerd config dump` failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
            format!("fix {}", p.containerd_config.display()),
        ),
        Err(e) => Check::new("containerd config", Status::Missing, format!("cannot run containerd: {e}"), ""),
    });
    v
}

fn airlock_config(p: &Probe) -> Check {
    match config::load(&p.airlock_config, Path::new(DEFAULT_CONFIG_PATH)) {
        Ok(l) => {
            let n = l.policies.names().count();
            let src = l
                .file
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "built-in defaults (no config file)".into());
            Check::new(
                "airlock config",
                Status::Ok,
                format!(
                    "{src}; {n} policies; airlock -> {}",
                    l.config.default_policy("airlock").unwrap_or("(none)")
                ),
                "",
            )
        }
        Err(e) => Check::new(
            "airlock config",
            Status::Missing,
            e.to_string(),
            "fix the file: every create fails until then",
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fake(files: &[(&str, &str)]) -> (tempfile::TempDir, Probe) {
        let d = tempfile::tempdir().unwrap();
        for (p, t) in files {
            let f = d.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, t).unwrap();
        }
        let probe = Probe {
            root: d.path().to_path_buf(),
            path: vec![d.path().join("bin")],
            containerd: None,
            containerd_config: d.path().join("containerd.toml"),
            airlock_config: d.path().join("nonexistent.toml"),
            syscalls: false,
        };
        (d, probe)
    }

    fn status(checks: &[Check], name: &str) -> Status {
        checks.iter().find(|c| c.name == name).unwrap().status
    }

    #[test]
    fn pure_v2_hardware_kvm_node() {
        let (_d, p) = fake(&[
            ("/proc/sys/kernel/osrelease", "6.1.0-40-amd64\n"),
            ("/proc/sys/user/max_user_namespaces", "15000\n"),
            (
                "/proc/self/mounts",
                "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
            ),
            (
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory pids\n",
            ),
            (
                "/proc/sys/kernel/seccomp/actions_avail",
                "kill_process kill_thread trap errno user_notif trace log allow\n",
            ),
            ("/dev/kvm", ""),
            ("/sys/module/kvm_intel/x", ""),
            ("/proc/cpuinfo", "processor : 0\nflags : fpu vmx sse2\n"),
            ("/bin/containerd-shim-airlock-v2", ""),
            ("/bin/airlock-runtime", ""),
        ]);
        let c = run(&p);
        for n in [
            "kernel",
            "user namespaces",
            "cgroups",
            "seccomp",
            "idmapped mounts",
            "kvm (airlock-vm)",
            "airlock-runtime",
        ] {
            assert_eq!(status(&c, n), Status::Ok, "{n}: {c:#?}");
        }
        // The config at a non-default path is missing: an error, like the shim says.
        assert_eq!(status(&c, "airlock config"), Status::Missing);
        assert_eq!(status(&c, "containerd"), Status::Missing);
        assert_eq!(exit_code(&c), 1);
    }

    #[test]
    fn hybrid_pvm_node_like_this_one() {
        let (_d, p) = fake(&[
            ("/proc/sys/kernel/osrelease", "6.1.0-40-amd64"),
            ("/proc/sys/user/max_user_namespaces", "0"),
            ("/proc/self/mounts", "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw 0 0\n"),
            ("/dev/kvm", ""),
            ("/sys/module/kvm_pvm/x", ""),
        ]);
        let c = run(&p);
        assert_eq!(status(&c, "cgroups"), Status::Warn);
        assert!(c.iter().any(|c| c.found.contains("hybrid")));
        assert_eq!(status(&c, "user namespaces"), Status::Warn);
        assert_eq!(status(&c, "kvm (airlock-vm)"), Status::Warn);
        assert!(c.iter().any(|c| c.found.contains("PVM host")
            && c.found.contains("kvm_pvm")
            && c.found.contains("airlock-vm pods are refused")));
        assert_eq!(status(&c, "seccomp"), Status::Warn);
        assert_eq!(status(&c, "containerd-shim-airlock-v2"), Status::Missing);
        let text = c
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("-> airlock install"), "{text}");
    }

    #[test]
    fn favordynmods_is_reported_on_cgroup_v2() {
        let node = |opts: &str, kernel: &str| {
            fake(&[
                ("/proc/sys/kernel/osrelease", kernel),
                (
                    "/proc/self/mounts",
                    &format!("cgroup2 /sys/fs/cgroup cgroup2 {opts} 0 0\n"),
                ),
            ])
        };
        let (_d, p) = node(
            "rw,nosuid,nodev,noexec,relatime,nsdelegate",
            "6.1.0-40-amd64",
        );
        let c = cgroup_attach(&p);
        assert_eq!(c.status, Status::Warn, "{c}");
        assert!(c.fix.contains("favordynmods"), "{c}");
        let (_d, p) = node("rw,nsdelegate,favordynmods,memory_recursiveprot", "6.1.0");
        assert_eq!(cgroup_attach(&p).status, Status::Ok);
        let (_d, p) = node("rw,nsdelegate", "5.10.0-30-amd64");
        assert_eq!(cgroup_attach(&p).status, Status::Ok);
    }

    #[test]
    fn old_kernel_is_missing() {
        let (_d, p) = fake(&[("/proc/sys/kernel/osrelease", "4.19.0")]);
        assert_eq!(kernel(&p).status, Status::Missing);
    }
}
