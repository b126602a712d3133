//! Requests on a created container: pause and resume, update, close of stdin, terminal
//! resize, signals.

use super::*;

impl TaskService {
    pub(super) async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.get(id).await?;
        {
            let mut phase = c.phase.lock().await;
            let t = if pause {
                Transition::Pause
            } else {
                Transition::Resume
            };
            let next = phase.next(t, Subject::Container(&c.id))?;
            if pause {
                c.sandbox.pause().await?;
            } else {
                c.sandbox.resume().await?;
            }
            *phase = next;
        }
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: c.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        }
        Ok(())
    }

    pub(super) async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        c.allows(Check::Update).await?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update carries no resources".into()))?;
        // containerd sends the runtime-spec LinuxResources as a JSON-typed Any; check it
        // here so a bad request gets a clear error without running the runtime, and nothing
        // is half-applied: values the kernel would refuse, and anything above the policy's
        // ceilings, are refused as a whole.
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "update resources ({}) are not an OCI LinuxResources JSON: {e}",
                    any.type_url
                ))
            })?;
        c.update_rules.check(&resources)?;
        c.start_settled().await;
        c.sandbox.update(&resources).await
    }

    pub(super) async fn do_close_io(&self, req: CloseIORequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        if !req.stdin {
            return Ok(());
        }
        let copier = if req.exec_id.is_empty() {
            c.copier.clone()
        } else {
            c.exec(&req.exec_id).await?.copier.clone()
        };
        copier.lock().await.close_stdin();
        Ok(())
    }

    /// Sets the window size of the init's or an exec's terminal.
    pub(super) async fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        let (console, what, terminal) = if req.exec_id.is_empty() {
            (
                c.console.clone(),
                format!("container {}", c.id),
                c.stdio.terminal,
            )
        } else {
            let e = c.exec(&req.exec_id).await?;
            (
                e.console.get().cloned(),
                format!("exec {} in container {}", e.id, c.id),
                e.stdio.terminal,
            )
        };
        let Some(console) = console else {
            if !terminal {
                // containerd's clients resize without asking first; runc's shim answers OK.
                debug!("{what} has no terminal: ResizePty ignored");
                return Ok(());
            }
            return Err(Error::FailedPrecondition(format!(
                "{what} has not started yet: its terminal does not exist; resize it after Start"
            )));
        };
        let size = |v: u32, name: &str| {
            u16::try_from(v).map_err(|_| {
                Error::InvalidArgument(format!(
                    "{name} {v} is too large for a terminal (max 65535)"
                ))
            })
        };
        let (rows, cols) = (size(req.height, "height")?, size(req.width, "width")?);
        // Off the runtime's thread: a sandbox may pass the size on (the microVM's agent).
        tokio::task::spawn_blocking(move || console.resize(rows, cols))
            .await
            .map_err(|e| Error::Runtime(format!("resize thread: {e}")))?
            .map_err(|e| Error::io(format!("resize the terminal of {what}"), e))
    }

    pub(super) async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        if !req.exec_id.is_empty() {
            let e = c.exec(&req.exec_id).await?;
            let Some(p) = e.started.get().filter(|_| e.exited.borrow().is_none()) else {
                return Err(Error::NotFound(format!(
                    "process of exec {} in {}: not running",
                    e.id, c.id
                )));
            };
            return match p.signal(req.signal as i32) {
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Err(Error::NotFound(
                    format!("process of exec {} in {}: already finished", e.id, c.id),
                )),
                r => r.map_err(|err| Error::io(format!("signal exec {}", e.id), err)),
            };
        }
        if req.all {
            // The cleanup at the init's exit (started only then) removes the cgroup only when
            // no process is left in it, and the runtime's state with it. Once it has, there is
            // nothing to signal: before the runtime runs (containerd 1.6's CRI sends a kill
            // --all before it deletes an exited sandbox), or when the init died of this signal
            // while the runtime was still at work (it reads its state again after signalling).
            if matches!(c.cleanup_outcome().await, Some(Ok(_))) {
                return Ok(());
            }
            c.start_settled().await;
            return match c.sandbox.kill_all(req.signal).await {
                Err(e) if matches!(c.cleanup_outcome().await, Some(Ok(_))) => {
                    debug!(id = %c.id, "kill --all raced the exit's cleanup, which found no process left: {e}");
                    Ok(())
                }
                r => r,
            };
        }
        c.allows(Check::Signal).await?;
        let r = c.init.signal(req.signal as i32);
        if r.is_ok() && req.signal == libc::SIGKILL as u32 && *c.phase.lock().await == Phase::Paused
        {
            // A frozen process dies only once thawed (runc does the same).
            if let Err(e) = c.sandbox.resume().await {
                warn!(id = %c.id, "thaw after SIGKILL of a paused container: {e}");
            }
        }
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Error::NotFound(format!(
                "process {} of container {}: already finished",
                c.pid(),
                c.id
            ))),
            Err(e) => Err(Error::io(format!("signal {} to {}", req.signal, c.id), e)),
        }
    }
}
