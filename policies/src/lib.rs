//! Airlock's policy model.
//!
//! A policy is a declarative TOML profile (see `builtin/*.toml`). It is a *ceiling* over the
//! pod's own OCI spec: [`Policy::apply`] lowers what the spec asks for to what the policy
//! allows, and refuses, with an error that names the field and the policy, what cannot be
//! lowered without changing the workload's meaning (host namespaces, capabilities beyond
//! containerd's default set).
//!
//! This crate does no I/O beyond reading policy files.

pub mod config;
pub mod explain;
mod harden;
pub use harden::MEMFD_NOEXEC;
mod host_access;
mod locate;
mod model;
mod pod_seccomp;
mod report;
mod seccomp;
mod seccomp_tree;
mod store;
pub mod syscalls;
mod update;
mod userns;
mod vm_config;

pub use config::{Config, Loaded};
pub use locate::line_of;
pub use model::{
    set_namespace, Filesystem, Limits, Namespaces, OnExcess, Policy, ProcessRules, Tmpfs,
};
pub use pod_seccomp::compile_pod_profile;
pub use report::{Clamp, Report, REPORT_FILE};
pub use seccomp::{is_syscall, native_arch, Seccomp, SeccompMode, SeccompProgram};
pub use userns::{IdRange, UserNamespace, DEFAULT_RANGE_SIZE};

pub use store::{load_file, parse_located, Entry, PolicySet, Source};
pub use update::UpdateRules;

/// Annotation with which a pod picks a policy.
pub const POLICY_ANNOTATION: &str = "airlock.dev/policy";
/// The default policy of handler `airlock`.
pub const DEFAULT_POLICY: &str = "agent-strict";

pub(crate) const BUILTIN: &[(&str, &str)] = &[
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
    /// A validation error in a file, with the line of the offending field when it was found.
    #[error("{file}:{}: policy {policy}: {message}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
    Located {
        file: String,
        line: Option<usize>,
        policy: String,
        message: String,
    },
    #[error("policy file {file} defines {name:?}, which is already defined by {existing}; operator policies may not replace one another or a built-in: give it another name and make that name the handler's default_policy in the config")]
    Shadows {
        file: String,
        name: String,
        existing: String,
    },
    #[error("config file {file}: {message}")]
    Config { file: String, message: String },
    #[error("config file {file}: {source} (the shim's ConfigPath option names it; fix the option or create the file)")]
    ConfigRead {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no default policy for runtime handler {handler:?}: add [handlers.{handler}] default_policy = \"...\" to the config (configured handlers: {known})")]
    UnknownHandler { handler: String, known: String },
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
    #[error("the update asks for {field} = {value}, which cannot be applied: {hint}")]
    InvalidUpdate {
        field: &'static str,
        value: String,
        hint: String,
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

/// Pick the policy for a container among the built-ins: the pod's annotation if present (only
/// a selectable policy), else the handler's default. [`PolicySet::select`] also knows the
/// operator's policies.
pub fn select(
    annotations: Option<&std::collections::HashMap<String, String>>,
    default: &str,
) -> Result<Policy> {
    PolicySet::builtin().select(annotations, default).cloned()
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
