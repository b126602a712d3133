//! Human-readable views of a policy: every declared field (`airlock policy explain`), what it
//! enforces on containerd's default spec, and field-by-field differences (`airlock policy diff`).
//!
//! Both are built generically from the policy's serialised form, so a new section added to
//! [`Policy`] (it must derive `Serialize`) shows up here without touching this module.

use oci_spec::runtime::Spec;

use crate::Policy;

/// One declared field: dotted path and its value as shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub path: String,
    pub value: String,
}

/// Every field of `policy`, flattened to dotted paths (sorted by path).
pub fn fields(policy: &Policy) -> Vec<Field> {
    let value = toml::Value::try_from(policy).expect("a policy serialises to TOML");
    let mut out = Vec::new();
    flatten("", &value, &mut out);
    out
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<Field>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        other => out.push(Field {
            path: prefix.to_string(),
            value: show(other),
        }),
    }
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) if a.is_empty() => "(none)".into(),
        toml::Value::Array(a) => a.iter().map(show).collect::<Vec<_>>().join(", "),
        toml::Value::Table(t) => {
            let inner: Vec<String> = t.iter().map(|(k, v)| format!("{k}={}", show(v))).collect();
            format!("{{{}}}", inner.join(" "))
        }
        other => other.to_string(),
    }
}

/// What a policy declares and what it does to containerd's default container spec.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub name: String,
    pub description: String,
    pub fields: Vec<Field>,
    /// The policy's own summary of each rule it applied ([`Policy::apply`]).
    pub enforced: Result<Vec<String>, String>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
}

/// Explain `policy` by applying it to a default spec (what `ctr run` or a plain pod sends).
pub fn explain(policy: &Policy) -> Explanation {
    let mut spec = Spec::default();
    let enforced = policy
        .apply(&mut spec)
        .map(|r| r.lines())
        .map_err(|e| e.to_string());
    let linux = spec.linux().as_ref();
    Explanation {
        name: policy.name.clone(),
        description: policy.description.clone(),
        fields: fields(policy),
        enforced,
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "policy {}", self.name)?;
        if !self.description.is_empty() {
            writeln!(f, "  {}", self.description)?;
        }
        writeln!(f)?;
        let rows: Vec<(&str, &str)> = self
            .fields
            .iter()
            .filter(|r| r.path != "name" && r.path != "description")
            .map(|r| (r.path.as_str(), r.value.as_str()))
            .collect();
        table(f, ("FIELD", "VALUE"), &rows)?;
        writeln!(f)?;
        writeln!(f, "Enforced on a default container spec:")?;
        match &self.enforced {
            Ok(lines) => {
                for l in lines {
                    writeln!(f, "  - {l}")?;
                }
            }
            Err(e) => writeln!(f, "  (refused: {e})")?,
        }
        writeln!(f, "  - masked paths: {}", self.masked_paths.join(" "))?;
        writeln!(f, "  - read-only paths: {}", self.readonly_paths.join(" "))?;
        Ok(())
    }
}

fn table(
    f: &mut std::fmt::Formatter<'_>,
    head: (&str, &str),
    rows: &[(&str, &str)],
) -> std::fmt::Result {
    let w = rows
        .iter()
        .map(|r| r.0.len())
        .chain([head.0.len()])
        .max()
        .unwrap_or(0);
    writeln!(f, "  {:<w$}  {}", head.0, head.1)?;
    for (k, v) in rows {
        writeln!(f, "  {k:<w$}  {v}")?;
    }
    Ok(())
}

/// One differing field; `None` where a policy does not set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// Field-by-field differences between two policies (the `name` field included).
pub fn diff(a: &Policy, b: &Policy) -> Vec<Difference> {
    let fa = fields(a);
    let fb = fields(b);
    let mut paths: Vec<&str> = fa.iter().map(|f| f.path.as_str()).collect();
    for f in &fb {
        if !paths.contains(&f.path.as_str()) {
            paths.push(&f.path);
        }
    }
    let get = |fs: &[Field], p: &str| fs.iter().find(|f| f.path == p).map(|f| f.value.clone());
    paths
        .into_iter()
        .filter_map(|p| {
            let (va, vb) = (get(&fa, p), get(&fb, p));
            (va != vb).then(|| Difference {
                path: p.to_string(),
                a: va,
                b: vb,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;

    #[test]
    fn explain_strict_lists_every_section() {
        let e = explain(&builtin("agent-strict").unwrap());
        let text = e.to_string();
        for want in [
            "process.capabilities",
            "(none)",
            "process.no_new_privileges",
            "filesystem.readonly_rootfs",
            "filesystem.tmpfs",
            "{path=/tmp size=64m}",
            "namespaces.allow_host",
            "limits.pids",
            "512",
            "no_new_privs: on",
            "rootfs: read-only",
            "/proc/kcore",
            "/proc/sysrq-trigger",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn diff_strict_default() {
        let d = diff(
            &builtin("agent-strict").unwrap(),
            &builtin("agent-default").unwrap(),
        );
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert!(paths.contains(&"filesystem.readonly_rootfs"), "{paths:?}");
        assert!(paths.contains(&"limits.pids"), "{paths:?}");
        assert!(!paths.contains(&"selectable"), "{paths:?}");
        let ro = d
            .iter()
            .find(|d| d.path == "filesystem.readonly_rootfs")
            .unwrap();
        assert_eq!(
            (ro.a.as_deref(), ro.b.as_deref()),
            (Some("true"), Some("false"))
        );
    }

    #[test]
    fn missing_fields_diff_as_none() {
        let d = diff(
            &builtin("agent-strict").unwrap(),
            &builtin("baseline").unwrap(),
        );
        let pids = d.iter().find(|d| d.path == "limits.pids").unwrap();
        assert_eq!((pids.a.as_deref(), pids.b.as_deref()), (Some("512"), None));
    }
}
