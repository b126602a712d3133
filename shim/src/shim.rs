//! The shim's lifecycle entry points: `start` (spawn or reuse the pod's shim daemon),
//! `delete` (clean up after a shim that died) and serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{Config, DeleteResponse, Error as ShimError, Flags, StartOpts};
use tracing::{info, warn};

use crate::runtime::Runtime;
use crate::service::{unmount, TaskService};

/// Annotation containerd's CRI sets on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

pub struct AirlockShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// The ttrpc socket this shim serves (serve mode only).
    socket: String,
}

/// The key that groups containers into one shim: the pod's sandbox id, else the container's.
pub fn grouping_key(bundle: &Path, id: &str) -> String {
    let Ok(raw) = std::fs::read(bundle.join("config.json")) else {
        return id.to_string();
    };
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    serde_json::from_slice::<Partial>(&raw)
        .ok()
        .and_then(|p| p.annotations.get(SANDBOX_ID_ANNOTATION).cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

#[async_trait]
impl Shim for AirlockShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            crate::logging::init_fifo(args.debug);
        } else {
            crate::logging::init_stderr(args.debug);
        }
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        AirlockShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            socket: args.socket.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = grouping_key(&self.bundle, &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file(
            self.bundle.join("address"),
            &address,
        )
        .await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        info!(id = %self.id, "cleaning up after a shim that is gone");
        let runtime =
            Runtime::locate(&self.namespace).map_err(|e| ShimError::Other(e.to_string()))?;
        if let Err(e) = runtime.delete(&self.id, true).await {
            warn!(id = %self.id, "runtime delete: {e}");
        }
        unmount(&self.bundle.join("rootfs"));
        crate::bind_sources::cleanup(&self.bundle);
        let member = crate::service::userns_member(&self.namespace, &self.id);
        match crate::userns::RangeAllocator::default().release(&member) {
            Ok(Some(host)) => info!(host, "user namespace range released"),
            Ok(None) => {}
            Err(e) => warn!("release user namespace range: {e}"),
        }
        remove_dead_socket(&self.bundle).await;
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // Remove our socket ourselves: the crate removes it through the bundle's `address` file,
        // which containerd may already have deleted with the bundle by then.
        let path = self.socket.trim_start_matches("unix://");
        if !path.is_empty() {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let runtime = match Runtime::locate(&self.namespace) {
            Ok(r) => r,
            Err(e) => {
                // Every create will fail with this message; keep serving so it reaches the user.
                warn!("{e}");
                Runtime::new(
                    PathBuf::from(crate::runtime::RUNTIME_BINARY),
                    crate::runtime::state_root(&self.namespace),
                )
            }
        };
        TaskService::new(
            self.namespace.clone(),
            publisher,
            self.exit.clone(),
            runtime,
        )
    }
}

/// Remove the shim socket named in the bundle's `address` file if nothing serves it.
async fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = tokio::fs::read_to_string(bundle.join("address")).await else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://").to_string();
    if path.is_empty() {
        return;
    }
    if tokio::net::UnixStream::connect(&path).await.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_uses_sandbox_annotation() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(grouping_key(d.path(), "c1"), "c1");
        std::fs::write(
            d.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping_key(d.path(), "c1"), "pod1");
    }
}
