//! Airlock's policy model.
//!
//! A policy is a declarative TOML profile (see `builtin/*.toml`). It is a *ceiling* over the
//! pod's own OCI spec: [`Policy::apply`] lowers what the spec asks for to what the policy
//! allows, and refuses, with an error that names the field and the policy, what cannot be
//! lowered without changing the workload's meaning (host namespaces, capabilities beyond
//! containerd's default set).
//!
//! This crate does no I/O beyond reading policy files.

mod model;
mod pod_seccomp;
mod seccomp;
pub mod syscalls;
mod userns;

pub use model::{Filesystem, Limits, Namespaces, Policy, ProcessRules, Tmpfs};
pub use pod_seccomp::compile_pod_profile;
pub use seccomp::{is_syscall, native_arch, Seccomp, SeccompMode, SeccompProgram};
pub use userns::{IdRange, UserNamespace, DEFAULT_RANGE_SIZE};

use std::path::Path;

/// Annotation with which a pod picks a policy.
pub const POLICY_ANNOTATION: &str = "airlock.dev/policy";
/// The default policy of handler `airlock`.
pub const DEFAULT_POLICY: &str = "agent-strict";

const BUILTIN: &[(&str, &str)] = &[
    ("agent-strict", include_str!("../builtin/agent-strict.toml")),
    (
        "agent-default",
        include_str!("../builtin/agent-default.toml"),
    ),
    ("baseline", include_str!("../builtin/baseline.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("policy file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {policy}: {message}")]
    Invalid { policy: String, message: String },
    #[error("unknown policy {name:?}: known policies are {known}; check the {annotation} annotation or the handler's default")]
    Unknown {
        name: String,
        known: String,
        annotation: &'static str,
    },
    #[error("policy {name:?} is not selectable by pods (the operator did not mark it `selectable = true`); remove the {annotation} annotation or pick one of: {selectable}")]
    NotSelectable {
        name: String,
        selectable: String,
        annotation: &'static str,
    },
    #[error("refused by policy {policy}: the container asks for {field} = {asked}, which the policy does not allow ({hint})")]
    Refused {
        policy: String,
        field: &'static str,
        asked: String,
        hint: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Names of the built-in policies.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// A built-in policy by name.
pub fn builtin(name: &str) -> Option<Policy> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, text)| {
        Policy::parse(text, &format!("<builtin {n}>")).expect("built-in policies are valid")
    })
}

/// Load a policy file from disk.
pub fn load_file(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        file: path.display().to_string(),
        source,
    })?;
    Policy::parse(&text, &path.display().to_string())
}

/// Pick the policy for a container: the pod's annotation if present (only a selectable
/// policy), else the handler's default.
pub fn select(
    annotations: Option<&std::collections::HashMap<String, String>>,
    default: &str,
) -> Result<Policy> {
    let requested = annotations.and_then(|a| a.get(POLICY_ANNOTATION));
    let name = requested.map(String::as_str).unwrap_or(default);
    let policy = builtin(name).ok_or_else(|| Error::Unknown {
        name: name.to_string(),
        known: builtin_names().collect::<Vec<_>>().join(", "),
        annotation: POLICY_ANNOTATION,
    })?;
    if requested.is_some() && !policy.selectable && name != default {
        return Err(Error::NotSelectable {
            name: name.to_string(),
            selectable: BUILTIN
                .iter()
                .filter_map(|(n, _)| builtin(n).filter(|p| p.selectable).map(|_| *n))
                .collect::<Vec<_>>()
                .join(", "),
            annotation: POLICY_ANNOTATION,
        });
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        for n in builtin_names() {
            let p = builtin(n).unwrap();
            assert_eq!(p.name, n);
        }
    }

    #[test]
    fn unknown_policy_names_known_ones() {
        let mut a = std::collections::HashMap::new();
        a.insert(POLICY_ANNOTATION.to_string(), "nope".to_string());
        let e = select(Some(&a), DEFAULT_POLICY).unwrap_err().to_string();
        assert!(e.contains("\"nope\""), "{e}");
        assert!(e.contains("agent-strict"), "{e}");
    }

    #[test]
    fn baseline_is_not_selectable_by_annotation() {
        let mut a = std::collections::HashMap::new();
        a.insert(POLICY_ANNOTATION.to_string(), "baseline".to_string());
        let e = select(Some(&a), DEFAULT_POLICY).unwrap_err().to_string();
        assert!(e.contains("not selectable"), "{e}");
        // ...but the operator may make it a handler's default.
        assert_eq!(select(None, "baseline").unwrap().name, "baseline");
    }
}
