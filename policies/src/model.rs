//! The policy data model and how it lowers an OCI spec.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    Spec,
};
use serde::{Deserialize, Serialize};

use crate::report::{Clamp, Report};
use crate::seccomp::{native_arch, Seccomp, SeccompMode, SeccompProgram};
use crate::userns::{IdRange, UserNamespace};
use crate::{Error, Result};

/// Capabilities containerd puts in every default spec. A spec asking for a capability from
/// this set, which the policy does not allow, is lowered silently: the pod did not ask for it
/// explicitly. Anything outside the set is an explicit request and is refused.
const CONTAINERD_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths runc masks; a policy always masks at least these.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths runc makes read-only.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Whether pods may pick this policy with the `airlock.dev/policy` annotation.
    #[serde(default)]
    pub selectable: bool,
    pub process: ProcessRules,
    pub filesystem: Filesystem,
    #[serde(default)]
    pub namespaces: Namespaces,
    #[serde(default)]
    pub limits: Limits,
    /// Absent means the default: enforce the `agent` allowlist.
    #[serde(default)]
    pub seccomp: Seccomp,
    /// Absent means off: the container's root is the host's root.
    #[serde(default)]
    pub user_namespace: UserNamespace,
    /// What happens to a container that asks for more than the policy allows.
    #[serde(default)]
    pub on_excess: OnExcess,
}

/// What a policy does with a container that asks for more than it allows (a capability,
/// a host namespace, a writable host mount, a device).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnExcess {
    /// Refuse to create it, with an error naming the field and the policy.
    #[default]
    Refuse,
    /// Lower the spec to the policy and log a warning (`clamped: ...`) for each change. A user
    /// namespace mapping of host root is refused even then: it has no safe lower form.
    Clamp,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessRules {
    pub no_new_privileges: bool,
    /// The capability allowlist (`CAP_*` names).
    pub capabilities: Vec<String>,
    /// No executable memfd: `vm.memfd_noexec = 2` in the container's own pid namespace (Linux
    /// >= 6.3; the shim leaves it out, and says so, on an older kernel).
    #[serde(default)]
    pub memfd_noexec: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub tmpfs: Vec<Tmpfs>,
    /// Host directories that containers may bind writable (besides their pod's own runtime
    /// dirs: the CRI sandbox's state dir and the kubelet's pod dir).
    #[serde(default)]
    pub writable_host_paths: Vec<String>,
    /// Host directories that containers may bind read-only. Absent: any host path may be bound
    /// read-only; a list (even an empty one): only paths under it, besides the pod's own
    /// runtime dirs and `writable_host_paths`.
    #[serde(default)]
    pub readonly_host_paths: Option<Vec<String>>,
    /// Device nodes allowed beyond the standard set (e.g. /dev/fuse).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Every writable mount (tmpfs, /dev, /dev/shm, /run, writable volumes) gets `noexec`: a
    /// file the container writes cannot be executed.
    #[serde(default)]
    pub noexec_writable: bool,
    /// The most ptys the container's devpts instance hands out (`max=`): one container cannot
    /// exhaust the node's `kernel.pty.max` for every other.
    #[serde(default)]
    pub pty_max: Option<u32>,
    /// Paths masked beyond runc's set (e.g. /proc/cmdline: the host kernel's command line).
    #[serde(default)]
    pub masked_paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tmpfs {
    pub path: String,
    pub size: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Namespaces {
    /// Host namespaces a container may share: any of network, pid, ipc, uts.
    #[serde(default)]
    pub allow_host: Vec<String>,
    /// A cgroup namespace of the container's own (`/proc/self/cgroup` shows `/`, not the
    /// node's cgroup path).
    #[serde(default)]
    pub private_cgroup: bool,
    /// `net.ipv4.ip_unprivileged_port_start = 0` in a network namespace the container (or its
    /// pod's sandbox) makes: a server binds port 80 with no capability.
    #[serde(default)]
    pub unprivileged_ports: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Upper bound on the container's pids.max.
    pub pids: Option<i64>,
    /// memory.max when the pod sets no memory limit (a size such as 1g).
    pub memory: Option<String>,
    /// Swap the container may use beyond `memory` (memory.swap.max), when the pod sets no
    /// memory limit; "0" means none.
    pub swap: Option<String>,
    /// memory.high (cgroup v2 only: the kernel throttles and reclaims above it) when the pod
    /// sets no memory limit, e.g. 768m.
    pub memory_high: Option<String>,
    /// CPUs (cpu.max quota / period) when the pod sets no CPU quota, e.g. 2 or 0.5.
    pub cpus: Option<f64>,
    /// Block I/O weight when the pod sets none, on the OCI `blockIO.weight` scale 10-1000
    /// (default 100 is the kernel's): blkio.weight / blkio.bfq.weight on cgroup v1; on v2
    /// io.bfq.weight, or io.weight mapped to 1-10000 as runc maps it (500 -> 4950). The host
    /// needs a weight-based I/O policy (BFQ, or io.cost on v2) or container creation fails.
    pub io_weight: Option<u16>,
}

/// Sets the container's `typ` namespace: joined at `path`, or a new one of its own with
/// `None`; replaces whatever entry of that type the spec had.
pub fn set_namespace(spec: &mut Spec, typ: LinuxNamespaceType, path: Option<&Path>) {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    ns.retain(|n| n.typ() != typ);
    let mut b = oci_spec::runtime::LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    ns.push(b.build().expect("type set"));
    linux.set_namespaces(Some(ns));
}

impl Policy {
    /// Parse and validate a policy. `file` names the source in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Policy> {
        let policy: Policy = toml::from_str(text).map_err(|e| Error::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    pub(crate) fn invalid(&self, message: String) -> Error {
        Error::Invalid {
            policy: self.name.clone(),
            message,
        }
    }

    fn validate(&self) -> Result<()> {
        for c in &self.process.capabilities {
            parse_cap(c).map_err(|_| {
                self.invalid(format!(
                    "process.capabilities: unknown capability {c:?} (use names such as CAP_CHOWN)"
                ))
            })?;
        }
        for ns in &self.namespaces.allow_host {
            if host_ns_type(ns).is_none() {
                return Err(self.invalid(format!(
                    "namespaces.allow_host: unknown namespace {ns:?} (use network, pid, ipc or uts)"
                )));
            }
        }
        if self.filesystem.pty_max == Some(0) {
            return Err(self.invalid(
                "filesystem.pty_max: 0 leaves the container no terminal (use at least 1, e.g. 128)"
                    .into(),
            ));
        }
        for p in &self.filesystem.masked_paths {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(self.invalid(format!(
                    "filesystem.masked_paths: {p:?} must be an absolute path without '..'"
                )));
            }
        }
        for t in &self.filesystem.tmpfs {
            if !t.path.starts_with('/') {
                return Err(self.invalid(format!(
                    "filesystem.tmpfs: path {:?} must be absolute",
                    t.path
                )));
            }
            if parse_size(&t.size).is_none() {
                return Err(self.invalid(format!(
                    "filesystem.tmpfs: size {:?} of {} is not a size such as 64m or 1g",
                    t.size, t.path
                )));
            }
        }
        let none = Vec::new();
        let listed = [
            ("writable_host_paths", &self.filesystem.writable_host_paths),
            (
                "readonly_host_paths",
                self.filesystem
                    .readonly_host_paths
                    .as_ref()
                    .unwrap_or(&none),
            ),
        ];
        for (field, list) in listed {
            for p in list {
                let path = Path::new(p);
                if !path.is_absolute()
                    || path.parent().is_none()
                    || path
                        .components()
                        .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(self.invalid(format!(
                        "filesystem.{field}: {p:?} must be an absolute directory other than / without `..`"
                    )));
                }
            }
        }
        for d in &self.filesystem.devices {
            if !d.starts_with("/dev/") || d.contains("..") {
                return Err(self.invalid(format!(
                    "filesystem.devices: {d:?} must be a path under /dev/ (e.g. /dev/fuse)"
                )));
            }
        }
        if let Some(p) = self.limits.pids {
            if p < 1 {
                return Err(self.invalid(format!("limits.pids must be >= 1, got {p}")));
            }
        }
        for (field, value) in [
            ("memory", &self.limits.memory),
            ("swap", &self.limits.swap),
            ("memory_high", &self.limits.memory_high),
        ] {
            if let Some(v) = value {
                if parse_size(v).is_none() {
                    return Err(self.invalid(format!(
                        "limits.{field}: {v:?} is not a size such as 512m or 2g"
                    )));
                }
            }
        }
        if self.limits.swap.is_some() && self.limits.memory.is_none() {
            return Err(self
                .invalid("limits.swap needs limits.memory (swap is counted on top of it)".into()));
        }
        if let Some(c) = self.limits.cpus {
            if !(0.01..=1024.0).contains(&c) {
                return Err(self.invalid(format!(
                    "limits.cpus must be between 0.01 and 1024, got {c}"
                )));
            }
        }
        if let Some(w) = self.limits.io_weight {
            if !(10..=1000).contains(&w) {
                return Err(self.invalid(format!(
                    "limits.io_weight: {w} is outside 10-1000 (the OCI blockIO.weight scale; \
                     100 is the kernel's default)"
                )));
            }
        }
        if self.seccomp.mode != SeccompMode::Off {
            let arch = native_arch().ok_or_else(|| {
                self.invalid(format!(
                    "seccomp: this architecture ({}) has no filter support; set mode = \"off\"",
                    std::env::consts::ARCH
                ))
            })?;
            self.seccomp.validate(arch).map_err(|m| self.invalid(m))?;
        }
        self.user_namespace
            .validate()
            .map_err(|m| self.invalid(m))?;
        Ok(())
    }

    /// Compiles the policy's seccomp filter for this machine; `None` when seccomp is off.
    /// Callers cache the result: it depends only on the policy.
    pub fn compile_seccomp(&self) -> Result<Option<SeccompProgram>> {
        if self.seccomp.mode == SeccompMode::Off {
            return Ok(None);
        }
        let arch = native_arch().ok_or_else(|| {
            self.invalid(format!(
                "seccomp: no filter support on {}",
                std::env::consts::ARCH
            ))
        })?;
        self.seccomp.compile(arch).map_err(|m| self.invalid(m))
    }

    /// The container asks for more than the policy allows: refuse, or in clamp mode record
    /// the [`Clamp`] in `report` and let the caller lower the spec.
    pub(crate) fn excess(
        &self,
        field: &'static str,
        asked: impl Into<String>,
        hint: impl Into<String>,
        done: &str,
        report: &mut Report,
    ) -> Result<()> {
        match self.on_excess {
            OnExcess::Refuse => Err(self.refused(field, asked, hint)),
            OnExcess::Clamp => {
                report.clamped.push(Clamp {
                    field,
                    asked: asked.into(),
                    done: done.to_owned(),
                });
                Ok(())
            }
        }
    }

    pub(crate) fn refused(
        &self,
        field: &'static str,
        asked: impl Into<String>,
        hint: impl Into<String>,
    ) -> Error {
        Error::Refused {
            policy: self.name.clone(),
            field,
            asked: asked.into(),
            hint: hint.into(),
        }
    }

    /// Lower `spec` to this policy. Returns what was enforced and what was clamped (the
    /// [`Report`] that logs and `airlock policy explain` show). A namespace the spec joins by path counts as the
    /// host's: use [`Policy::apply_on_node`] where the node can tell.
    pub fn apply(&self, spec: &mut Spec) -> Result<Report> {
        self.apply_on_node(spec, &|_, _| true)
    }

    /// Like [`Policy::apply`], with `is_host_ns(type, path)` telling whether a namespace the
    /// spec joins by path is one of the node's own (a pod's containers join their sandbox's
    /// namespaces by path; those are private).
    pub fn apply_on_node(
        &self,
        spec: &mut Spec,
        is_host_ns: &dyn Fn(LinuxNamespaceType, &Path) -> bool,
    ) -> Result<Report> {
        self.apply_in_pod(spec, is_host_ns, None)
    }

    /// Like [`Policy::apply_on_node`], with the host id range the caller allocated for the
    /// container's pod (see [`Policy::user_namespace_range_needed`]). Without a range, a policy
    /// with `[user_namespace] enabled` maps nothing and says so in the returned lines.
    pub fn apply_in_pod(
        &self,
        spec: &mut Spec,
        is_host_ns: &dyn Fn(LinuxNamespaceType, &Path) -> bool,
        userns: Option<IdRange>,
    ) -> Result<Report> {
        let mut report = Report::new(&self.name);
        self.apply_namespaces(spec, is_host_ns, &mut report)?;
        self.apply_user_namespace(spec, is_host_ns, userns, &mut report)?;
        self.apply_process(spec, &mut report)?;
        self.apply_host_mounts(spec, &mut report)?;
        self.apply_devices(spec, &mut report)?;
        self.apply_filesystem(spec, &mut report);
        crate::harden::apply(self, spec, &mut report);
        self.apply_limits(spec, &mut report);
        report.enforce(self.seccomp_summary());
        Ok(report)
    }

    fn apply_namespaces(
        &self,
        spec: &mut Spec,
        is_host_ns: &dyn Fn(LinuxNamespaceType, &Path) -> bool,
        report: &mut Report,
    ) -> Result<()> {
        let private: HashSet<LinuxNamespaceType> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .map(|ns| {
                ns.iter()
                    .filter(|n| n.path().as_ref().is_none_or(|p| !is_host_ns(n.typ(), p)))
                    .map(|n| n.typ())
                    .collect()
            })
            .unwrap_or_default();
        for name in ["network", "pid", "ipc", "uts"] {
            let typ = host_ns_type(name).expect("known");
            if !private.contains(&typ) && !self.namespaces.allow_host.iter().any(|a| a == name) {
                self.excess(
                    "linux.namespaces",
                    format!("host {name} namespace"),
                    format!("give the container its own {name} namespace"),
                    &format!("given its own {name} namespace"),
                    report,
                )?;
                set_namespace(spec, typ, None);
            }
        }
        report.enforce("namespaces: private pid, ipc, uts, network, mount");
        Ok(())
    }

    fn apply_process(&self, spec: &mut Spec, report: &mut Report) -> Result<()> {
        let allowed: HashSet<Capability> = self
            .process
            .capabilities
            .iter()
            .filter_map(|c| parse_cap(c).ok())
            .collect();
        let defaults: HashSet<Capability> = CONTAINERD_DEFAULT_CAPS
            .iter()
            .filter_map(|c| parse_cap(c).ok())
            .collect();
        let Some(process) = spec.process_mut() else {
            return Ok(());
        };
        if let Some(caps) = process.capabilities().clone() {
            let mut caps = caps;
            // Capabilities asked for beyond the policy and containerd's defaults, once each.
            let mut extra: Vec<Capability> = [
                caps.bounding(),
                caps.effective(),
                caps.permitted(),
                caps.inheritable(),
                caps.ambient(),
            ]
            .into_iter()
            .flatten()
            .flatten()
            .filter(|c| !allowed.contains(c) && !defaults.contains(c))
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
            extra.sort_by_key(|c| c.to_string());
            for c in extra {
                self.excess(
                    "process.capabilities",
                    format!("CAP_{c}"),
                    "drop the capability from the pod's securityContext",
                    "dropped",
                    report,
                )?;
            }
            let lower = |set: &Option<HashSet<Capability>>| {
                set.as_ref()
                    .map(|set| set.intersection(&allowed).copied().collect())
            };
            caps.set_bounding(lower(caps.bounding()));
            caps.set_effective(lower(caps.effective()));
            caps.set_permitted(lower(caps.permitted()));
            caps.set_inheritable(lower(caps.inheritable()));
            caps.set_ambient(lower(caps.ambient()));
            process.set_capabilities(Some(caps));
        }
        report.enforce(format!(
            "capabilities: {}",
            if self.process.capabilities.is_empty() {
                "none".to_string()
            } else {
                self.process.capabilities.join(", ")
            }
        ));
        if self.process.no_new_privileges {
            process.set_no_new_privileges(Some(true));
            report.enforce("no_new_privs: on");
        }
        Ok(())
    }

    fn apply_filesystem(&self, spec: &mut Spec, report: &mut Report) {
        if self.filesystem.readonly_rootfs {
            if let Some(root) = spec.root_mut() {
                root.set_readonly(Some(true));
            }
            report.enforce("rootfs: read-only");
        }
        let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
        for t in &self.filesystem.tmpfs {
            if mounts
                .iter()
                .any(|m| m.destination().to_str() == Some(t.path.as_str()))
            {
                continue;
            }
            let m = MountBuilder::default()
                .destination(&t.path)
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "noexec".to_string(),
                    "mode=1777".to_string(),
                    format!("size={}", t.size),
                ])
                .build()
                .expect("all fields set");
            mounts.push(m);
            report.enforce(format!("tmpfs: {} (size {}, noexec)", t.path, t.size));
        }
        spec.set_mounts(Some(mounts));
        if let Some(linux) = spec.linux_mut() {
            let mut masked = linux.masked_paths().clone().unwrap_or_default();
            for p in MASKED_PATHS {
                if !masked.iter().any(|m| m == p) {
                    masked.push(p.to_string());
                }
            }
            linux.set_masked_paths(Some(masked));
            let mut ro = linux.readonly_paths().clone().unwrap_or_default();
            for p in READONLY_PATHS {
                if !ro.iter().any(|m| m == p) {
                    ro.push(p.to_string());
                }
            }
            linux.set_readonly_paths(Some(ro));
            report.enforce("masked /proc and /sys paths: as runc, at least");
        }
    }

    fn seccomp_summary(&self) -> String {
        let s = &self.seccomp;
        let what = match s.mode {
            SeccompMode::Off => return "seccomp: off".into(),
            SeccompMode::Enforce => format!("enforce (denied -> {})", s.errno),
            SeccompMode::Audit => "audit (denied syscalls are logged, not failed)".into(),
        };
        let count = native_arch().map_or(0, |a| s.seccomp_allowed_len(a));
        format!("seccomp: {what}, {} allowlist of {count} syscalls", s.base)
    }

    fn apply_limits(&self, spec: &mut Spec, report: &mut Report) {
        let Some(linux) = spec.linux_mut() else {
            return;
        };
        let mut resources = linux
            .resources()
            .clone()
            .unwrap_or_else(|| LinuxResourcesBuilder::default().build().expect("empty"));
        if let Some(ceiling) = self.limits.pids {
            let asked = resources.pids().as_ref().map(|p| p.limit());
            let limit = match asked {
                Some(a) if a > 0 && a < ceiling => a,
                _ => ceiling,
            };
            resources.set_pids(Some(
                LinuxPidsBuilder::default()
                    .limit(limit)
                    .build()
                    .expect("limit set"),
            ));
            report.enforce(format!("pids.max: {limit}"));
        }
        if let Some(memory) = self.limits.memory.as_deref().and_then(parse_size) {
            let mut m = (*resources.memory()).unwrap_or_default();
            if m.limit().is_none_or(|l| l <= 0) {
                let limit = memory as i64;
                m.set_limit(Some(limit));
                // OCI's swap is memory + swap (cgroup v1's memsw). libcgroups' v2 manager
                // skips writing a memory.swap.max of 0, so v2 also gets it through `unified`
                // (which the v1 manager ignores), as does memory.high, which v1 lacks.
                let mut unified = resources.unified().clone().unwrap_or_default();
                if let Some(swap) = self.limits.swap.as_deref().and_then(parse_size) {
                    m.set_swap(Some(limit.saturating_add(swap as i64)));
                    unified
                        .entry("memory.swap.max".into())
                        .or_insert_with(|| swap.to_string());
                }
                if let Some(high) = self.limits.memory_high.as_deref().and_then(parse_size) {
                    unified
                        .entry("memory.high".into())
                        .or_insert_with(|| high.to_string());
                }
                if !unified.is_empty() {
                    resources.set_unified(Some(unified));
                }
                report.enforce(format!(
                    "memory.max: {} (default; the pod set none){}{}",
                    self.limits.memory.as_deref().unwrap_or_default(),
                    self.limits
                        .swap
                        .as_deref()
                        .map(|s| format!(", swap {s}"))
                        .unwrap_or_default(),
                    self.limits
                        .memory_high
                        .as_deref()
                        .map(|h| format!(", memory.high {h}"))
                        .unwrap_or_default()
                ));
                resources.set_memory(Some(m));
            } else {
                report.enforce("memory.max: the pod's own limit");
            }
        }
        if let Some(cpus) = self.limits.cpus {
            let mut c = resources.cpu().clone().unwrap_or_default();
            if c.quota().is_none_or(|q| q <= 0) {
                const PERIOD: u64 = 100_000;
                c.set_period(Some(PERIOD));
                c.set_quota(Some((cpus * PERIOD as f64).round() as i64));
                resources.set_cpu(Some(c));
                report.enforce(format!("cpu.max: {cpus} CPUs (default; the pod set none)"));
            } else {
                report.enforce("cpu.max: the pod's own quota");
            }
        }
        if let Some(weight) = self.limits.io_weight {
            let mut io = resources.block_io().clone().unwrap_or_default();
            if io.weight().is_none_or(|w| w == 0) {
                io.set_weight(Some(weight));
                resources.set_block_io(Some(io));
                report.enforce(format!("io weight: {weight} (default; the pod set none)"));
            } else {
                report.enforce("io weight: the pod's own");
            }
        }
        linux.set_resources(Some(resources));
    }
}

fn host_ns_type(name: &str) -> Option<LinuxNamespaceType> {
    Some(match name {
        "network" => LinuxNamespaceType::Network,
        "pid" => LinuxNamespaceType::Pid,
        "ipc" => LinuxNamespaceType::Ipc,
        "uts" => LinuxNamespaceType::Uts,
        _ => return None,
    })
}

/// Parse `CAP_CHOWN` (or `CHOWN`) into a capability.
fn parse_cap(s: &str) -> std::result::Result<Capability, strum::ParseError> {
    s.strip_prefix("CAP_").unwrap_or(s).parse()
}

/// Parse sizes such as `64m`, `1g`, `4096`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;

    fn default_spec() -> Spec {
        Spec::default()
    }

    /// Rewrites (or drops, on `None`) each of the spec's namespaces.
    fn edit_namespaces(
        spec: &mut Spec,
        f: impl Fn(oci_spec::runtime::LinuxNamespace) -> Option<oci_spec::runtime::LinuxNamespace>,
    ) {
        let linux = spec.linux_mut().as_mut().unwrap();
        let ns = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .filter_map(f)
            .collect();
        linux.set_namespaces(Some(ns));
    }

    #[test]
    fn strict_drops_default_caps_and_sets_nnp() {
        let mut spec = default_spec();
        let p = builtin("agent-strict").unwrap();
        let report = p.apply(&mut spec).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(caps.bounding().as_ref().unwrap().is_empty());
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert!(report
            .enforced
            .iter()
            .any(|l| l.starts_with("pids.max: 512")));
        let mounts = spec.mounts().as_ref().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.destination().to_str() == Some("/tmp")));
    }

    #[test]
    fn explicit_extra_capability_is_refused_naming_field() {
        let mut spec = default_spec();
        let mut caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let mut b = caps.bounding().clone().unwrap();
        b.insert(Capability::SysAdmin);
        caps.set_bounding(Some(b));
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_capabilities(Some(caps));
        let e = builtin("agent-strict")
            .unwrap()
            .apply(&mut spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("process.capabilities"), "{e}");
        assert!(e.contains("agent-strict"), "{e}");
        assert!(e.contains("SYS_ADMIN"), "{e}");
    }

    #[test]
    fn host_network_refused_by_strict_allowed_by_baseline() {
        let mut spec = default_spec();
        edit_namespaces(&mut spec, |n| {
            (n.typ() != LinuxNamespaceType::Network).then_some(n)
        });
        let mut s2 = spec.clone();
        let e = builtin("agent-strict")
            .unwrap()
            .apply(&mut spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host network namespace"), "{e}");
        builtin("baseline").unwrap().apply(&mut s2).unwrap();
    }

    #[test]
    fn joining_a_pod_namespace_by_path_is_private_on_a_node_that_says_so() {
        let mut spec = default_spec();
        edit_namespaces(&mut spec, |mut n| {
            if n.typ() == LinuxNamespaceType::Network {
                n.set_path(Some("/var/run/netns/cni-1".into()));
            }
            Some(n)
        });
        let strict = builtin("agent-strict").unwrap();
        let mut s2 = spec.clone();
        // Without a node to ask, a joined namespace counts as the host's.
        assert!(strict.apply(&mut spec).is_err());
        strict
            .apply_on_node(&mut s2, &|_, p| p == Path::new("/proc/1/ns/net"))
            .unwrap();
    }

    #[test]
    fn pod_may_ask_for_less_pids() {
        let mut spec = default_spec();
        let res = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .build()
            .unwrap();
        spec.linux_mut().as_mut().unwrap().set_resources(Some(res));
        builtin("agent-strict").unwrap().apply(&mut spec).unwrap();
        let lim = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .pids()
            .as_ref()
            .unwrap()
            .limit();
        assert_eq!(lim, 10);
    }

    #[test]
    fn parse_errors_name_file_and_field() {
        let e = Policy::parse("name = \"x\"\n[process]\nno_new_privileges = true\ncapabilities = [\"CAP_NOPE\"]\n[filesystem]\nreadonly_rootfs = true\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("CAP_NOPE"), "{e}");
        let e = Policy::parse("name = \"x\"\nbogus = 1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn default_limits_apply_only_when_the_pod_sets_none() {
        let strict = builtin("agent-strict").unwrap();
        let mut spec = default_spec();
        strict.apply(&mut spec).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!(m.limit(), Some(1 << 30));
        assert_eq!(m.swap(), Some(1 << 30), "no swap beyond memory");
        let unified = r.unified().as_ref().unwrap();
        assert_eq!(unified["memory.swap.max"], "0");
        assert_eq!(unified["memory.high"], (768u64 << 20).to_string());
        let c = r.cpu().as_ref().unwrap();
        assert_eq!((c.quota(), c.period()), (Some(200_000), Some(100_000)));

        let mut spec = default_spec();
        let mut res = LinuxResourcesBuilder::default().build().unwrap();
        let mut mem = oci_spec::runtime::LinuxMemory::default();
        mem.set_limit(Some(4 << 30));
        res.set_memory(Some(mem));
        spec.linux_mut().as_mut().unwrap().set_resources(Some(res));
        strict.apply(&mut spec).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(4 << 30));
    }

    #[test]
    fn bad_limits_name_the_field() {
        let base = "name = \"x\"\n[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = true\n[limits]\n";
        for (extra, field) in [
            ("memory = \"lots\"", "limits.memory"),
            ("swap = \"1g\"", "limits.swap"),
            ("cpus = 0.0", "limits.cpus"),
            ("io_weight = 5", "limits.io_weight"),
            ("io_weight = 1001", "limits.io_weight"),
        ] {
            let e = Policy::parse(&format!("{base}{extra}\n"), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn io_weight_is_a_default_the_pod_may_replace() {
        let text = "name = \"io\"\n[process]\nno_new_privileges = true\ncapabilities = []\n\
                    [filesystem]\nreadonly_rootfs = true\n[limits]\nio_weight = 300\n";
        let p = Policy::parse(text, "io.toml").unwrap();
        let mut spec = default_spec();
        let report = p.apply(&mut spec).unwrap();
        assert!(report
            .enforced
            .iter()
            .any(|l| l == "io weight: 300 (default; the pod set none)"));
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(300));

        let mut spec = default_spec();
        let mut res = LinuxResourcesBuilder::default().build().unwrap();
        let mut io = oci_spec::runtime::LinuxBlockIo::default();
        io.set_weight(Some(50));
        res.set_block_io(Some(io));
        spec.linux_mut().as_mut().unwrap().set_resources(Some(res));
        p.apply(&mut spec).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(50));
        assert!(crate::explain::explain(&p)
            .to_string()
            .contains("limits.io_weight"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
    }
}
