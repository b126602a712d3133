//! Exec: processes started in a running container, confined to the init's privileges.

use super::exit::task_exit;
use super::*;

impl TaskService {
    /// Register an exec (containerd calls Exec, then Start with the exec id).
    pub(super) async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id).await?;
        validate_id(&req.exec_id)?;
        c.allows(Check::Exec).await?;
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec request carries no process spec".into()))?;
        let mut process: oci_spec::runtime::Process =
            serde_json::from_slice(&any.value).map_err(|e| {
                Error::InvalidArgument(format!("exec process spec is not an OCI Process: {e}"))
            })?;
        // The request decides, as in runc's shim: clients copy the container's process
        // (terminal: false) and ask for a tty in the request (`kubectl exec -it`).
        process.set_terminal(Some(req.terminal));
        let init = read_init_process(&c.bundle).await?;
        confine_exec(&mut process, &init);
        let mut execs = c.execs.lock().await;
        if execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, c.id
            )));
        }
        let (tx, rx) = watch::channel(None);
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Exec {
                id: req.exec_id.clone(),
                process,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                started: std::sync::OnceLock::new(),
                phase: Mutex::new(Phase::Created),
                exited_tx: tx,
                exited: rx,
                copier: Arc::new(Mutex::new(Copier::default())),
                console: std::sync::OnceLock::new(),
            }),
        );
        drop(execs);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(())
    }

    pub(super) async fn start_exec(&self, c: &Arc<Container>, exec_id: &str) -> Result<u32> {
        let e = c.exec(exec_id).await?;
        let t0 = Instant::now();
        {
            let mut phase = e.phase.lock().await;
            let running = phase.next(
                Transition::Start,
                Subject::Exec {
                    container: &c.id,
                    exec: exec_id,
                },
            )?;
            c.allows(Check::StartExecIn).await?;
            let started = c.sandbox.exec(exec_id, &e.process, &e.stdio).await?;
            if let Some(console) = started.console {
                let _ = e.console.set(console);
            }
            let _ = e.started.set(started.process);
            *e.copier.lock().await = started.copier;
            *phase = running;
        }
        self.spawn_exec_watcher(c.clone(), e.clone());
        let pid = e.pid();
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            },
        )
        .await;
        info!(
            exec_id,
            pid,
            exec_us = t0.elapsed().as_micros() as u64,
            "exec started"
        );
        Ok(pid)
    }

    pub(super) fn spawn_exec_watcher(&self, c: Arc<Container>, e: Arc<Exec>) {
        let events = self.events.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let Some(process) = e.started.get().cloned() else {
                return;
            };
            let exit = process.wait().await.unwrap_or_else(|err| {
                warn!(id = %c.id, exec_id = %e.id, "waiting for the exec failed: {err}");
                ExitInfo::lost()
            });
            e.copier.lock().await.drain(DRAIN_LIMIT).await;
            *e.phase.lock().await = Phase::Stopped(exit);
            let _ = e.exited_tx.send(Some(exit));
            info!(id = %c.id, exec_id = %e.id, status = exit.status, "exec exited");
            publish(
                &*events,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                task_exit(&c.id, &e.id, process.pid(), exit),
            )
            .await;
        });
    }

    pub(super) async fn delete_exec(&self, c: &Container, exec_id: &str) -> Result<DeleteResponse> {
        let e = c.exec(exec_id).await?;
        let phase = *e.phase.lock().await;
        let who = Subject::Exec {
            container: &c.id,
            exec: exec_id,
        };
        phase.allows(Check::Delete, who, e.pid())?;
        // A registered exec that never started ends with 0.
        let exit = phase.exit().unwrap_or(ExitInfo {
            status: 0,
            at: SystemTime::now(),
        });
        e.copier.lock().await.abort_stdin();
        c.execs.lock().await.remove(exec_id);
        Ok(DeleteResponse {
            pid: e.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }
}

/// The init's process as the policy left it in the bundle's config.json.
pub(super) async fn read_init_process(bundle: &Path) -> Result<oci_spec::runtime::Process> {
    let path = bundle.join("config.json");
    let raw = tokio::fs::read(&path)
        .await
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let spec: Spec = serde_json::from_slice(&raw).map_err(|e| {
        Error::InvalidArgument(format!(
            "the bundle's OCI spec {} is malformed: {e}",
            path.display()
        ))
    })?;
    spec.process()
        .clone()
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no process", path.display())))
}

/// Holds an exec to the policy of its container's init: containerd builds the exec's
/// process from its own copy of the spec (before our policy), so its capabilities are cut
/// down to the init's, and no_new_privs is kept when the init has it.
pub(super) fn confine_exec(
    exec: &mut oci_spec::runtime::Process,
    init: &oci_spec::runtime::Process,
) {
    use oci_spec::runtime::{Capabilities, LinuxCapabilities};
    let empty = Capabilities::new();
    let inter =
        |mine: &Option<Capabilities>, theirs: &Option<Capabilities>| -> Option<Capabilities> {
            let theirs = theirs.as_ref().unwrap_or(&empty);
            Some(
                mine.as_ref()
                    .map(|m| m.intersection(theirs).cloned().collect())
                    .unwrap_or_default(),
            )
        };
    let ic = init.capabilities().clone().unwrap_or_default();
    let ec = exec.capabilities().clone().unwrap_or_else(|| ic.clone());
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(inter(ec.bounding(), ic.bounding()));
    caps.set_effective(inter(ec.effective(), ic.effective()));
    caps.set_permitted(inter(ec.permitted(), ic.permitted()));
    caps.set_inheritable(inter(ec.inheritable(), ic.inheritable()));
    caps.set_ambient(inter(ec.ambient(), ic.ambient()));
    exec.set_capabilities(Some(caps));
    if init.no_new_privileges() == Some(true) {
        exec.set_no_new_privileges(Some(true));
    }
}

/// The task request and the process spec must agree on the terminal (containerd sets both;
/// the runtime would refuse a mismatch less clearly).
pub(crate) fn check_terminal(spec: Option<bool>, requested: bool, what: &str) -> Result<()> {
    let spec = spec.unwrap_or(false);
    if spec == requested {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the request asks for terminal: {requested} but {what} has process.terminal: {spec}; set both the same (ctr -t sets both)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_is_confined_to_the_inits_capabilities_and_no_new_privs() {
        let init: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"noNewPrivileges":true,
                "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        )
        .unwrap();
        let mut exec: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["id"],"noNewPrivileges":false,
                "capabilities":{"bounding":["CAP_KILL","CAP_SYS_ADMIN"],"effective":["CAP_SYS_ADMIN"],
                "permitted":["CAP_KILL","CAP_SYS_ADMIN"],"ambient":["CAP_SYS_ADMIN"]}}"#,
        )
        .unwrap();
        confine_exec(&mut exec, &init);
        let caps = exec.capabilities().clone().unwrap();
        let names = |c: &Option<oci_spec::runtime::Capabilities>| {
            let mut v: Vec<String> = c.iter().flatten().map(|c| c.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(names(caps.bounding()), vec!["KILL"]);
        assert!(names(caps.effective()).is_empty());
        assert_eq!(names(caps.permitted()), vec!["KILL"]);
        assert!(names(caps.ambient()).is_empty());
        assert_eq!(exec.no_new_privileges(), Some(true));
    }

    #[test]
    fn terminal_must_agree_with_the_spec() {
        assert!(check_terminal(Some(true), true, "spec").is_ok());
        assert!(check_terminal(None, false, "spec").is_ok());
        let e = check_terminal(None, true, "the exec's process spec").unwrap_err();
        assert!(
            e.to_string()
                .contains("terminal: true but the exec's process spec has process.terminal: false"),
            "{e}"
        );
        assert!(check_terminal(Some(true), false, "spec").is_err());
    }
}
