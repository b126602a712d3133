//! The filesystem and namespace hardening a policy asks for beyond runc's defaults: writable
//! mounts without exec, a bounded devpts, extra masked paths, a private cgroup namespace.
//!
//! Each rule is declared in the policy file (`[filesystem] noexec_writable`, `pty_max`,
//! `masked_paths`; `[namespaces] private_cgroup`) and lowered here onto the spec; each adds one
//! line to the enforcement report.

use oci_spec::runtime::{Linux, LinuxNamespace, LinuxNamespaceType, Mount, Spec};

use crate::model::set_namespace;
use crate::report::Report;
use crate::Policy;

/// A mount the container can write to: not read-only, and not a kernel view whose files are
/// not executables (proc, sysfs, cgroup, mqueue).
fn writable(m: &Mount) -> bool {
    let opts = m.options().as_deref().unwrap_or_default();
    let kernel_view = matches!(
        m.typ().as_deref(),
        Some("proc" | "sysfs" | "cgroup" | "cgroup2" | "mqueue")
    );
    !kernel_view && !opts.iter().any(|o| o == "ro")
}

/// Lowers the hardening rules of `policy` onto `spec`, appending what it enforced.
pub(crate) fn apply(policy: &Policy, spec: &mut Spec, report: &mut Report) {
    let fs = &policy.filesystem;
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    if fs.noexec_writable {
        let mut changed = Vec::new();
        for m in mounts.iter_mut().filter(|m| writable(m)) {
            let mut opts = m.options().clone().unwrap_or_default();
            opts.retain(|o| o != "exec");
            if !opts.iter().any(|o| o == "noexec") {
                opts.push("noexec".into());
                changed.push(m.destination().display().to_string());
            }
            m.set_options(Some(opts));
        }
        report.enforce(if changed.is_empty() {
            "writable mounts: noexec".into()
        } else {
            format!("writable mounts: noexec (added on {})", changed.join(", "))
        });
    }
    if let Some(max) = fs.pty_max {
        for m in mounts
            .iter_mut()
            .filter(|m| m.typ().as_deref() == Some("devpts"))
        {
            let mut opts = m.options().clone().unwrap_or_default();
            opts.retain(|o| !o.starts_with("max="));
            opts.push(format!("max={max}"));
            if !opts.iter().any(|o| o == "newinstance") {
                opts.push("newinstance".into());
            }
            m.set_options(Some(opts));
        }
        report.enforce(format!("devpts: at most {max} ptys"));
    }
    spec.set_mounts(Some(mounts));
    if !fs.masked_paths.is_empty() {
        if let Some(linux) = spec.linux_mut() {
            let mut masked = linux.masked_paths().clone().unwrap_or_default();
            for p in &fs.masked_paths {
                if !masked.contains(p) {
                    masked.push(p.clone());
                }
            }
            linux.set_masked_paths(Some(masked));
            report.enforce(format!("masked: {}", fs.masked_paths.join(", ")));
        }
    }
    if policy.namespaces.unprivileged_ports {
        unprivileged_ports(spec, report);
    }
    if policy.process.memfd_noexec {
        memfd_noexec(spec, report);
    }
    if policy.namespaces.private_cgroup {
        let has_own = spec.linux().as_ref().is_some_and(|l| {
            namespace_of(l, LinuxNamespaceType::Cgroup).is_some_and(|n| n.path().is_none())
        });
        if !has_own {
            set_namespace(spec, LinuxNamespaceType::Cgroup, None);
        }
        report.enforce("cgroup namespace: private");
    }
}

/// The spec's namespace of type `typ`, if it has one (`None`: the node's).
fn namespace_of(linux: &Linux, typ: LinuxNamespaceType) -> Option<&LinuxNamespace> {
    linux.namespaces().iter().flatten().find(|n| n.typ() == typ)
}

/// The pid-namespaced sysctl that refuses executable memfds (2: `MFD_EXEC` refused, every memfd
/// sealed non-executable).
pub const MEMFD_NOEXEC: &str = "vm.memfd_noexec";

/// `vm.memfd_noexec = 2` in the container's new pid namespace (the vendored libcontainer's init
/// writes it there): code the container writes into a memfd cannot be executed from it, as
/// from any of its writable mounts. A pid namespace joined by path is left as it is.
fn memfd_noexec(spec: &mut Spec, report: &mut Report) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    if !namespace_of(linux, LinuxNamespaceType::Pid).is_some_and(|n| n.path().is_none()) {
        return;
    }
    let mut sysctl = linux.sysctl().clone().unwrap_or_default();
    sysctl.insert(MEMFD_NOEXEC.into(), "2".into());
    linux.set_sysctl(Some(sysctl));
    report.enforce("memfd: no executable memfd (vm.memfd_noexec = 2)");
}

/// The sysctl that lets a process without CAP_NET_BIND_SERVICE bind ports below it.
const PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";

/// `net.ipv4.ip_unprivileged_port_start = 0` in the container's own network namespace (as
/// Docker sets it), so a server binds port 80 without a capability. Set where the namespace
/// is made: for a container with a new one, and for a CRI pod's sandbox (its app containers
/// join the namespace). Never for the node's namespace, and never over the pod's own value.
fn unprivileged_ports(spec: &mut Spec, report: &mut Report) {
    let sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("io.kubernetes.cri.container-type"))
        .is_some_and(|t| t == "sandbox");
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let makes_it = namespace_of(linux, LinuxNamespaceType::Network)
        .is_some_and(|n| n.path().is_none() || sandbox);
    if !makes_it {
        return;
    }
    let mut sysctl = linux.sysctl().clone().unwrap_or_default();
    if sysctl.contains_key(PORT_START) {
        return;
    }
    sysctl.insert(PORT_START.into(), "0".into());
    linux.set_sysctl(Some(sysctl));
    report.enforce("ports: any port binds without a capability (own network namespace)");
}

#[cfg(test)]
mod tests {
    use crate::{PolicySet, Report};
    use oci_spec::runtime::{LinuxNamespaceType, Spec};

    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "max=100000"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "exec", "nodev"]},
                {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/etc/cfg", "type": "bind", "source": "/srv/cfg",
                 "options": ["rbind", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        }))
        .unwrap()
    }

    fn builtin(name: &str) -> crate::Policy {
        PolicySet::builtin().get(name).unwrap().policy.clone()
    }

    fn sysctl(spec: &Spec, key: &str) -> Option<String> {
        spec.linux()
            .as_ref()
            .unwrap()
            .sysctl()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
    }

    fn mount_opts(spec: &Spec, dst: &str) -> Vec<String> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().to_str() == Some(dst))
            .unwrap()
            .options()
            .clone()
            .unwrap_or_default()
    }

    #[test]
    fn agent_strict_hardens_every_writable_mount_devpts_proc_and_cgroup() {
        let p = builtin("agent-strict");
        let mut s = spec();
        let mut report = Report::new("test");
        super::apply(&p, &mut s, &mut report);
        for dst in ["/dev", "/dev/shm", "/run"] {
            let o = mount_opts(&s, dst);
            assert!(o.contains(&"noexec".to_string()), "{dst}: {o:?}");
            assert!(!o.contains(&"exec".to_string()), "{dst}: {o:?}");
        }
        assert!(!mount_opts(&s, "/etc/cfg").contains(&"noexec".to_string()));
        let pts = mount_opts(&s, "/dev/pts");
        assert_eq!(
            pts.iter()
                .filter(|o| o.starts_with("max="))
                .collect::<Vec<_>>(),
            [&format!("max={}", p.filesystem.pty_max.unwrap())]
        );
        let linux = s.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/cmdline".to_string()));
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none()));
        let text = report.enforced.join("; ");
        assert!(
            text.contains("noexec (added on /dev, /dev/shm, /run)"),
            "{text}"
        );
        assert!(text.contains("cgroup namespace: private"), "{text}");
    }

    #[test]
    fn ports_open_only_in_a_network_namespace_the_container_makes() {
        let p = builtin("agent-strict");
        let port = |s: &Spec| sysctl(s, super::PORT_START);
        let mut s = spec();
        super::apply(&p, &mut s, &mut Report::default());
        assert_eq!(port(&s), None, "the node's network namespace");
        crate::set_namespace(&mut s, LinuxNamespaceType::Network, None);
        super::apply(&p, &mut s, &mut Report::default());
        assert_eq!(port(&s).as_deref(), Some("0"));
        let mut app = spec();
        let netns = std::path::Path::new("/proc/42/ns/net");
        crate::set_namespace(&mut app, LinuxNamespaceType::Network, Some(netns));
        super::apply(&p, &mut app, &mut Report::default());
        assert_eq!(port(&app), None, "a CRI app container joins its sandbox's");
        let mut sandbox = app.clone();
        sandbox.set_annotations(Some(
            [(
                "io.kubernetes.cri.container-type".to_string(),
                "sandbox".to_string(),
            )]
            .into(),
        ));
        super::apply(&p, &mut sandbox, &mut Report::default());
        assert_eq!(port(&sandbox).as_deref(), Some("0"));
    }

    #[test]
    fn memfd_exec_is_refused_in_a_pid_namespace_of_the_containers_own() {
        let p = builtin("agent-strict");
        assert!(p.process.memfd_noexec);
        let memfd = |s: &Spec| sysctl(s, super::MEMFD_NOEXEC);
        let mut s = spec();
        super::apply(&p, &mut s, &mut Report::default());
        assert_eq!(memfd(&s).as_deref(), Some("2"));
        let mut shared = spec();
        crate::set_namespace(
            &mut shared,
            LinuxNamespaceType::Pid,
            Some(std::path::Path::new("/proc/42/ns/pid")),
        );
        super::apply(&p, &mut shared, &mut Report::default());
        assert_eq!(
            memfd(&shared),
            None,
            "a pid namespace joined by path is the pod's"
        );
    }

    #[test]
    fn bad_hardening_fields_name_the_field() {
        let base = "name = \"x\"\n[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = true\n";
        for (extra, field) in [
            ("pty_max = 0", "filesystem.pty_max"),
            ("masked_paths = [\"proc/x\"]", "filesystem.masked_paths"),
            (
                "masked_paths = [\"/proc/../etc\"]",
                "filesystem.masked_paths",
            ),
        ] {
            let e = crate::Policy::parse(&format!("{base}{extra}\n"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn baseline_leaves_the_spec_as_runc_would() {
        let p = builtin("baseline");
        let mut s = spec();
        let before = s.clone();
        let mut report = Report::new("test");
        super::apply(&p, &mut s, &mut report);
        assert_eq!(s, before);
        assert!(report.enforced.is_empty(), "{report:?}");
    }
}
