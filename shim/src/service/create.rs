//! Task.Create: the request checked, the sandbox's create, and the container registered with
//! its exit and OOM watchers.

use super::*;
use crate::sandbox::Created;

impl TaskService {
    pub(super) async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        debug!(bundle = %req.bundle, "create request");
        validate_id(&req.id)?;
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::InvalidArgument(
                "restoring from a checkpoint is not supported by airlock".into(),
            ));
        }
        let Created {
            container: sandbox,
            init,
            copier,
            console,
            update_rules,
        } = self.sandbox.create(&req).await?;
        let (tx, rx) = watch::channel(None);
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            init,
            sandbox,
            phase: Mutex::new(Phase::Created),
            exited: rx,
            copier: Arc::new(Mutex::new(copier)),
            console,
            execs: Mutex::new(HashMap::new()),
            oom: Mutex::new(OomCounter::default()),
            update_rules,
            cleanup: Mutex::new(Cleanup::NotStarted),
        });
        self.containers
            .lock()
            .await
            .insert(req.id.clone(), container.clone());
        self.spawn_exit_watcher(container.clone(), tx);
        self.spawn_oom_watcher(container.clone());

        let pid = container.pid();
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }
}
