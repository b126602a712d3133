//! The `[user_namespace]` section: the container's root is an unprivileged host id range.
//!
//! The policy does no I/O, so the host range is an input: the caller (the shim) allocates one
//! per pod, sized by [`Policy::user_namespace_range_needed`], and hands it to
//! [`Policy::apply_in_pod`].

use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::model::Policy;
use crate::report::Report;
use crate::Result;

/// Ids per pod range: enough for every uid a distribution image uses (`nobody` is 65534).
pub const DEFAULT_RANGE_SIZE: u32 = 65536;

/// The `[user_namespace]` section of a policy. Absent means off.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserNamespace {
    /// Run the container in a user namespace whose root is an unprivileged host id range.
    #[serde(default)]
    pub enabled: bool,
    /// Ids in the range (container ids 0..size map to the pod's host range).
    #[serde(default = "default_size")]
    pub size: u32,
}

fn default_size() -> u32 {
    DEFAULT_RANGE_SIZE
}

impl Default for UserNamespace {
    fn default() -> Self {
        UserNamespace {
            enabled: false,
            size: DEFAULT_RANGE_SIZE,
        }
    }
}

impl UserNamespace {
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.enabled && !(1..=DEFAULT_RANGE_SIZE).contains(&self.size) {
            return Err(format!(
                "user_namespace.size must be between 1 and {DEFAULT_RANGE_SIZE} (one pod range), got {}",
                self.size
            ));
        }
        Ok(())
    }
}

/// A host id range allocated to a pod: container ids `0..size` are host uids
/// `host_uid..host_uid+size` and host gids `host_gid..host_gid+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

/// What the spec says about its user namespace.
enum SpecUserNs<'a> {
    /// No user namespace (or a new one without mappings: the same thing to us).
    None,
    /// A new user namespace with the pod's own mappings (CRI `hostUsers: false`).
    Mapped,
    /// Joins an existing user namespace (a pod container joining its sandbox's).
    Joins(&'a Path),
}

fn spec_userns(spec: &Spec) -> SpecUserNs<'_> {
    let Some(linux) = spec.linux() else {
        return SpecUserNs::None;
    };
    let Some(ns) = linux
        .namespaces()
        .as_ref()
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::User))
    else {
        return SpecUserNs::None;
    };
    if let Some(p) = ns.path() {
        return SpecUserNs::Joins(p);
    }
    let has = |m: &Option<Vec<LinuxIdMapping>>| m.as_ref().is_some_and(|m| !m.is_empty());
    if has(linux.uid_mappings()) || has(linux.gid_mappings()) {
        SpecUserNs::Mapped
    } else {
        SpecUserNs::None
    }
}

/// A namespace other than the user namespace that the spec joins by path, if any (a CRI
/// pod's network namespace): the runtime joins it before it creates the user namespace.
fn joined_namespace(spec: &Spec) -> Option<LinuxNamespaceType> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() != LinuxNamespaceType::User && n.path().is_some())
        .map(|n| n.typ())
}

impl Policy {
    /// The size of the host id range the caller must allocate for this container before
    /// [`Policy::apply_in_pod`], or `None` when it needs none (user namespaces off, or the spec
    /// brings its own mappings or joins a user namespace).
    pub fn user_namespace_range_needed(&self, spec: &Spec) -> Option<u32> {
        if !self.user_namespace.enabled {
            return None;
        }
        match spec_userns(spec) {
            SpecUserNs::None => Some(self.user_namespace.size),
            SpecUserNs::Mapped | SpecUserNs::Joins(_) => None,
        }
    }

    /// Puts the container in a user namespace mapped to `range` (when the policy wants one and
    /// the spec has none), or checks the spec's own: mappings must not map host id 0, and a
    /// joined user namespace must not be the node's.
    pub(crate) fn apply_user_namespace(
        &self,
        spec: &mut Spec,
        is_host_ns: &dyn Fn(LinuxNamespaceType, &Path) -> bool,
        range: Option<IdRange>,
        report: &mut Report,
    ) -> Result<()> {
        if !self.user_namespace.enabled {
            return Ok(());
        }
        match spec_userns(spec) {
            SpecUserNs::Joins(path) => {
                if is_host_ns(LinuxNamespaceType::User, path) {
                    return Err(self.refused(
                        "linux.namespaces",
                        format!("the host user namespace ({})", path.display()),
                        "leave out the user namespace path, or set hostUsers: false",
                    ));
                }
                report.enforce(format!(
                    "user namespace: joins the pod's ({})",
                    path.display()
                ));
                return Ok(());
            }
            SpecUserNs::Mapped => {
                let linux = spec.linux().as_ref().expect("mapped implies linux");
                for (field, maps) in [
                    ("linux.uidMappings", linux.uid_mappings()),
                    ("linux.gidMappings", linux.gid_mappings()),
                ] {
                    if let Some(m) = maps.iter().flatten().find(|m| maps_host_root(m)) {
                        return Err(self.refused(
                            field,
                            format!(
                                "container {} -> host {} (size {}), which maps host id 0",
                                m.container_id(),
                                m.host_id(),
                                m.size()
                            ),
                            "map the container to an unprivileged host range",
                        ));
                    }
                }
                report.enforce("user namespace: the pod's own mappings (host id 0 unmapped)");
                return Ok(());
            }
            SpecUserNs::None => {}
        }
        if let Some(t) = joined_namespace(spec) {
            // The runtime joins namespaces given by path (a CNI network namespace of a pod)
            // before it creates the user namespace, as root of the node's user namespace.
            report.enforce(format!(
                "user namespace: joins the {t:?} namespace it is given before creating its own"
            ));
        }
        let Some(r) = range else {
            report.enforce(
                "user namespace: required, not applied here (no host id range given; the shim \
                 allocates one per pod)",
            );
            return Ok(());
        };
        if r.size < self.user_namespace.size || r.host_uid == 0 || r.host_gid == 0 {
            return Err(self.invalid(format!(
                "user_namespace: the given host range (uid {}, gid {}, size {}) is not an \
                 unprivileged range of {} ids",
                r.host_uid, r.host_gid, r.size, self.user_namespace.size
            )));
        }
        let map = |host: u32| -> LinuxIdMapping {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(self.user_namespace.size)
                .build()
                .expect("all fields set")
        };
        crate::model::set_namespace(spec, LinuxNamespaceType::User, None);
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        linux.set_uid_mappings(Some(vec![map(r.host_uid)]));
        linux.set_gid_mappings(Some(vec![map(r.host_gid)]));
        report.enforce(format!(
            "user namespace: container root is host uid {} gid {} ({} ids)",
            r.host_uid, r.host_gid, self.user_namespace.size
        ));
        Ok(())
    }
}

fn maps_host_root(m: &LinuxIdMapping) -> bool {
    m.size() > 0 && m.host_id() == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;
    use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder};

    const R: IdRange = IdRange {
        host_uid: 1 << 30,
        host_gid: 1 << 30,
        size: DEFAULT_RANGE_SIZE,
    };

    fn no_host(_: LinuxNamespaceType, _: &Path) -> bool {
        false
    }

    fn mapping(host: u32) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(65536u32)
            .build()
            .unwrap()
    }

    fn with_userns(spec: &mut Spec, path: Option<&str>) {
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
        if let Some(p) = path {
            b = b.path(p);
        }
        ns.push(b.build().unwrap());
        linux.set_namespaces(Some(ns));
    }

    fn userns_of(spec: &Spec) -> Option<LinuxNamespace> {
        spec.linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::User)
            .cloned()
    }

    #[test]
    fn strict_and_default_map_root_to_the_given_range_baseline_does_not() {
        for name in ["agent-strict", "agent-default"] {
            let p = builtin(name).unwrap();
            let mut spec = Spec::default();
            assert_eq!(
                p.user_namespace_range_needed(&spec),
                Some(DEFAULT_RANGE_SIZE)
            );
            let report = p.apply_in_pod(&mut spec, &no_host, Some(R)).unwrap();
            assert!(
                report
                    .enforced
                    .iter()
                    .any(|l| l.contains("host uid 1073741824")),
                "{report:?}"
            );
            let linux = spec.linux().as_ref().unwrap();
            assert!(userns_of(&spec).unwrap().path().is_none());
            let u = &linux.uid_mappings().as_ref().unwrap()[0];
            assert_eq!(
                (u.container_id(), u.host_id(), u.size()),
                (0, 1 << 30, 65536)
            );
            let g = &linux.gid_mappings().as_ref().unwrap()[0];
            assert_eq!(g.host_id(), 1 << 30);
        }
        let baseline = builtin("baseline").unwrap();
        let mut spec = Spec::default();
        assert_eq!(baseline.user_namespace_range_needed(&spec), None);
        baseline.apply_in_pod(&mut spec, &no_host, Some(R)).unwrap();
        assert!(userns_of(&spec).is_none());
    }

    #[test]
    fn without_a_range_nothing_is_mapped_and_the_summary_says_so() {
        let mut spec = Spec::default();
        let report = builtin("agent-strict").unwrap().apply(&mut spec).unwrap();
        assert!(userns_of(&spec).is_none());
        assert!(
            report
                .enforced
                .iter()
                .any(|l| l.contains("not applied here")),
            "{report:?}"
        );
    }

    #[test]
    fn pod_mappings_are_kept_unless_they_map_host_root() {
        let strict = builtin("agent-strict").unwrap();
        let mut spec = Spec::default();
        with_userns(&mut spec, None);
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_uid_mappings(Some(vec![mapping(200_000)]));
        linux.set_gid_mappings(Some(vec![mapping(200_000)]));
        assert_eq!(strict.user_namespace_range_needed(&spec), None);
        let mut ok = spec.clone();
        strict.apply_in_pod(&mut ok, &no_host, None).unwrap();
        assert_eq!(
            ok.linux()
                .as_ref()
                .unwrap()
                .uid_mappings()
                .as_ref()
                .unwrap()[0]
                .host_id(),
            200_000
        );

        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_uid_mappings(Some(vec![mapping(0)]));
        let e = strict
            .apply_in_pod(&mut spec, &no_host, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux.uidMappings"), "{e}");
        assert!(e.contains("agent-strict"), "{e}");
        assert!(e.contains("host id 0"), "{e}");
    }

    #[test]
    fn joining_the_pods_user_namespace_is_kept_the_hosts_refused() {
        let strict = builtin("agent-strict").unwrap();
        let mut spec = Spec::default();
        with_userns(&mut spec, Some("/proc/42/ns/user"));
        assert_eq!(strict.user_namespace_range_needed(&spec), None);
        strict
            .apply_in_pod(&mut spec.clone(), &no_host, None)
            .unwrap();
        let e = strict
            .apply_in_pod(&mut spec, &|_, _| true, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host user namespace"), "{e}");
    }

    #[test]
    fn a_container_joining_a_pod_network_namespace_still_gets_its_user_namespace() {
        let strict = builtin("agent-strict").unwrap();
        let mut spec = Spec::default();
        let linux = spec.linux_mut().as_mut().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|mut n| {
                if n.typ() == LinuxNamespaceType::Network {
                    n.set_path(Some("/var/run/netns/cni-1".into()));
                }
                n
            })
            .collect();
        linux.set_namespaces(Some(ns));
        assert_eq!(
            strict.user_namespace_range_needed(&spec),
            Some(DEFAULT_RANGE_SIZE)
        );
        let report = strict.apply_in_pod(&mut spec, &no_host, Some(R)).unwrap();
        assert!(userns_of(&spec).unwrap().path().is_none());
        assert!(
            report.enforces("Network namespace it is given"),
            "{report:?}"
        );
        assert!(
            report
                .enforced
                .iter()
                .any(|l| l.contains("host uid 1073741824")),
            "{report:?}"
        );
    }

    #[test]
    fn a_range_smaller_than_the_policy_is_refused() {
        let mut spec = Spec::default();
        let small = IdRange { size: 10, ..R };
        let e = builtin("agent-strict")
            .unwrap()
            .apply_in_pod(&mut spec, &no_host, Some(small))
            .unwrap_err()
            .to_string();
        assert!(e.contains("user_namespace"), "{e}");
    }

    #[test]
    fn size_is_validated() {
        let base = "name = \"x\"\n[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = true\n[user_namespace]\nenabled = true\n";
        let e = Policy::parse(&format!("{base}size = 0\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("user_namespace.size"), "{e}");
        let p = Policy::parse(base, "x.toml").unwrap();
        assert_eq!(p.user_namespace.size, DEFAULT_RANGE_SIZE);
    }
}
