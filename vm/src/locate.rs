//! Where the node's VM pieces are when the node config does not say: Debian's cloud kernel
//! and the VMM's helper binaries (the tests and the bench use these).

use std::path::{Path, PathBuf};

/// The newest `vmlinuz-*-cloud-amd64` in `boot` (Debian's `linux-image-cloud-amd64`).
pub fn cloud_kernel(boot: &Path) -> Option<PathBuf> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64")
        })
        .collect();
    images.sort_by_key(|p| version_key(&p.to_string_lossy()));
    images.pop()
}

/// Orders names as versions: runs of digits compare as numbers (`-12-` after `-9-`).
fn version_key(name: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            key.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            key.push((0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

/// `name` on `PATH`, else in `/usr/libexec` (Debian's virtiofsd) or cargo's bin directory
/// (virtiofsd from crates.io).
pub fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/libexec".into());
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_cloud_kernel_is_found() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "vmlinuz-6.1.0-9-cloud-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-6.1.0-12-cloud-amd64",
            "config-6.1.0-13-cloud-amd64",
        ] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(
            cloud_kernel(d.path()),
            Some(d.path().join("vmlinuz-6.1.0-12-cloud-amd64"))
        );
        assert_eq!(cloud_kernel(&d.path().join("none")), None);
    }
}
