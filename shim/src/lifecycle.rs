//! The lifecycle of a container's init and of each exec, as one checked type:
//!
//! ```text
//! Created --start--> Running --pause--> Paused
//!                       ^                  |
//!                       +-----resume-------+
//! any phase --exit--> Stopped              (Delete removes a Created or Stopped process)
//! ```
//!
//! Every Task API request that depends on a process's phase asks this module first: a
//! transition ([`Phase::next`]) gives the phase to record once the sandbox has done the work,
//! a check ([`Phase::allows`]) answers whether the request may go on. An illegal request gets
//! FailedPrecondition (NotFound for a signal to a process that has finished, as runc's shim
//! answers), with words that say what the process is and what to do.

use std::fmt;

use containerd_shim::protos::types::task::Status;

use crate::error::{Error, Result};
use crate::process::pidfd::ExitInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Paused,
    Stopped(ExitInfo),
}

/// A request that moves a process to another phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Pause,
    Resume,
}

/// A request that leaves the phase as it is, and is allowed in some phases only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Exec (register a process) in this container.
    Exec,
    /// Start an exec registered in this container.
    StartExecIn,
    Update,
    Signal,
    Delete,
}

/// The process a request names, for the error's words.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Container(&'a str),
    Exec { container: &'a str, exec: &'a str },
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Container(id) => write!(f, "container {id}"),
            Subject::Exec { container, exec } => write!(f, "exec {exec} in container {container}"),
        }
    }
}

impl Phase {
    /// The phase's name in an error message.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Created => "created, not started",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Stopped(_) => "stopped",
        }
    }

    /// The Task API's status of this phase.
    pub fn status(self) -> Status {
        match self {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped(_) => Status::STOPPED,
        }
    }

    /// The exit, once stopped.
    pub fn exit(self) -> Option<ExitInfo> {
        match self {
            Phase::Stopped(e) => Some(e),
            _ => None,
        }
    }

    /// The phase after `t`, if `t` is legal now; record it once the sandbox has done `t`.
    pub fn next(self, t: Transition, who: Subject<'_>) -> Result<Phase> {
        match (t, self) {
            (Transition::Start, Phase::Created) => Ok(Phase::Running),
            (Transition::Start, _) => Err(Error::FailedPrecondition(format!(
                "{who} was already started"
            ))),
            (Transition::Pause, Phase::Running) => Ok(Phase::Paused),
            (Transition::Resume, Phase::Paused) => Ok(Phase::Running),
            (Transition::Pause | Transition::Resume, p) => Err(Error::FailedPrecondition(format!(
                "cannot {} {who}: it is {}",
                if t == Transition::Pause {
                    "pause"
                } else {
                    "resume"
                },
                p.name()
            ))),
        }
    }

    /// Whether `c` may go on in this phase. `pid` names the process in a signal's error.
    pub fn allows(self, c: Check, who: Subject<'_>, pid: u32) -> Result<()> {
        match (c, self) {
            (Check::Exec, Phase::Running)
            | (Check::StartExecIn, Phase::Running)
            | (Check::Update | Check::Signal, Phase::Created | Phase::Running | Phase::Paused)
            | (Check::Delete, Phase::Created | Phase::Stopped(_)) => Ok(()),
            (Check::Exec, p) => Err(Error::FailedPrecondition(format!(
                "cannot exec in {who}: it {}; exec needs a running container",
                if matches!(p, Phase::Stopped(_)) {
                    "has stopped".to_owned()
                } else {
                    format!("is {}", p.name())
                }
            ))),
            (Check::StartExecIn, p) => Err(Error::FailedPrecondition(format!(
                "cannot start an exec in {who}: it is {}, not running",
                p.name()
            ))),
            (Check::Update, _) => Err(Error::FailedPrecondition(format!(
                "cannot update {who}: it has stopped"
            ))),
            (Check::Signal, _) => Err(Error::NotFound(format!(
                "process {pid} of {who}: already finished"
            ))),
            (Check::Delete, _) => Err(Error::FailedPrecondition(format!(
                "{who} is running; kill it before deleting it"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const C: Subject<'static> = Subject::Container("c1");

    fn phases() -> [Phase; 4] {
        [
            Phase::Created,
            Phase::Running,
            Phase::Paused,
            Phase::Stopped(ExitInfo {
                status: 3,
                at: SystemTime::UNIX_EPOCH,
            }),
        ]
    }

    fn code(r: &Result<impl Sized>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(Error::FailedPrecondition(_)) => "precondition",
            Err(Error::NotFound(_)) => "not found",
            Err(_) => "other",
        }
    }

    /// Created -> Running <-> Paused; nothing else moves, and every refusal is
    /// FailedPrecondition.
    #[test]
    fn transitions_follow_the_diagram() {
        let want = |t: Transition, p: Phase| match (t, p) {
            (Transition::Start, Phase::Created) => Some(Phase::Running),
            (Transition::Pause, Phase::Running) => Some(Phase::Paused),
            (Transition::Resume, Phase::Paused) => Some(Phase::Running),
            _ => None,
        };
        for t in [Transition::Start, Transition::Pause, Transition::Resume] {
            for p in phases() {
                let r = p.next(t, C);
                match want(t, p) {
                    Some(next) => assert_eq!(r.unwrap(), next, "{t:?} from {p:?}"),
                    None => assert_eq!(code(&r), "precondition", "{t:?} from {p:?}"),
                }
            }
        }
    }

    /// Which phases each check lets through, and the code of each refusal.
    #[test]
    fn checks_answer_with_the_right_code() {
        let table: [(Check, [&str; 4]); 5] = [
            (
                Check::Exec,
                ["precondition", "ok", "precondition", "precondition"],
            ),
            (
                Check::StartExecIn,
                ["precondition", "ok", "precondition", "precondition"],
            ),
            (Check::Update, ["ok", "ok", "ok", "precondition"]),
            (Check::Signal, ["ok", "ok", "ok", "not found"]),
            (Check::Delete, ["ok", "precondition", "precondition", "ok"]),
        ];
        for (check, want) in table {
            for (p, w) in phases().into_iter().zip(want) {
                assert_eq!(code(&p.allows(check, C, 7)), w, "{check:?} in {p:?}");
            }
        }
    }

    /// The words name the process and its phase, and say what to do.
    #[test]
    fn refusals_say_what_and_why() {
        let e = Subject::Exec {
            container: "c1",
            exec: "e1",
        };
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(Phase::Running.next(Transition::Start, e).map(|_| ()))
            .contains("exec e1 in container c1 was already started"));
        assert!(msg(Phase::Paused.allows(Check::Exec, C, 0))
            .contains("cannot exec in container c1: it is paused; exec needs a running container"));
        assert!(msg(phases()[3].allows(Check::Exec, C, 0)).contains("it has stopped"));
        assert!(msg(phases()[3].allows(Check::Signal, C, 42))
            .contains("process 42 of container c1: already finished"));
        assert!(msg(Phase::Running.allows(Check::Delete, C, 0))
            .contains("container c1 is running; kill it before deleting it"));
        assert!(msg(Phase::Created.next(Transition::Resume, C).map(|_| ()))
            .contains("cannot resume container c1: it is created, not started"));
    }

    #[test]
    fn status_and_exit_follow_the_phase() {
        let [created, running, paused, stopped] = phases();
        assert_eq!(created.status(), Status::CREATED);
        assert_eq!(running.status(), Status::RUNNING);
        assert_eq!(paused.status(), Status::PAUSED);
        assert_eq!(stopped.status(), Status::STOPPED);
        assert_eq!(stopped.exit().map(|e| e.status), Some(3));
        assert!(running.exit().is_none());
    }
}
