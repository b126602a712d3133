//! Host access a container may ask for in its own spec: writable bind mounts of host paths and
//! device nodes. Both are beyond every built-in policy's ceiling unless the operator lists them
//! (`[filesystem] writable_host_paths`, `devices`).
//!
//! What a container runtime adds for every pod is not the pod's asking and stays allowed: the
//! bind mounts containerd's CRI makes from the pod sandbox's own state directory (`/etc/hosts`,
//! `/etc/hostname`, `/etc/resolv.conf`, `/dev/shm`, under
//! `.../io.containerd.grpc.v1.cri/sandboxes/<sandbox id>/`), the kubelet's per-pod volumes
//! (emptyDir, configMap, the service account token, under `.../pods/<pod uid>/`), and the
//! standard device set of runc and containerd (`/dev/null`, `zero`, `full`, `random`,
//! `urandom`, `tty`, `console`, `ptmx`, `pts`, and `/dev/net/tun`'s cgroup rule).

use std::path::{Component, Path};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, Mount, Spec};

use crate::model::Policy;
use crate::report::Report;
use crate::Result;

/// The annotation containerd's CRI sets to the pod's sandbox id.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation containerd's CRI sets to the pod's uid (the kubelet's `pods/<uid>` dir).
const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

/// Device nodes every container gets (runc's and containerd's default set).
const STANDARD_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/console",
    "/dev/ptmx",
];

/// (major, minor) of character devices that default cgroup rules allow (`None`: any minor).
const STANDARD_CHAR_DEVICES: &[(i64, Option<i64>)] = &[
    (1, Some(3)),    // null
    (1, Some(5)),    // zero
    (1, Some(7)),    // full
    (1, Some(8)),    // random
    (1, Some(9)),    // urandom
    (5, Some(0)),    // tty
    (5, Some(1)),    // console
    (5, Some(2)),    // ptmx
    (136, None),     // pts
    (10, Some(200)), // tun (allowed by runc's and containerd's defaults)
];

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn is_read_only(m: &Mount) -> bool {
    m.options()
        .iter()
        .flatten()
        .any(|o| o == "ro" || o == "rro")
}

/// Whether `path` is inside `dir` (component-wise, after rejecting `..`).
fn under(path: &Path, dir: &Path) -> bool {
    !path.components().any(|c| c == Component::ParentDir) && path.starts_with(dir)
}

/// The pod's ids that name the directories its runtime made for it (from CRI's annotations).
struct PodDirs {
    sandbox_id: Option<String>,
    sandbox_uid: Option<String>,
}

impl PodDirs {
    fn of(spec: &Spec) -> Self {
        let annotation = |k: &str| {
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(k))
                .filter(|v| !v.is_empty() && !v.contains('/'))
                .cloned()
        };
        PodDirs {
            sandbox_id: annotation(SANDBOX_ID),
            sandbox_uid: annotation(SANDBOX_UID),
        }
    }

    /// Whether `source` lies in a directory made for this pod by its runtime: the CRI
    /// sandbox's state dir `.../io.containerd.grpc.v1.cri/sandboxes/<sandbox id>/` or the
    /// kubelet's `.../pods/<pod uid>/`.
    fn contain(&self, source: &Path) -> bool {
        if source.components().any(|c| c == Component::ParentDir) {
            return false;
        }
        let parts: Vec<&std::ffi::OsStr> = source
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s),
                _ => None,
            })
            .collect();
        let in_sandbox = self.sandbox_id.as_deref().is_some_and(|id| {
            parts
                .windows(3)
                .any(|w| w[0] == "io.containerd.grpc.v1.cri" && w[1] == "sandboxes" && w[2] == id)
        });
        let in_pod = self
            .sandbox_uid
            .as_deref()
            .is_some_and(|uid| parts.windows(2).any(|w| w[0] == "pods" && w[1] == uid));
        in_sandbox || in_pod
    }
}

/// `none` for an empty operator list, else `prefix` and the list.
fn summary(list: &[String], none: &str, prefix: &str) -> String {
    if list.is_empty() {
        none.to_string()
    } else {
        format!("{prefix} {}", list.join(", "))
    }
}

fn cgroup_rule_text(d: &LinuxDeviceCgroup) -> String {
    let typ = d
        .typ()
        .map(|t| t.as_str().to_string())
        .unwrap_or("a".into());
    let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
    format!(
        "allow {typ} {}:{} {}",
        num(d.major()),
        num(d.minor()),
        d.access().as_deref().unwrap_or("rwm")
    )
}

/// Whether a cgroup device rule allows only what every container may have: mknod alone, or
/// access to a standard character device.
fn standard_rule(d: &LinuxDeviceCgroup) -> bool {
    if !d.allow() {
        return true;
    }
    let access = d.access().as_deref().unwrap_or("rwm");
    if access.chars().all(|c| c == 'm') {
        return true;
    }
    if !matches!(d.typ(), Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U)) {
        return false;
    }
    let (Some(major), minor) = (d.major(), d.minor()) else {
        return false;
    };
    STANDARD_CHAR_DEVICES
        .iter()
        .any(|(ma, mi)| *ma == major && (mi.is_none() || *mi == minor))
}

impl Policy {
    /// Writable bind mounts of host paths: allowed under `filesystem.writable_host_paths` and in
    /// the pod's own runtime-made directories; otherwise refused, or made read-only in clamp
    /// mode.
    pub(crate) fn apply_host_mounts(&self, spec: &mut Spec, report: &mut Report) -> Result<()> {
        let pod = PodDirs::of(spec);
        let allowed = |source: &Path| {
            pod.contain(source)
                || self
                    .filesystem
                    .writable_host_paths
                    .iter()
                    .any(|p| under(source, Path::new(p)))
        };
        let readable = |source: &Path| {
            self.filesystem
                .readonly_host_paths
                .as_ref()
                .is_none_or(|list| list.iter().any(|p| under(source, Path::new(p))))
        };
        // Read-only binds outside every list (a policy that lists readonly_host_paths): refused,
        // or left out in clamp mode.
        let mut left_out = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let Some(source) = m.source().as_deref() else {
                continue;
            };
            if !is_bind(m) || allowed(source) || readable(source) {
                continue;
            }
            self.excess(
                "mounts",
                format!(
                    "a bind of host path {} at {}",
                    source.display(),
                    m.destination().display()
                ),
                "use a volume of the pod's own, or have the operator list the path in \
                 filesystem.readonly_host_paths (or writable_host_paths)",
                "left out",
                report,
            )?;
            left_out.push(i);
        }
        if let Some(mounts) = spec.mounts_mut().as_mut() {
            let mut i = 0;
            mounts.retain(|_| {
                i += 1;
                !left_out.contains(&(i - 1))
            });
        }
        for m in spec.mounts_mut().iter_mut().flatten() {
            let Some(source) = m.source().as_deref() else {
                continue;
            };
            if !is_bind(m) || is_read_only(m) || allowed(source) {
                continue;
            }
            self.excess(
                "mounts",
                format!(
                    "a writable bind of host path {} at {}",
                    source.display(),
                    m.destination().display()
                ),
                "mount it read-only, or have the operator list it in filesystem.writable_host_paths",
                "made read-only",
                report,
            )?;
            let mut options: Vec<String> = m
                .options()
                .iter()
                .flatten()
                .filter(|o| *o != "rw")
                .cloned()
                .collect();
            options.push("ro".into());
            m.set_options(Some(options));
        }
        report.enforce(summary(
            &self.filesystem.writable_host_paths,
            "host paths: no writable bind mounts beyond the pod's own runtime dirs",
            "host paths: writable bind mounts only under",
        ));
        if let Some(list) = &self.filesystem.readonly_host_paths {
            report.enforce(summary(
                list,
                "host paths: no bind mounts at all beyond the pod's own runtime dirs",
                "host paths: read-only bind mounts only under",
            ));
        }
        Ok(())
    }

    /// Device nodes beyond the standard set (`linux.devices`) and cgroup device rules that
    /// allow more than it (`linux.resources.devices`): allowed when listed in
    /// `filesystem.devices`; otherwise refused, or left out in clamp mode.
    pub(crate) fn apply_devices(&self, spec: &mut Spec, report: &mut Report) -> Result<()> {
        let listed = |p: &Path| {
            STANDARD_DEVICES.iter().any(|d| Path::new(d) == p)
                || self.filesystem.devices.iter().any(|d| Path::new(d) == p)
        };
        // Numbers of the listed devices, to allow their cgroup rules.
        let mut allowed_numbers: Vec<(i64, i64)> = Vec::new();
        if let Some(linux) = spec.linux_mut() {
            if let Some(devices) = linux.devices().clone() {
                let mut kept = Vec::with_capacity(devices.len());
                for d in devices {
                    if listed(d.path()) {
                        allowed_numbers.push((d.major(), d.minor()));
                        kept.push(d);
                        continue;
                    }
                    self.excess(
                        "linux.devices",
                        format!("device {}", d.path().display()),
                        "leave the device out, or have the operator list it in filesystem.devices",
                        "left out",
                        report,
                    )?;
                }
                linux.set_devices(Some(kept));
            }
            let rules = linux.resources().as_ref().and_then(|r| r.devices().clone());
            if let Some(rules) = rules {
                let mut kept = Vec::with_capacity(rules.len());
                for d in rules {
                    let of_listed = d.major().zip(d.minor()).is_some_and(|n| {
                        allowed_numbers.contains(&n)
                            && d.access()
                                .as_deref()
                                .unwrap_or("rwm")
                                .chars()
                                .all(|c| "rwm".contains(c))
                    });
                    if standard_rule(&d) || of_listed {
                        kept.push(d);
                        continue;
                    }
                    self.excess(
                        "linux.resources.devices",
                        cgroup_rule_text(&d),
                        "allow only the standard devices, or have the operator list the device in filesystem.devices",
                        "left out",
                        report,
                    )?;
                }
                if let Some(r) = linux.resources_mut() {
                    r.set_devices(Some(kept));
                }
            }
        }
        report.enforce(summary(
            &self.filesystem.devices,
            "devices: the standard set only",
            "devices: the standard set and",
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, MountBuilder};
    use std::collections::HashMap;

    fn bind(src: &str, dst: &str, opts: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    fn with_mounts(extra: Vec<Mount>, annotations: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        let mut m = spec.mounts().clone().unwrap();
        m.extend(extra);
        spec.set_mounts(Some(m));
        let a: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec.set_annotations(Some(a));
        spec
    }

    fn clamp(name: &str) -> Policy {
        let mut p = builtin(name).unwrap();
        p.on_excess = crate::model::OnExcess::Clamp;
        p
    }

    #[test]
    fn a_writable_host_bind_is_refused_naming_the_path() {
        let mut spec = with_mounts(vec![bind("/etc", "/host-etc", &["rbind", "rw"])], &[]);
        let e = builtin("agent-strict")
            .unwrap()
            .apply(&mut spec)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mounts") && e.contains("/etc") && e.contains("agent-strict"),
            "{e}"
        );
        assert!(e.contains("writable_host_paths"), "{e}");
    }

    #[test]
    fn the_pods_own_runtime_dirs_are_allowed() {
        let mut spec = with_mounts(
            vec![
                bind(
                    "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/hosts",
                    "/etc/hosts",
                    &["rbind", "rw"],
                ),
                bind(
                    "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~empty-dir/scratch",
                    "/scratch",
                    &["rbind", "rw"],
                ),
            ],
            &[(SANDBOX_ID, "abc"), (SANDBOX_UID, "uid-1")],
        );
        builtin("agent-strict").unwrap().apply(&mut spec).unwrap();
        // Another pod's sandbox dir is not this pod's.
        let mut other = with_mounts(
            vec![bind(
                "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/other/hosts",
                "/etc/hosts",
                &["rbind", "rw"],
            )],
            &[(SANDBOX_ID, "abc")],
        );
        assert!(builtin("agent-strict").unwrap().apply(&mut other).is_err());
        // No climbing out with `..`.
        let mut climb = with_mounts(
            vec![bind(
                "/var/lib/kubelet/pods/uid-1/../../../../etc",
                "/x",
                &["rbind"],
            )],
            &[(SANDBOX_UID, "uid-1")],
        );
        assert!(builtin("agent-strict").unwrap().apply(&mut climb).is_err());
    }

    #[test]
    fn a_policy_that_lists_readable_paths_refuses_other_read_only_binds() {
        let mut p = builtin("agent-strict").unwrap();
        assert_eq!(p.filesystem.readonly_host_paths, Some(vec![]));
        let mut spec = with_mounts(vec![bind("/etc", "/host-etc", &["rbind", "ro"])], &[]);
        let e = p.apply(&mut spec).unwrap_err().to_string();
        assert!(
            e.contains("a bind of host path /etc at /host-etc")
                && e.contains("filesystem.readonly_host_paths"),
            "{e}"
        );
        p.filesystem.readonly_host_paths = Some(vec!["/srv/models".into()]);
        let mut spec = with_mounts(vec![bind("/srv/models/m1", "/m", &["rbind", "ro"])], &[]);
        p.apply(&mut spec).unwrap();
        // agent-default keeps read-only binds of any host path.
        let mut spec = with_mounts(vec![bind("/etc", "/host-etc", &["rbind", "ro"])], &[]);
        builtin("agent-default").unwrap().apply(&mut spec).unwrap();
        // Clamp mode leaves the bind out.
        let mut c = clamp("agent-strict");
        c.filesystem.readonly_host_paths = Some(vec![]);
        let mut spec = with_mounts(vec![bind("/etc", "/host-etc", &["rbind", "ro"])], &[]);
        let report = c.apply(&mut spec).unwrap();
        assert!(!spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.destination() == Path::new("/host-etc")));
        assert!(
            report.clamped.iter().any(|c| c.done.contains("left out")),
            "{report:?}"
        );
    }

    #[test]
    fn operator_listed_paths_may_be_writable() {
        let mut p = builtin("agent-strict").unwrap();
        p.filesystem.writable_host_paths = vec!["/srv/agents".into()];
        let mut spec = with_mounts(vec![bind("/srv/agents/a1", "/work", &["rbind"])], &[]);
        p.apply(&mut spec).unwrap();
        let mut spec = with_mounts(vec![bind("/srv/agents-other", "/work", &["rbind"])], &[]);
        assert!(p.apply(&mut spec).is_err());
    }

    #[test]
    fn clamp_mode_makes_the_bind_read_only_and_says_so() {
        let mut spec = with_mounts(vec![bind("/etc", "/host-etc", &["rbind", "rw"])], &[]);
        let mut p = clamp("agent-strict");
        p.filesystem.readonly_host_paths = Some(vec!["/etc".into()]);
        let report = p.apply(&mut spec).unwrap();
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/host-etc"))
            .unwrap();
        let opts = m.options().clone().unwrap();
        assert!(
            opts.contains(&"ro".into()) && !opts.contains(&"rw".into()),
            "{opts:?}"
        );
        assert!(
            report
                .clamped
                .iter()
                .any(|c| c.field == "mounts" && c.done.contains("made read-only")),
            "{report:?}"
        );
    }

    fn with_device(path: &str, major: i64, minor: i64) -> Spec {
        let mut spec = Spec::default();
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_devices(Some(vec![LinuxDeviceBuilder::default()
            .path(path)
            .typ(LinuxDeviceType::C)
            .major(major)
            .minor(minor)
            .build()
            .unwrap()]));
        let mut r = linux.resources().clone().unwrap_or_default();
        let mut rules = r.devices().clone().unwrap_or_default();
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(minor)
                .access("rwm")
                .build()
                .unwrap(),
        );
        r.set_devices(Some(rules));
        linux.set_resources(Some(r));
        spec
    }

    #[test]
    fn devices_beyond_the_standard_set_are_refused_or_left_out() {
        let mut spec = with_device("/dev/fuse", 10, 229);
        let e = builtin("agent-strict")
            .unwrap()
            .apply(&mut spec)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux.devices") && e.contains("/dev/fuse"),
            "{e}"
        );

        let mut spec = with_device("/dev/fuse", 10, 229);
        let report = clamp("agent-strict").apply(&mut spec).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.devices().as_ref().unwrap().is_empty());
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(rules.iter().all(standard_rule), "{rules:?}");
        assert_eq!(report.clamped.len(), 2, "{report:?}");

        // Listed by the operator: kept, with its cgroup rule.
        let mut p = builtin("agent-strict").unwrap();
        p.filesystem.devices = vec!["/dev/fuse".into()];
        let mut spec = with_device("/dev/fuse", 10, 229);
        p.apply(&mut spec).unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .devices()
                .as_ref()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_rule_allowing_every_device_is_refused() {
        let mut spec = Spec::default();
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut r = linux.resources().clone().unwrap_or_default();
        r.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()
            .unwrap()]));
        linux.set_resources(Some(r));
        let e = builtin("agent-default")
            .unwrap()
            .apply(&mut spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow a *:* rwm"), "{e}");
    }

    #[test]
    fn standard_rules_pass() {
        let rule = |t: LinuxDeviceType, ma: Option<i64>, mi: Option<i64>, acc: &str| {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(t)
                .access(acc);
            if let Some(m) = ma {
                b = b.major(m);
            }
            if let Some(m) = mi {
                b = b.minor(m);
            }
            b.build().unwrap()
        };
        assert!(standard_rule(&rule(LinuxDeviceType::C, None, None, "m")));
        assert!(standard_rule(&rule(LinuxDeviceType::B, None, None, "m")));
        assert!(standard_rule(&rule(
            LinuxDeviceType::C,
            Some(136),
            None,
            "rwm"
        )));
        assert!(standard_rule(&rule(
            LinuxDeviceType::C,
            Some(1),
            Some(3),
            "rwm"
        )));
        assert!(!standard_rule(&rule(
            LinuxDeviceType::B,
            Some(8),
            Some(0),
            "rw"
        )));
        assert!(!standard_rule(&rule(
            LinuxDeviceType::C,
            Some(10),
            Some(229),
            "rw"
        )));
    }
}
