//! Reading and checking a bundle's `config.json` before anything is created, so that bad
//! input fails fast, with the file position, and without side effects.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{Result, RuntimeError};

/// A parsed bundle: the spec plus the absolute rootfs path it names.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

/// Loads `<bundle>/config.json` and checks the things whose failure would otherwise surface
/// as an opaque error deep inside container creation.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| RuntimeError::ConfigMissing {
        bundle: bundle.to_owned(),
        source,
    })?;
    let spec = parse_spec(bundle, &bytes)?;
    let rootfs = check_spec(bundle, &spec)?;
    Ok(Bundle {
        dir: bundle.to_owned(),
        spec,
        rootfs,
    })
}

/// Parses config.json bytes, reporting syntax and type errors with line and column.
pub fn parse_spec(bundle: &Path, bytes: &[u8]) -> Result<Spec> {
    serde_json::from_slice::<Spec>(bytes).map_err(|e| {
        let full = e.to_string();
        // serde_json appends " at line L column C"; we print the position ourselves.
        let detail = match full.rfind(" at line ") {
            Some(i) => full[..i].to_owned(),
            None => full,
        };
        RuntimeError::ConfigMalformed {
            bundle: bundle.to_owned(),
            line: e.line(),
            column: e.column(),
            detail,
        }
    })
}

/// Checks the fields the process backend needs and returns the absolute rootfs path.
pub fn check_spec(bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    let invalid = |detail: &str| RuntimeError::ConfigInvalid {
        bundle: bundle.to_owned(),
        detail: detail.to_owned(),
    };
    if !spec.version().starts_with("1.") {
        return Err(invalid(&format!(
            "ociVersion {:?} is not supported (need 1.x)",
            spec.version()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process is missing"))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(invalid("process.args is missing or empty")),
    }
    if spec.linux().is_none() {
        return Err(invalid("linux is missing"));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root is missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => Ok(rootfs),
        Ok(_) => Err(RuntimeError::RootfsMissing {
            path: rootfs,
            reason: "not a directory".into(),
        }),
        Err(e) => Err(RuntimeError::RootfsMissing {
            path: rootfs,
            reason: e.to_string(),
        }),
    }
}

/// The cgroup path libcontainer will use for this spec (mirrors its default for a missing
/// `linux.cgroupsPath`).
pub fn cgroup_path(spec: &Spec, id: &str) -> PathBuf {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_else(|| PathBuf::from(format!(":youki:{id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_reports_line_and_column() {
        let bad = b"{\n  \"ociVersion\": \"1.0.2\",\n    \"process\" {\n}";
        let err = parse_spec(Path::new("/b"), bad).unwrap_err();
        match &err {
            RuntimeError::ConfigMalformed { line, column, .. } => {
                assert_eq!(*line, 3);
                assert!(*column > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
        let s = err.to_string();
        assert!(
            s.starts_with("config.json in /b is malformed at line 3 column"),
            "{s}"
        );
        assert_eq!(s.matches("line 3").count(), 1, "position printed once: {s}");
        assert!(s.contains("expected `:`"), "{s}");
    }

    #[test]
    fn missing_rootfs_is_reported_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = Spec::default();
        spec.set_root(Some(
            oci_spec::runtime::RootBuilder::default()
                .path("nope")
                .build()
                .unwrap(),
        ));
        let err = check_spec(dir.path(), &spec).unwrap_err();
        assert!(matches!(err, RuntimeError::RootfsMissing { .. }), "{err}");
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn default_spec_with_rootfs_passes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let spec = Spec::default();
        let rootfs = check_spec(dir.path(), &spec).unwrap();
        assert_eq!(rootfs, dir.path().join("rootfs"));
        assert_eq!(cgroup_path(&spec, "x"), PathBuf::from(":youki:x"));
    }

    #[test]
    fn missing_config_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_bundle(dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with("no config.json in bundle"),
            "{err}"
        );
    }
}
