//! Exits: the init's exit and OOM watchers, the cleanup when a container's processes are all
//! gone, and Task.Delete of a container.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

impl TaskService {
    /// Publishes TaskOOM for each OOM kill in the container while it runs, woken by the
    /// sandbox (the kernel's notification in the process sandbox, see `process/oom.rs`).
    pub(super) fn spawn_oom_watcher(&self, c: Arc<Container>) {
        let events = self.events.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let mut exited = c.exited.clone();
            loop {
                tokio::select! {
                    r = c.sandbox.oom_notice() => {
                        if let Err(e) = r {
                            if e.kind() != std::io::ErrorKind::Unsupported {
                                warn!(id = %c.id, "cannot watch the container's memory for OOM kills: {e}");
                            }
                            return;
                        }
                        publish_oom(&*events, &namespace, &c).await;
                    }
                    _ = exited.changed() => return,
                }
            }
        });
    }

    pub(super) fn spawn_exit_watcher(
        &self,
        c: Arc<Container>,
        tx: watch::Sender<Option<ExitInfo>>,
    ) {
        let events = self.events.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let exit = match c.init.wait().await {
                Ok(e) => e,
                Err(e) => {
                    warn!(id = %c.id, "waiting for the container's init failed: {e}");
                    ExitInfo::lost()
                }
            };
            // Execs die with the init's pid namespace; report their exits before the init's
            // (as runc's shim does). Without a private pid namespace, kill them.
            let execs: Vec<_> = c.execs.lock().await.values().cloned().collect();
            for e in &execs {
                if let Some(p) = e.started.get() {
                    if e.exited.borrow().is_none() {
                        let _ = p.signal(libc::SIGKILL);
                    }
                }
            }
            for e in &execs {
                if e.started.get().is_some() {
                    let _ = tokio::time::timeout(DRAIN_LIMIT, wait_watch(&e.exited)).await;
                }
            }
            c.copier.lock().await.drain(DRAIN_LIMIT).await;
            // An OOM kill that ended the init is reported before its exit (TaskOOM, then
            // TaskExit), also when the watcher has not seen the notification yet.
            publish_oom(&*events, &namespace, &c).await;
            // Nothing of the container runs any more: its cgroup, state and rootfs mount can
            // go now, while containerd and its client learn of the exit, instead of on the
            // Delete that follows. Not before a Start that is still at work has finished (it
            // holds the phase lock while it records the start in the state file): a workload
            // that exits at once would otherwise have its state removed under that write.
            let mut phase = c.phase.lock().await;
            *c.cleanup.lock().await =
                Cleanup::Running(tokio::spawn(Self::clean_up_stopped(c.clone())));
            *phase = Phase::Stopped(exit);
            drop(phase);
            let _ = tx.send(Some(exit));
            info!(id = %c.id, pid = c.pid(), status = exit.status, "container exited");
            publish(
                &*events,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                task_exit(&c.id, &c.id, c.pid(), exit),
            )
            .await;
        });
    }

    pub(super) async fn wait_exit(c: &Container) -> ExitInfo {
        wait_watch(&c.exited).await
    }

    /// Removes what a container whose processes have all exited leaves behind (in its
    /// sandbox: state, cgroup, rootfs mount). Safe to repeat.
    pub(super) async fn clean_up_stopped(c: Arc<Container>) -> Result<CleanupTimes> {
        c.sandbox.clean_up_stopped().await
    }

    pub(super) async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.get(&req.id).await?;
        if !req.exec_id.is_empty() {
            return self.delete_exec(&c, &req.exec_id).await;
        }
        let phase = *c.phase.lock().await;
        phase.allows(Check::Delete, Subject::Container(&c.id), c.pid())?;
        if phase == Phase::Created {
            // Never started: end the waiting init first, so its exit is reported in order.
            let _ = c.init.signal(libc::SIGKILL);
        }
        let exit = Self::wait_exit(&c).await;
        let t0 = Instant::now();
        // The exit watcher started the cleanup when the init exited; a failed one is retried
        // here, so that its error reaches the caller.
        let times = match c.cleanup_outcome().await {
            Some(Ok(t)) => t,
            outcome => {
                if let Some(Err(e)) = outcome {
                    debug!(id = %c.id, "cleanup after exit failed, retrying: {e}");
                }
                Self::clean_up_stopped(c.clone()).await?
            }
        };
        let waited = t0.elapsed();
        c.sandbox.release().await;
        c.copier.lock().await.abort_stdin();
        self.containers.lock().await.remove(&c.id);
        crate::orphans::forget(Path::new(crate::orphans::DIR), &self.namespace, &c.id);
        info!(
            state_us = times.state_us,
            unmount_us = times.unmount_us,
            waited_us = waited.as_micros() as u64,
            release_us = (t0.elapsed() - waited).as_micros() as u64,
            "container deleted"
        );
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: c.pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        )
        .await;
        Ok(DeleteResponse {
            pid: c.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }
}

pub(super) async fn wait_watch(rx: &watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    let mut rx = rx.clone();
    loop {
        if let Some(e) = *rx.borrow_and_update() {
            return e;
        }
        if rx.changed().await.is_err() {
            // The watcher is gone without a result; report what a killed process reports.
            return ExitInfo::lost();
        }
    }
}

/// Publishes one TaskOOM if the sandbox counted OOM kills not yet reported.
pub(super) async fn publish_oom(events: &dyn EventSink, namespace: &str, c: &Container) {
    let counter = c.oom.lock().await;
    let Some(kills) = c.sandbox.oom_kills() else {
        return;
    };
    if counter.catch_up(kills) {
        warn!(id = %c.id, kills, "OOM kill in the container's cgroup");
        publish(
            events,
            namespace,
            topics::TASK_OOM_EVENT_TOPIC,
            TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            },
        )
        .await;
    }
}

/// TaskExit of process `id` (the container's own id for its init) in `container`.
pub(super) fn task_exit(container: &str, id: &str, pid: u32, exit: ExitInfo) -> TaskExit {
    TaskExit {
        container_id: container.to_owned(),
        id: id.to_owned(),
        pid,
        exit_status: exit.status,
        exited_at: MessageField::some(timestamp(exit.at)),
        ..Default::default()
    }
}

/// OOM kills already reported for a container.
#[derive(Debug, Default)]
pub struct OomCounter {
    reported: AtomicU64,
}

impl OomCounter {
    /// Starts counting from `kills` (those happened before the container existed).
    #[cfg(test)]
    pub fn starting_at(kills: u64) -> Self {
        OomCounter {
            reported: AtomicU64::new(kills),
        }
    }

    /// Records `kills`; true if that is more than was reported (publish one TaskOOM).
    pub fn catch_up(&self, kills: u64) -> bool {
        self.reported.fetch_max(kills, Ordering::AcqRel) < kills
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kill_is_reported_once() {
        let c = OomCounter::starting_at(2);
        assert!(!c.catch_up(2), "kills before the container are not its own");
        assert!(c.catch_up(3));
        assert!(
            !c.catch_up(3),
            "the exit path and the watcher must not both report it"
        );
        assert!(c.catch_up(5));
    }
}
