//! Errors of the runtime library. Every variant's message is one line that says what went
//! wrong and what the operator can do about it; the binary prints exactly that line.

use std::path::PathBuf;

use airlock_contract::ErrorKind;

/// Errors returned by the process backend.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no config.json in bundle {bundle}: {source}; pass the bundle directory that holds config.json")]
    ConfigMissing {
        bundle: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("config.json in {bundle} is malformed at line {line} column {column}: {detail}; fix the bundle's config.json")]
    ConfigMalformed {
        bundle: PathBuf,
        line: usize,
        column: usize,
        detail: String,
    },

    #[error("config.json in {bundle} is invalid: {detail}; fix the bundle's config.json")]
    ConfigInvalid { bundle: PathBuf, detail: String },

    #[error("rootfs {path} named by config.json root.path does not exist or is not a directory ({reason}); mount the rootfs there or fix root.path")]
    RootfsMissing { path: PathBuf, reason: String },

    #[error("executable {executable:?} not found in the container's rootfs (PATH={path}); fix process.args[0] or add the binary to the image")]
    ExecutableNotFound { executable: String, path: String },

    #[error("executable {executable:?} at {resolved} in the container's rootfs is not an executable file; fix its mode or process.args[0]")]
    NotExecutable {
        executable: String,
        resolved: String,
    },

    #[error(transparent)]
    InvalidId(#[from] airlock_contract::InvalidId),

    #[error("container {id:?} already exists in {root}; delete it first or use another id")]
    AlreadyExists { id: String, root: PathBuf },

    #[error("container {id:?} does not exist in {root}; check the id and --root")]
    NotFound { id: String, root: PathBuf },

    #[error("unknown signal {0:?}; use a number (e.g. 15) or a name (TERM, SIGKILL, ...)")]
    InvalidSignal(String),

    #[error("cannot {action} container {id:?} while it is {status}; {hint}")]
    WrongState {
        id: String,
        action: &'static str,
        status: String,
        hint: &'static str,
    },

    #[error("cannot prepare state root {root}: {source}; check that the directory is writable")]
    StateRoot {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to {action} container {id:?}: {detail}")]
    Backend {
        id: String,
        action: &'static str,
        detail: String,
    },

    #[error("seccomp program {path} is unusable: {detail}; recompile it from the policy (the shim writes it per container)")]
    SeccompProgram { path: PathBuf, detail: String },

    #[error("{what} asks for a terminal (process.terminal is true) but no --console-socket was given; pass --console-socket PATH (a unix socket that receives the pty master) or set process.terminal to false")]
    ConsoleSocketMissing { what: String },

    #[error("--console-socket was given but {what} has no terminal (process.terminal is false); drop --console-socket or set process.terminal to true")]
    ConsoleSocketUnused { what: String },

    /// A resource the spec asks for that this node's kernel cannot enforce; the message names
    /// the field, what the node lacks and what to do.
    #[error("{0}")]
    Unenforceable(String),

    #[error("linux.cgroupsPath {path:?} cannot be the container's own cgroup: {why}; leave linux.cgroupsPath unset or name a new cgroup (a container's delete kills every process in its cgroup)")]
    CgroupRefused { path: PathBuf, why: String },

    #[error("{0}")]
    Io(String),

    /// A message already phrased for the operator.
    #[error("{0}")]
    Message(String),

    /// An error of the executor in the container's init, passed up through libcontainer
    /// with its kind.
    #[error("{message}")]
    FromInit { kind: ErrorKind, message: String },
}

impl RuntimeError {
    /// The kind the shim reads back from the exit code (see `airlock_contract`).
    pub fn kind(&self) -> ErrorKind {
        use RuntimeError::*;
        match self {
            ConfigMissing { .. }
            | ConfigMalformed { .. }
            | ConfigInvalid { .. }
            | RootfsMissing { .. }
            | ExecutableNotFound { .. }
            | NotExecutable { .. }
            | InvalidId(_)
            | InvalidSignal(_)
            | SeccompProgram { .. }
            | ConsoleSocketMissing { .. }
            | ConsoleSocketUnused { .. }
            | CgroupRefused { .. } => ErrorKind::InvalidArgument,
            AlreadyExists { .. } => ErrorKind::AlreadyExists,
            NotFound { .. } => ErrorKind::NotFound,
            WrongState { .. } | Unenforceable(_) => ErrorKind::FailedPrecondition,
            FromInit { kind, .. } => *kind,
            StateRoot { .. } | Backend { .. } | Io(_) | Message(_) => ErrorKind::Unknown,
        }
    }

    /// Wraps a libcontainer (or other) error into a one-line `Backend` error. The chain of
    /// sources is flattened because libcontainer's top-level messages ("io error", "oci spec
    /// error") say nothing without their causes.
    pub(crate) fn backend(
        id: &str,
        action: &'static str,
        err: &(dyn std::error::Error + 'static),
    ) -> Self {
        RuntimeError::Backend {
            id: id.to_owned(),
            action,
            detail: one_line_chain(err),
        }
    }
}

/// Joins an error and its sources into one line, dropping messages that repeat their cause.
pub(crate) fn one_line_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string().replace('\n', " ");
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = e.source();
    }
    parts.join(": ")
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    /// The kinds that containerd's clients act on survive the process boundary.
    #[test]
    fn kinds_of_the_errors_a_client_acts_on() {
        let root = PathBuf::from("/run/airlock/ns");
        let nf = RuntimeError::NotFound {
            id: "c1".into(),
            root: root.clone(),
        };
        assert_eq!(nf.kind(), ErrorKind::NotFound);
        let ae = RuntimeError::AlreadyExists {
            id: "c1".into(),
            root,
        };
        assert_eq!(ae.kind(), ErrorKind::AlreadyExists);
        let bad = RuntimeError::from(airlock_contract::validate_id("a/b").unwrap_err());
        assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
        let state = RuntimeError::WrongState {
            id: "c1".into(),
            action: "start",
            status: "running".into(),
            hint: "it runs",
        };
        assert_eq!(state.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(RuntimeError::Io("x".into()).kind(), ErrorKind::Unknown);
    }

    #[test]
    fn chain_is_one_line_and_keeps_causes() {
        let e = Outer(std::io::Error::other("inner\nsecond line"));
        let s = one_line_chain(&e);
        assert_eq!(s, "outer: inner second line");
    }

    #[test]
    fn messages_are_single_line_and_actionable() {
        let e = RuntimeError::ConfigMalformed {
            bundle: "/x".into(),
            line: 3,
            column: 5,
            detail: "expected `,` or `}`".into(),
        };
        let s = e.to_string();
        assert!(s.starts_with("config.json in /x is malformed at line 3 column 5"));
        assert!(s.ends_with("fix the bundle's config.json"));
        assert!(!s.contains('\n'));
        let e = RuntimeError::ExecutableNotFound {
            executable: "/nope".into(),
            path: "/bin".into(),
        };
        assert!(e
            .to_string()
            .starts_with("executable \"/nope\" not found in the container's rootfs (PATH=/bin)"));
    }
}
