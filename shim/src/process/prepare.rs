//! The policy applied to a container's spec at Task.Create, and the node-side edits that go
//! with it (network namespace, bind sources, cgroup path, user namespace range, seccomp
//! programs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tracing::{debug, info, warn};

use super::create::open_bundle_to;
use super::ProcessSandbox;
use crate::error::{Error, Result};
use crate::process::bind_sources;
use crate::service::check_terminal;

impl ProcessSandbox {
    /// Resolve the container's policy (node config from the runtime options' `ConfigPath` or
    /// the default path, cached per shim; handler default or pod annotation) and write it
    /// into the bundle's config.json; returns the files of the seccomp programs to install
    /// (the pod's own profile first, the policy's last; from the node's seccomp cache).
    pub(super) async fn apply_policy(
        &self,
        bundle: &Path,
        id: &str,
        terminal: bool,
        options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
    ) -> Result<Applied> {
        let t0 = Instant::now();
        let config_path = crate::config::config_path_from_options(options)?;
        let config = self.config.get(config_path.as_deref())?;
        let config_us = t0.elapsed().as_micros() as u64;
        let path = bundle.join("config.json");
        let mut spec: Spec = crate::sandbox::read_spec(&path).await?;
        let t_read = t0.elapsed();
        check_terminal(
            spec.process().as_ref().and_then(|p| p.terminal()),
            terminal,
            "the container's spec",
        )?;
        crate::config::check_handler(config.handler(spec.annotations().as_ref()))?;
        let policy = config.select(spec.annotations().as_ref())?;
        // A CRI app container joins its sandbox's user namespace when the sandbox got one
        // from the policy (the pod then shares one user namespace and one range).
        let joins_pod = if policy.user_namespace.enabled {
            self.pod_user_namespace(&spec).await
        } else {
            None
        };
        let range = if let Some(userns) = &joins_pod {
            airlock_policies::set_namespace(&mut spec, LinuxNamespaceType::User, Some(userns));
            // Registers the container as a user of its pod's range (the bundle's group and
            // the range's lifetime); the same range the sandbox was mapped to.
            Some(
                self.pod_range(&spec, id, policy.user_namespace.size)
                    .await?,
            )
        } else {
            match policy.user_namespace_range_needed(&spec) {
                Some(size) => Some(self.pod_range(&spec, id, size).await?),
                None if policy.user_namespace.enabled => {
                    self.claim_pod_mappings(&spec, id).await?;
                    None
                }
                None => None,
            }
        };
        let t_range = t0.elapsed();
        let mut report = policy.apply_in_pod(&mut spec, &is_node_namespace, range)?;
        if let Some(line) = drop_memfd_noexec_without_kernel_support(&mut spec) {
            report.enforce(line);
        }
        let t_apply = t0.elapsed();
        if let Some(netns) = crate::process::netns::foreign_network_namespace(&spec) {
            // A pod network namespace made outside the container's user namespace: the shim
            // mounts its sysfs and writes its sysctls (see netns.rs).
            let t = Instant::now();
            let sysfs = crate::process::netns::sysfs_path(bundle);
            let sysfs = crate::process::netns::bind_sysfs_from(&mut spec, &sysfs).then_some(sysfs);
            let sysctls = crate::process::netns::take_net_sysctls(&mut spec);
            let identity = crate::process::netns::identity(&netns);
            // A later container of the pod, with no sysctls to write: bind the sysfs mounted
            // for an earlier one (it fails once that container is deleted).
            let prepared = match (&sysfs, sysctls.is_empty(), identity) {
                (Some(target), true, Some(key)) => {
                    let earlier = self.pod_sysfs.lock().unwrap().get(&key).cloned();
                    earlier.is_some_and(|source| {
                        crate::process::netns::bind_prepared(&source, target)
                            .inspect_err(|e| debug!("mount a new sysfs: {e}"))
                            .is_ok()
                    })
                }
                _ => false,
            };
            if !prepared && (sysfs.is_some() || !sysctls.is_empty()) {
                let (n, f, set) = (netns.clone(), sysfs.clone(), sysctls.clone());
                let r = tokio::task::spawn_blocking(move || {
                    crate::process::netns::prepare_in(&n, f.as_deref(), &set)
                })
                .await
                .map_err(|e| Error::Runtime(format!("network namespace thread: {e}")))
                .and_then(|r| r);
                if let Err(e) = r {
                    crate::process::bind_sources::cleanup(bundle);
                    return Err(e);
                }
                if let (Some(path), Some(key)) = (&sysfs, identity) {
                    self.pod_sysfs.lock().unwrap().insert(key, path.clone());
                }
            }
            if sysfs.is_some() || !sysctls.is_empty() {
                report.enforce(format!(
                    "pod network namespace: /sys mounted for it by the shim{}",
                    if sysctls.is_empty() {
                        String::new()
                    } else {
                        format!(", sysctls {sysctls:?} set by the shim")
                    }
                ));
                info!(
                    netns = %netns.display(),
                    sysfs_of_an_earlier_container = prepared,
                    elapsed_us = t.elapsed().as_micros() as u64,
                    "pod network namespace prepared (sysfs, net sysctls)"
                );
            }
        }
        for c in &report.clamped {
            warn!(policy = %report.policy, field = c.field, asked = %c.asked, "clamped: {c}: the container asked for more than its policy allows (on_excess = \"clamp\")");
        }
        info!(
            policy = %policy.name,
            handler = %config.handler(spec.annotations().as_ref()),
            config = %config.file.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
            config_us,
            enforced = %report.enforced.join("; "),
            clamped = report.clamped.len(),
            "policy applied"
        );
        if let Some(r) = range {
            bind_sources::check_bundle_reachable(bundle, r.host_uid, r.host_gid)
                .map_err(Error::FailedPrecondition)?;
            absolute_cgroups_path(&mut spec, &self.namespace, id);
            open_bundle_to(bundle, r.host_gid)?;
        }
        record_userns_range(&mut spec, range.map(|r| r.host_uid));
        let rebound = bind_sources::expose(&mut spec, bundle)
            .map_err(|e| Error::io("prepare the container's bind mounts", e))?;
        if rebound > 0 {
            info!(
                rebound,
                "bind sources the container's root cannot reach, bound into the bundle"
            );
        }

        let t_binds = t0.elapsed();
        // Keyed by what is compiled (not the policy's name: node configs can differ).
        let mut files: Vec<PathBuf> = Vec::new();
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            let key = serde_json::to_string(profile).unwrap_or_default();
            let pod = self.seccomp.programs(
                &format!("pod profile {key}"),
                || airlock_policies::compile_pod_profile(profile).map_err(Error::InvalidArgument),
                bundle,
            )?;
            info!(
                filters = pod.len(),
                "the pod's own seccomp profile applies too"
            );
            files.extend(pod.iter().cloned());
        }
        let key = serde_json::to_string(&policy.seccomp).unwrap_or_default();
        let own = self.seccomp.programs(
            &format!("policy {key}"),
            || Ok(policy.compile_seccomp()?.into_iter().collect()),
            bundle,
        )?;
        files.extend(own.iter().cloned());

        let t_seccomp = t0.elapsed();
        let out = serde_json::to_vec(&spec)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialise the OCI spec: {e}")))?;
        // The report beside the spec, for readers outside the shim (the demo), in the same
        // trip to the blocking pool as the spec.
        let report_file = bundle.join(airlock_policies::REPORT_FILE);
        let report_json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        let spec_file = path.clone();
        let reported = tokio::task::spawn_blocking(move || {
            std::fs::write(&spec_file, out)?;
            Ok::<_, std::io::Error>(
                std::fs::write(&report_file, report_json)
                    .map_err(|e| format!("write the policy report {}: {e}", report_file.display())),
            )
        })
        .await
        .map_err(|e| Error::Runtime(format!("spec writer thread: {e}")))?
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        if let Err(e) = reported {
            warn!("{e}");
        }
        let us = |d: Duration| d.as_micros() as u64;
        debug!(
            read_us = us(t_read),
            range_us = us(t_range),
            apply_us = us(t_apply),
            netns_binds_us = us(t_binds),
            seccomp_us = us(t_seccomp),
            written_us = us(t0.elapsed()),
            "policy steps (cumulative)"
        );
        Ok(Applied {
            seccomp: files,
            idmap_rootfs: range.is_some(),
            update_rules: policy.update_rules(),
            poststart_hooks: spec
                .hooks()
                .as_ref()
                .and_then(|h| h.poststart().as_ref())
                .is_some_and(|h| !h.is_empty()),
            new_netns: crate::process::netns::namespace_path(&spec, LinuxNamespaceType::Network)
                == Some(None),
            pod_sandbox: spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get(crate::shim::CONTAINER_TYPE_ANNOTATION))
                .is_some_and(|t| t == "sandbox"),
        })
    }
}

/// Whether the namespace at `path` is the node's own (this shim's or PID 1's), as opposed to
/// a pod's namespace that a container joins. Unknown paths count as the node's: refuse.
pub(crate) fn is_node_namespace(typ: LinuxNamespaceType, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let name = match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        _ => return true,
    };
    let Ok(target) = std::fs::metadata(path) else {
        return true;
    };
    ["/proc/self/ns", "/proc/1/ns"].iter().any(|dir| {
        std::fs::metadata(Path::new(dir).join(name))
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    })
}

/// A kernel before Linux 6.3 has no `vm.memfd_noexec`: the sysctl a policy asks for is left
/// out of the spec (the init's write would fail the create) and the report says so.
pub(super) fn drop_memfd_noexec_without_kernel_support(spec: &mut Spec) -> Option<String> {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let supported = *SUPPORTED.get_or_init(|| Path::new("/proc/sys/vm/memfd_noexec").exists());
    if supported {
        return None;
    }
    let sysctl = spec.linux_mut().as_mut()?.sysctl_mut().as_mut()?;
    sysctl.remove(airlock_policies::MEMFD_NOEXEC)?;
    Some(
        "memfd: executable memfds stay possible (this kernel has no vm.memfd_noexec; Linux >= 6.3 has)"
            .into(),
    )
}

/// Records the start of the container's user namespace range in its spec
/// ([`crate::process::userns::HOST_ANNOTATION`], read by `shim delete`), or removes the annotation when
/// the container has no range of ours (a pod's own value is never trusted).
pub(super) fn record_userns_range(spec: &mut Spec, host: Option<u32>) {
    let key = crate::process::userns::HOST_ANNOTATION;
    let had = spec
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(key));
    if host.is_none() && !had {
        return;
    }
    let mut a = spec.annotations().clone().unwrap_or_default();
    a.remove(key);
    if let Some(h) = host {
        a.insert(key.to_string(), h.to_string());
    }
    spec.set_annotations(Some(a));
}

/// libcontainer 0.7 forces its systemd cgroup driver for a user-namespaced container whose
/// cgroupsPath is relative (or missing) on a cgroup v2 host, and that driver cannot work
/// without systemd: make the path absolute (the same cgroup for cgroupfs).
pub(super) fn absolute_cgroups_path(spec: &mut Spec, namespace: &str, id: &str) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let path = match linux.cgroups_path() {
        Some(p) if p.is_absolute() => return,
        Some(p) => Path::new("/").join(p),
        None => PathBuf::from(format!("/{namespace}/{id}")),
    };
    linux.set_cgroups_path(Some(path));
}

/// What applying the policy produced for the runtime.
pub(super) struct Applied {
    pub(super) seccomp: Vec<PathBuf>,
    /// What the policy keeps enforcing on Task.Update.
    pub(super) update_rules: airlock_policies::UpdateRules,
    /// The policy mapped the container to its pod's host range: idmap the rootfs to it.
    pub(super) idmap_rootfs: bool,
    /// The spec has poststart hooks (the runtime runs them, so it also does the start).
    pub(super) poststart_hooks: bool,
    /// A CRI pod sandbox: the pod's app containers come next.
    pub(super) pod_sandbox: bool,
    /// The runtime makes the container a network namespace of its own (its `lo` starts down).
    pub(super) new_netns: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_userns_range_annotation_is_ours_alone() {
        let key = crate::process::userns::HOST_ANNOTATION;
        let mut spec = Spec::default();
        spec.set_annotations(None);
        record_userns_range(&mut spec, None);
        assert_eq!(spec.annotations(), &None, "nothing added without a range");
        record_userns_range(&mut spec, Some(1 << 30));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[key],
            (1u32 << 30).to_string()
        );
        // A pod's own value (the CRI plugin passes airlock.dev/* annotations through) is
        // replaced, or removed when the container has no range of ours.
        let mut a = HashMap::from([(key.to_string(), "12345".to_string())]);
        a.insert("other".into(), "kept".into());
        spec.set_annotations(Some(a.clone()));
        record_userns_range(&mut spec, None);
        let got = spec.annotations().clone().unwrap();
        assert!(!got.contains_key(key));
        assert_eq!(got["other"], "kept");
        spec.set_annotations(Some(a));
        record_userns_range(&mut spec, Some(1 << 30));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[key],
            (1u32 << 30).to_string()
        );
    }
}
