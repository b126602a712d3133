//! The policy data model and how it lowers an OCI spec.

use std::collections::HashSet;

use oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    Spec,
};
use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessRules {
    pub no_new_privileges: bool,
    /// The capability allowlist (`CAP_*` names).
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub tmpfs: Vec<Tmpfs>,
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
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Upper bound on the container's pids.max.
    pub pids: Option<i64>,
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

    fn invalid(&self, message: String) -> Error {
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
        if let Some(p) = self.limits.pids {
            if p < 1 {
                return Err(self.invalid(format!("limits.pids must be >= 1, got {p}")));
            }
        }
        Ok(())
    }

    fn refused(
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

    /// Lower `spec` to this policy. Returns what was enforced, one line per rule, for
    /// logs and `airlock policy explain`.
    pub fn apply(&self, spec: &mut Spec) -> Result<Vec<String>> {
        let mut enforced = Vec::new();
        self.apply_namespaces(spec, &mut enforced)?;
        self.apply_process(spec, &mut enforced)?;
        self.apply_filesystem(spec, &mut enforced);
        self.apply_limits(spec, &mut enforced);
        Ok(enforced)
    }

    fn apply_namespaces(&self, spec: &Spec, enforced: &mut Vec<String>) -> Result<()> {
        let present: HashSet<LinuxNamespaceType> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .map(|ns| {
                ns.iter()
                    .filter(|n| n.path().is_none())
                    .map(|n| n.typ())
                    .collect()
            })
            .unwrap_or_default();
        for name in ["network", "pid", "ipc", "uts"] {
            let typ = host_ns_type(name).expect("known");
            if !present.contains(&typ) && !self.namespaces.allow_host.iter().any(|a| a == name) {
                return Err(self.refused(
                    "linux.namespaces",
                    format!("host {name} namespace"),
                    format!("give the container its own {name} namespace"),
                ));
            }
        }
        enforced.push("namespaces: private pid, ipc, uts, network, mount".into());
        Ok(())
    }

    fn apply_process(&self, spec: &mut Spec, enforced: &mut Vec<String>) -> Result<()> {
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
            let lower = |set: &Option<HashSet<Capability>>| -> std::result::Result<Option<HashSet<Capability>>, Capability> {
                let Some(set) = set else { return Ok(None) };
                if let Some(extra) = set.iter().find(|c| !allowed.contains(c) && !defaults.contains(c)) {
                    return Err(*extra);
                }
                Ok(Some(set.intersection(&allowed).copied().collect()))
            };
            let refuse = |c: Capability| {
                self.refused(
                    "process.capabilities",
                    format!("CAP_{c}"),
                    "drop the capability from the pod's securityContext",
                )
            };
            caps.set_bounding(lower(caps.bounding()).map_err(refuse)?);
            caps.set_effective(lower(caps.effective()).map_err(refuse)?);
            caps.set_permitted(lower(caps.permitted()).map_err(refuse)?);
            caps.set_inheritable(lower(caps.inheritable()).map_err(refuse)?);
            caps.set_ambient(lower(caps.ambient()).map_err(refuse)?);
            process.set_capabilities(Some(caps));
        }
        enforced.push(format!(
            "capabilities: {}",
            if self.process.capabilities.is_empty() {
                "none".to_string()
            } else {
                self.process.capabilities.join(", ")
            }
        ));
        if self.process.no_new_privileges {
            process.set_no_new_privileges(Some(true));
            enforced.push("no_new_privs: on".into());
        }
        Ok(())
    }

    fn apply_filesystem(&self, spec: &mut Spec, enforced: &mut Vec<String>) {
        if self.filesystem.readonly_rootfs {
            if let Some(root) = spec.root_mut() {
                root.set_readonly(Some(true));
            }
            enforced.push("rootfs: read-only".into());
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
            enforced.push(format!("tmpfs: {} (size {}, noexec)", t.path, t.size));
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
            enforced.push("masked /proc and /sys paths: as runc, at least".into());
        }
    }

    fn apply_limits(&self, spec: &mut Spec, enforced: &mut Vec<String>) {
        let Some(ceiling) = self.limits.pids else {
            return;
        };
        let Some(linux) = spec.linux_mut() else {
            return;
        };
        let mut resources = linux
            .resources()
            .clone()
            .unwrap_or_else(|| LinuxResourcesBuilder::default().build().expect("empty"));
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
        linux.set_resources(Some(resources));
        enforced.push(format!("pids.max: {limit}"));
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

    #[test]
    fn strict_drops_default_caps_and_sets_nnp() {
        let mut spec = default_spec();
        let p = builtin("agent-strict").unwrap();
        let enforced = p.apply(&mut spec).unwrap();
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
        assert!(enforced.iter().any(|l| l.starts_with("pids.max: 512")));
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
        let linux = spec.linux_mut().as_mut().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Network)
            .collect();
        linux.set_namespaces(Some(ns));
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
    fn sizes() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
    }
}
