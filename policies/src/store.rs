//! The set of policies a node knows: the built-ins plus the operator's directory.
//!
//! Rules (documented in `policies/README.md`):
//! - an operator policy lives in `DIR/NAME.toml` and its `name` field must be `NAME`, so the
//!   file that defines a policy is always the obvious one;
//! - an operator file may not reuse a built-in's name: it is refused (no silent shadowing);
//!   to change a built-in, copy it under a new name and make that name the handler's default;
//! - only `*.toml` files are read; anything else in the directory is ignored;
//! - one invalid file makes the whole set invalid: a node never runs with half its policies.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::{locate, Error, Policy, Result, BUILTIN, POLICY_ANNOTATION};

/// Where a policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin,
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One known policy with its origin and TOML text.
#[derive(Debug, Clone)]
pub struct Entry {
    pub policy: Policy,
    pub source: Source,
}

/// Built-in and operator policies by name.
#[derive(Debug, Clone)]
pub struct PolicySet {
    entries: BTreeMap<String, Entry>,
}

impl PolicySet {
    /// The built-in policies only.
    pub fn builtin() -> Self {
        let entries = BUILTIN
            .iter()
            .map(|(n, text)| {
                let policy =
                    Policy::parse(text, &format!("<builtin {n}>")).expect("built-ins are valid");
                (
                    n.to_string(),
                    Entry {
                        policy,
                        source: Source::Builtin,
                    },
                )
            })
            .collect();
        PolicySet { entries }
    }

    /// The built-ins plus every `*.toml` in `dir`. A missing directory adds nothing.
    pub fn with_dir(dir: &Path) -> Result<Self> {
        let mut set = Self::builtin();
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(set),
            Err(source) => {
                return Err(Error::Read {
                    file: dir.display().to_string(),
                    source,
                })
            }
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        for f in files {
            set.add_file(&f)?;
        }
        Ok(set)
    }

    /// Add one operator policy file (the same rules as a file in the policies directory).
    pub fn add_file(&mut self, path: &Path) -> Result<&Entry> {
        let policy = load_file(path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if policy.name != stem {
            return Err(Error::Located {
                file: path.display().to_string(),
                line: locate::line_of(
                    &std::fs::read_to_string(path).unwrap_or_default(),
                    "name",
                    None,
                ),
                policy: policy.name.clone(),
                message: format!(
                    "name: the policy is called {:?} but its file is {stem}.toml; rename the file \
                     to {}.toml or set name = {stem:?}",
                    policy.name, policy.name
                ),
            });
        }
        if let Some(existing) = self.entries.get(&policy.name) {
            return Err(Error::Shadows {
                file: path.display().to_string(),
                name: policy.name.clone(),
                existing: existing.source.to_string(),
            });
        }
        let name = policy.name.clone();
        self.entries.insert(
            name.clone(),
            Entry {
                policy,
                source: Source::File(path.to_path_buf()),
            },
        );
        Ok(&self.entries[&name])
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn known(&self) -> String {
        self.names().collect::<Vec<_>>().join(", ")
    }

    /// A policy by name, or an error that lists the known ones.
    pub fn require(&self, name: &str) -> Result<&Policy> {
        self.get(name)
            .map(|e| &e.policy)
            .ok_or_else(|| Error::Unknown {
                name: name.to_string(),
                known: self.known(),
                annotation: POLICY_ANNOTATION,
            })
    }

    /// Pick the policy for a container: the pod's `airlock.dev/policy` annotation if present
    /// (only a `selectable` policy, or the default itself), else `default`.
    pub fn select(
        &self,
        annotations: Option<&HashMap<String, String>>,
        default: &str,
    ) -> Result<&Policy> {
        let requested = annotations.and_then(|a| a.get(POLICY_ANNOTATION));
        let name = requested.map(String::as_str).unwrap_or(default);
        let policy = self.require(name)?;
        if requested.is_some() && !policy.selectable && name != default {
            return Err(Error::NotSelectable {
                name: name.to_string(),
                selectable: self
                    .entries()
                    .filter(|e| e.policy.selectable)
                    .map(|e| e.policy.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                annotation: POLICY_ANNOTATION,
            });
        }
        Ok(policy)
    }
}

/// Load and validate one policy file. Validation errors name the file and line of the field.
pub fn load_file(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        file: path.display().to_string(),
        source,
    })?;
    parse_located(&text, &path.display().to_string())
}

/// [`Policy::parse`], with validation errors turned into [`Error::Located`].
pub fn parse_located(text: &str, file: &str) -> Result<Policy> {
    Policy::parse(text, file).map_err(|e| match e {
        Error::Invalid { policy, message } => {
            let (field, value) = locate::field_and_value(&message);
            Error::Located {
                file: file.to_string(),
                line: field.and_then(|f| locate::line_of(text, f, value)),
                policy,
                message,
            }
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name = \"team-a\"\nselectable = true\n[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = true\n";

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(d.path().join(n), t).unwrap();
        }
        d
    }

    #[test]
    fn operator_policies_join_builtins() {
        let d = dir_with(&[("team-a.toml", OK), ("README.md", "not a policy")]);
        let set = PolicySet::with_dir(d.path()).unwrap();
        assert!(set.get("agent-strict").is_some());
        let e = set.get("team-a").unwrap();
        assert_eq!(e.source, Source::File(d.path().join("team-a.toml")));
        let mut a = HashMap::new();
        a.insert(POLICY_ANNOTATION.to_string(), "team-a".to_string());
        assert_eq!(set.select(Some(&a), "agent-strict").unwrap().name, "team-a");
    }

    #[test]
    fn missing_dir_is_builtins_only() {
        let set = PolicySet::with_dir(Path::new("/nonexistent/airlock-policies")).unwrap();
        assert_eq!(set.names().count(), BUILTIN.len());
    }

    #[test]
    fn builtin_name_cannot_be_shadowed() {
        let text = OK.replace("team-a", "agent-strict");
        let d = dir_with(&[("agent-strict.toml", &text)]);
        let e = PolicySet::with_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("agent-strict.toml"), "{e}");
        assert!(e.contains("built-in"), "{e}");
    }

    #[test]
    fn file_name_must_match_policy_name() {
        let d = dir_with(&[("other.toml", OK)]);
        let e = PolicySet::with_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("other.toml:1:"), "{e}");
        assert!(e.contains("team-a"), "{e}");
    }

    #[test]
    fn validation_error_names_file_line_and_field() {
        let bad = OK.replace(
            "capabilities = []",
            "capabilities = [\"CAP_CHOWN\", \"CAP_NOPE\"]",
        );
        let d = dir_with(&[("team-a.toml", &bad)]);
        let e = PolicySet::with_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("team-a.toml:5:"), "{e}");
        assert!(e.contains("process.capabilities"), "{e}");
        assert!(e.contains("CAP_NOPE"), "{e}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let bad = OK.replace("readonly_rootfs = true", "readonly_rootfs = yes");
        let d = dir_with(&[("team-a.toml", &bad)]);
        let e = PolicySet::with_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("team-a.toml") && e.contains("line 7"), "{e}");
    }
}
