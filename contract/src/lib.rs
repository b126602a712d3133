//! What the shim and `airlock-runtime` agree on across their process boundary.
//!
//! - **Container ids**: one rule ([`validate_id`]), checked by the shim before it does
//!   anything for a request and by the runtime before it creates anything.
//! - **The runtime's command line** ([`cli`]): one definition, written by the shim and parsed
//!   by the runtime.
//! - **The kind of a failure**: the runtime exits with the code of an [`ErrorKind`] and prints
//!   its one-line message on stderr; the shim reads the kind back from the exit code, so a
//!   NotFound of the runtime reaches containerd as NotFound, not as Unknown.
//! - **Compiled seccomp programs** ([`bpf`]): the bytes the shim writes and the runtime and the
//!   microVM guest's agent install.

pub mod bpf;
pub mod cli;

/// Why a container id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("container id {id:?} is invalid: {reason}; use up to {MAX_ID_LEN} letters, digits, '_', '+', '-', '.', not starting with '.'")]
pub struct InvalidId {
    pub id: String,
    pub reason: String,
}

/// The longest id accepted (containerd's own limit is 76 for names it makes; ids come from
/// clients).
pub const MAX_ID_LEN: usize = 1024;

/// A container (or exec) id is 1 to [`MAX_ID_LEN`] ASCII letters, digits, `_`, `+`, `-` and
/// `.`, not starting with `.` (so never `.` or `..`): it names a directory in the state root,
/// a cgroup and a file in the bundle.
pub fn validate_id(id: &str) -> Result<(), InvalidId> {
    let bad = |reason: String| {
        Err(InvalidId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return bad(format!("it is {} bytes long", id.len()));
    }
    if id.starts_with('.') {
        return bad("it starts with '.'".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
    {
        return bad(format!("it contains {c:?}"));
    }
    Ok(())
}

/// The kind of a failed runtime command, carried by its exit code (and by the microVM
/// agent's error responses, as a snake_case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ErrorKind {
    /// Anything else (exit code 1, or a code this contract does not define).
    Unknown,
    /// The request or the bundle is wrong (exit code 2, which is also clap's usage error).
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The container is in the wrong state, or the node cannot do what is asked.
    FailedPrecondition,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::Unknown,
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
    ];

    /// The runtime's exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Unknown => 1,
            ErrorKind::InvalidArgument => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::AlreadyExists => 4,
            ErrorKind::FailedPrecondition => 5,
        }
    }

    /// The kind of a runtime that exited with `code` (None: killed by a signal).
    pub fn from_exit_code(code: Option<i32>) -> ErrorKind {
        Self::ALL
            .into_iter()
            .find(|k| Some(i32::from(k.exit_code())) == code)
            .unwrap_or(ErrorKind::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "c1", "k8s_pod-1.2+x", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "starts with '.'"),
            ("..", "starts with '.'"),
            (".hidden", "starts with '.'"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("é", "'é'"),
        ] {
            let e = validate_id(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(e.to_string().contains("use up to 1024 letters"), "{e}");
        }
        assert!(validate_id(&"x".repeat(MAX_ID_LEN + 1))
            .unwrap_err()
            .to_string()
            .contains("1025 bytes long"));
    }

    /// Every kind survives the exit code; success, signals and other codes are Unknown, and
    /// no kind takes the zygote's "unused" code (75) or a code above 125 (the shell's).
    #[test]
    fn kinds_round_trip_through_exit_codes() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_exit_code(Some(k.exit_code().into())), k);
            assert!(k.exit_code() != 75 && k.exit_code() < 126 && k.exit_code() != 0);
        }
        assert_eq!(ErrorKind::from_exit_code(None), ErrorKind::Unknown);
        assert_eq!(ErrorKind::from_exit_code(Some(0)), ErrorKind::Unknown);
        assert_eq!(ErrorKind::from_exit_code(Some(137)), ErrorKind::Unknown);
    }
}
