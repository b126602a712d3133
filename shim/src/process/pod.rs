//! The pod's user namespace: the range its containers share, and the mappings a pod brings.

use std::path::PathBuf;
use std::time::Instant;

use airlock_policies::IdRange;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tracing::info;

use super::prepare::is_node_namespace;
use super::{userns_member, ProcessSandbox};
use crate::error::{Error, Result};

impl ProcessSandbox {
    /// The user namespace of this pod's sandbox, when `spec` has none of its own and joins
    /// namespaces of one of this shim's running containers by `/proc/<pid>/ns/...` (CRI's app
    /// containers join their sandbox's network, IPC and UTS namespaces that way) and that
    /// container runs in a user namespace other than the node's. Only this shim's own
    /// containers count: they are the pod's, so a container never joins another pod's range.
    pub(super) async fn pod_user_namespace(&self, spec: &Spec) -> Option<PathBuf> {
        let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
        if namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
        {
            return None;
        }
        let pids: Vec<u32> = namespaces
            .iter()
            .filter_map(|n| n.path().as_ref())
            .filter_map(|p| {
                let rest = p.strip_prefix("/proc").ok()?;
                let mut parts = rest.components();
                let pid = parts.next()?.as_os_str().to_str()?.parse::<u32>().ok()?;
                (parts.next()?.as_os_str() == "ns").then_some(pid)
            })
            .collect();
        if pids.is_empty() {
            return None;
        }
        let ours = self
            .inits
            .lock()
            .unwrap()
            .values()
            .any(|pid| pids.contains(pid));
        let pid = pids[0];
        if !ours || pids.iter().any(|p| *p != pid) {
            return None;
        }
        let userns = PathBuf::from(format!("/proc/{pid}/ns/user"));
        (!is_node_namespace(LinuxNamespaceType::User, &userns)).then_some(userns)
    }

    /// The host id range of `spec`'s pod (its CRI sandbox id, else the container itself),
    /// allocated on first use; records `id` as one of its users.
    pub(super) async fn pod_range(&self, spec: &Spec, id: &str, size: u32) -> Result<IdRange> {
        let t = Instant::now();
        let key = self.pod_key(spec, id);
        let (a, member) = (self.userns.clone(), userns_member(&self.namespace, id));
        let host = tokio::task::spawn_blocking(move || a.acquire(&key, &member, size))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("user namespace range: {e}")))?
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        info!(
            host,
            size,
            elapsed_us = t.elapsed().as_micros() as u64,
            "user namespace range of the pod"
        );
        Ok(IdRange {
            host_uid: host,
            host_gid: host,
            size,
        })
    }

    /// The node-wide key of the container's pod in the user namespace registry:
    /// `<namespace>/<sandbox id>` for a CRI pod's containers, `<namespace>/<id>` for a container
    /// without a pod (`ctr run`).
    pub(super) fn pod_key(&self, spec: &Spec, id: &str) -> String {
        let pod = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::shim::SANDBOX_ID_ANNOTATION))
            .filter(|s| !s.is_empty())
            .map_or(id, String::as_str);
        format!("{}/{pod}", self.namespace)
    }

    /// Checks the pod's own uid/gid mappings (`ctr run --uidmap`, CRI `hostUsers: false`) and
    /// registers them node-wide, so no two pods share host ids and none covers the node's
    /// users or Airlock's pool ([`crate::process::userns::pod_supplied_ranges`]). Released with the
    /// container, like a pool range.
    pub(super) async fn claim_pod_mappings(&self, spec: &Spec, id: &str) -> Result<()> {
        let ranges =
            crate::process::userns::pod_supplied_ranges(spec).map_err(Error::InvalidArgument)?;
        if ranges.is_empty() {
            return Ok(());
        }
        let key = self.pod_key(spec, id);
        let (a, member) = (self.userns.clone(), userns_member(&self.namespace, id));
        let r = ranges.clone();
        let host = tokio::task::spawn_blocking(move || a.claim(&key, &member, &r))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("user namespace range: {e}")))?
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        info!(
            host,
            ?ranges,
            "the pod's own user namespace mappings registered"
        );
        Ok(())
    }
}
