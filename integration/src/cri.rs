//! A CRI client (the `k8s-cri` crate's RuntimeService, the API the kubelet uses) over the
//! harness's containerd socket: pod and container configs the way a kubelet fills them in, and
//! the calls of one pod's life. Used by `tests/cri.rs` and by the benchmark's CRI section.
//!
//! The containerd must run with the CRI plugin on ([`crate::Builder::cri`]) and the CRI images
//! imported ([`Containerd::import_cri_images`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;
pub use tonic::Status;

use crate::containerd::Containerd;

/// The CRI v1 messages, for callers without their own `k8s-cri` dependency.
pub use k8s_cri::v1 as api;

/// A CRI RuntimeService client and a temp dir for its pods' logs (removed on drop).
pub struct Cri {
    /// The RuntimeService client, for calls this type has no helper for.
    pub client: RuntimeServiceClient<Channel>,
    logs: tempfile::TempDir,
}

/// Namespace options of a pod: `network` as asked, a pid namespace per container, a shared IPC
/// namespace (the kubelet's defaults).
fn namespace_options(network: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Cri {
    /// Connects to `ctd`'s socket; pod logs go to a temp dir owned by the returned value.
    pub async fn connect(ctd: &Containerd) -> anyhow::Result<Cri> {
        let c = ctd.client().await?;
        Ok(Cri {
            client: RuntimeServiceClient::new(c.channel()),
            logs: tempfile::Builder::new()
                .prefix("airlock-cri-logs-")
                .tempdir()?,
        })
    }

    /// A pod config named `<name>-<pid>-<n>` (unique in this process) in the kubelet namespace
    /// `airlock-test`, with these annotations and network mode.
    pub fn pod_config(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
        network: NamespaceMode,
    ) -> PodSandboxConfig {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{name}-{}-{n}", std::process::id());
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: uid.clone(),
                uid: uid.clone(),
                namespace: "airlock-test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs.path().join(&uid).display().to_string(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(network)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with runtime handler `handler` (`airlock`, `runc`, ...); the pod's id.
    pub async fn run_pod(
        &mut self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let r = self
            .client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// A container running `cmd` in the harness's busybox image, logging to `<name>.log` in
    /// the pod's log directory.
    pub fn container_config(&self, name: &str, cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: crate::IMAGE_REF.into(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// CreateContainer in pod `pod`; the container's id.
    pub async fn create_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, Status> {
        Ok(self
            .client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// StartContainer.
    pub async fn start(&mut self, id: &str) -> Result<(), Status> {
        self.client
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// CreateContainer + StartContainer (a container that fails to start is removed); returns
    /// the container id.
    pub async fn start_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, Status> {
        let id = self.create_container(pod, pod_config, config).await?;
        if let Err(e) = self.start(&id).await {
            let _ = self.remove_container(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), Status> {
        self.client
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// ExecSync with a 30 s timeout.
    pub async fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, Status> {
        Ok(self
            .client
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await?
            .into_inner())
    }

    /// ContainerStatus (not verbose).
    pub async fn status(&mut self, id: &str) -> Result<ContainerStatus, Status> {
        self.client
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::internal(format!("ContainerStatus of {id}: no status")))
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&mut self, pod: &str) -> Result<(), Status> {
        self.client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await?;
        Ok(())
    }

    /// RemovePodSandbox (also removes the pod's containers).
    pub async fn remove_pod(&mut self, pod: &str) -> Result<(), Status> {
        self.client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await?;
        Ok(())
    }

    /// Stops and removes the containers (10 s grace), then stops and removes the pod, as the
    /// kubelet does when a pod is deleted.
    pub async fn teardown(&mut self, pod: &str, containers: &[String]) -> Result<(), Status> {
        for id in containers {
            self.client
                .stop_container(StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 10,
                })
                .await?;
            self.remove_container(id).await?;
        }
        self.stop_pod(pod).await?;
        self.remove_pod(pod).await
    }
}

/// The CRI log file of container `name` in a pod's log directory (`<dir>/<name>.log`).
pub fn log_file(pod_config: &PodSandboxConfig, name: &str) -> PathBuf {
    Path::new(&pod_config.log_directory).join(format!("{name}.log"))
}

/// Whether a CRI-format log (`<RFC3339Nano> <stream> <P|F> <line>` per line) holds `line` as a
/// full line on `stream` (`stdout` or `stderr`).
pub fn log_has_line(log: &str, stream: &str, line: &str) -> bool {
    log.lines().any(|l| {
        let mut f = l.splitn(4, ' ');
        let (_ts, s, tag, rest) = (f.next(), f.next(), f.next(), f.next());
        s == Some(stream) && tag == Some("F") && rest == Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::log_has_line;

    #[test]
    fn cri_log_lines() {
        let log = "2026-01-01T00:00:00.1Z stdout F ready\n2026-01-01T00:00:00.2Z stderr P par\n";
        assert!(log_has_line(log, "stdout", "ready"));
        assert!(!log_has_line(log, "stderr", "ready"));
        assert!(
            !log_has_line(log, "stderr", "par"),
            "a partial line is not a line"
        );
        assert!(!log_has_line("", "stdout", "ready"));
    }
}
