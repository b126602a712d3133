//! What applying a policy did to a spec, as data: the rules it enforces there, and each field
//! it lowered because the spec asked for more than the policy allows (clamp mode). A refusal
//! is the error [`crate::Error::Refused`] instead (the field, what was asked, the fix).
//!
//! The shim's log line, its copy in the bundle (`REPORT_FILE`, which the demo reads),
//! and `airlock policy explain` come from this, not from log text.

use std::fmt;

use serde::Serialize;

/// The file in a container's bundle where the shim writes the [`Report`] of its create, as
/// JSON.
pub const REPORT_FILE: &str = "airlock-policy.json";

/// One field lowered to the policy (`on_excess = "clamp"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clamp {
    /// The spec's field, e.g. `linux.namespaces` or `mounts`.
    pub field: &'static str,
    /// What the spec asked for.
    pub asked: String,
    /// What the container gets instead.
    pub done: String,
}

impl fmt::Display for Clamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} ({})", self.field, self.asked, self.done)
    }
}

/// What a policy enforced on one spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The policy's name.
    pub policy: String,
    /// One line per rule in force, in the order the policy applies them.
    pub enforced: Vec<String>,
    /// The fields lowered to the policy; empty unless the policy clamps.
    pub clamped: Vec<Clamp>,
}

impl Report {
    pub fn new(policy: impl Into<String>) -> Self {
        Report {
            policy: policy.into(),
            ..Default::default()
        }
    }

    /// Records a rule in force.
    pub fn enforce(&mut self, line: impl Into<String>) {
        self.enforced.push(line.into());
    }

    /// The rules, then each clamp as `clamped: <field> = <asked> (<done>)`: the text for a
    /// log line or a listing.
    pub fn lines(&self) -> Vec<String> {
        self.enforced
            .iter()
            .cloned()
            .chain(self.clamped.iter().map(|c| format!("clamped: {c}")))
            .collect()
    }

    /// Whether a rule line contains `text`.
    pub fn enforces(&self, text: &str) -> bool {
        self.enforced.iter().any(|l| l.contains(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_list_rules_then_clamps() {
        let mut r = Report::new("p");
        r.enforce("rootfs: read-only");
        r.clamped.push(Clamp {
            field: "mounts",
            asked: "writable /srv".into(),
            done: "made read-only".into(),
        });
        assert_eq!(
            r.lines(),
            vec![
                "rootfs: read-only".to_owned(),
                "clamped: mounts = writable /srv (made read-only)".to_owned()
            ]
        );
        assert!(r.enforces("read-only") && !r.enforces("clamped"));
    }
}
