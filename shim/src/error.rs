//! The shim's error type, mapped once to ttrpc status codes.
//!
//! Every message here reaches the `ctr`/kubelet user through containerd, so each one
//! says what was wrong and, where the user can act, what to do.

use airlock_contract::ErrorKind;
use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A step that did not finish in its time (the message says which, and what was undone).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something of the shim's own failed without a better code; the message says what.
    #[error("{0}")]
    Runtime(String),
    /// `airlock-runtime` failed: its one-line explanation, and the kind its exit code
    /// carried (`airlock_contract`), which becomes the ttrpc code.
    #[error("{message}")]
    RuntimeFailed {
        kind: airlock_contract::ErrorKind,
        message: String,
    },
    #[error(transparent)]
    Policy(#[from] airlock_policies::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::Policy(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Error::Io { .. } | Error::Runtime(_) => Code::UNKNOWN,
            Error::RuntimeFailed { kind, .. } => match kind {
                ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
                ErrorKind::NotFound => Code::NOT_FOUND,
                ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
                ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
                ErrorKind::Unknown => Code::UNKNOWN,
            },
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_once() {
        let e: ttrpc::Error = Error::NotFound("container x".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container x not found");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The runtime's kinds keep their codes, and its message is passed on as it is.
    #[test]
    fn runtime_failures_keep_their_kind() {
        for (kind, code) in [
            (ErrorKind::NotFound, Code::NOT_FOUND),
            (ErrorKind::AlreadyExists, Code::ALREADY_EXISTS),
            (ErrorKind::InvalidArgument, Code::INVALID_ARGUMENT),
            (ErrorKind::FailedPrecondition, Code::FAILED_PRECONDITION),
            (ErrorKind::Unknown, Code::UNKNOWN),
        ] {
            let e: ttrpc::Error = Error::RuntimeFailed {
                kind,
                message: "airlock-runtime: why".into(),
            }
            .into();
            match e {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code, "{kind:?}");
                    assert_eq!(s.message(), "airlock-runtime: why");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
