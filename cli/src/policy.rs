//! `airlock policy lint|explain|diff|list`.

use std::fmt::Write as _;
use std::path::Path;

use airlock_policies::{explain, Policy, PolicySet};

use crate::Error;

/// Lint each file as the shim would load it from the policies directory: parse, validate,
/// its name must match the file name and must not shadow `set`'s policies. Returns one line
/// per file; the error of the first bad file stops nothing: every file is reported.
pub fn lint(files: &[&Path], set: &PolicySet) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    for f in files {
        let mut scratch = set.clone();
        match scratch.add_file(f) {
            Ok(e) => {
                let _ = writeln!(out, "{}: ok (policy {})", f.display(), e.policy.name);
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "{e}");
            }
        }
    }
    (out, ok)
}

/// A policy by name from `set`, or from a file when `name_or_file` names one.
pub fn resolve(name_or_file: &str, set: &PolicySet) -> Result<Policy, Error> {
    let p = Path::new(name_or_file);
    if name_or_file.ends_with(".toml") || p.is_file() {
        return Ok(airlock_policies::load_file(p)?);
    }
    Ok(set.require(name_or_file)?.clone())
}

/// `airlock policy explain`.
pub fn explain(name_or_file: &str, set: &PolicySet) -> Result<String, Error> {
    let policy = resolve(name_or_file, set)?;
    let mut out = explain::explain(&policy).to_string();
    let source = set
        .get(&policy.name)
        .filter(|e| e.policy == policy)
        .map(|e| e.source.to_string())
        .unwrap_or_else(|| name_or_file.to_string());
    let _ = writeln!(
        out,
        "\nsource: {source}; selectable by the airlock.dev/policy annotation: {}",
        if policy.selectable { "yes" } else { "no" }
    );
    Ok(out)
}

/// `airlock policy diff`: field-by-field; empty output when identical.
pub fn diff(a: &str, b: &str, set: &PolicySet) -> Result<String, Error> {
    let (pa, pb) = (resolve(a, set)?, resolve(b, set)?);
    let mut d = explain::diff(&pa, &pb);
    d.retain(|d| d.path != "name" && d.path != "description");
    let rows: Vec<[String; 3]> = d
        .iter()
        .map(|d| {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
            [d.path.clone(), show(&d.a), show(&d.b)]
        })
        .collect();
    Ok(table(&["FIELD", a, b], &rows))
}

/// `airlock policy list`.
pub fn list(set: &PolicySet) -> String {
    let rows: Vec<[String; 3]> = set
        .entries()
        .map(|e| {
            [
                e.policy.name.clone(),
                if e.policy.selectable { "yes" } else { "no" }.to_string(),
                e.source.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "SELECTABLE", "SOURCE"], &rows)
}

/// A left-aligned text table.
pub fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut w = head.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEAM: &str = "name = \"team-a\"\nselectable = true\n[process]\nno_new_privileges = true\ncapabilities = [\"CAP_NET_BIND_SERVICE\"]\n[filesystem]\nreadonly_rootfs = true\n";

    #[test]
    fn lint_reports_each_file() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("team-a.toml");
        std::fs::write(&good, TEAM).unwrap();
        let bad = d.path().join("team-b.toml");
        std::fs::write(
            &bad,
            TEAM.replace("team-a", "team-b")
                .replace("readonly_rootfs = true", "readonly_rootfs = true\nsize = 3"),
        )
        .unwrap();
        let (out, ok) = lint(&[&good, &bad], &PolicySet::builtin());
        assert!(!ok);
        assert!(out.contains("team-a.toml: ok"), "{out}");
        assert!(
            out.contains("team-b.toml") && out.contains("line 8") && out.contains("size"),
            "{out}"
        );
    }

    #[test]
    fn lint_names_file_line_and_field_of_a_bad_io_weight() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("team-io.toml");
        std::fs::write(
            &f,
            TEAM.replace("team-a", "team-io") + "[limits]\npids = 100\nio_weight = 5\n",
        )
        .unwrap();
        let (out, ok) = lint(&[&f], &PolicySet::builtin());
        assert!(!ok);
        assert!(
            out.contains("team-io.toml:10:")
                && out.contains("limits.io_weight")
                && out.contains("10-1000"),
            "{out}"
        );
        std::fs::write(
            &f,
            TEAM.replace("team-a", "team-io") + "[limits]\nio_weight = 500\n",
        )
        .unwrap();
        let (out, ok) = lint(&[&f], &PolicySet::builtin());
        assert!(ok, "{out}");
        let out = explain(f.to_str().unwrap(), &PolicySet::builtin()).unwrap();
        assert!(
            out.contains("limits.io_weight") && out.contains("io weight: 500"),
            "{out}"
        );
    }

    #[test]
    fn explain_file_and_diff() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("team-a.toml");
        std::fs::write(&f, TEAM).unwrap();
        let set = PolicySet::builtin();
        let out = explain(f.to_str().unwrap(), &set).unwrap();
        assert!(out.contains("CAP_NET_BIND_SERVICE"), "{out}");
        let out = diff("agent-strict", f.to_str().unwrap(), &set).unwrap();
        assert!(
            out.contains("process.capabilities") && out.contains("(none)"),
            "{out}"
        );
        assert!(
            out.contains("limits.pids") && out.contains("(unset)"),
            "{out}"
        );
        let e = explain("nope", &set).unwrap_err().to_string();
        assert!(e.contains("agent-strict"), "{e}");
    }

    #[test]
    fn list_names_sources() {
        let out = list(&PolicySet::builtin());
        assert!(
            out.contains("agent-strict  yes") || out.contains("agent-strict"),
            "{out}"
        );
        assert!(
            out.contains("baseline") && out.contains("built-in"),
            "{out}"
        );
    }
}
