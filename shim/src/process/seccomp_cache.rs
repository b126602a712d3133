//! Compiled seccomp programs, kept for the whole node.
//!
//! Every pod has its own shim, so a cache in the shim's memory alone compiles each policy's
//! filter once per pod: ~0.85 ms for `agent-strict` as one seccompiler chain, about 2 ms with the
//! number search (`policies/src/seccomp_tree.rs`, 1,558 instructions), on the start path of
//! every pod's first container, and of every `ctr run`. The compiled programs are therefore
//! also kept as files under `/run/airlock/.seccomp` (root only, gone at reboot; a dot name
//! like `.userns`, so no containerd namespace's state dir can collide with it), named by a
//! SHA-256 of what was compiled and of the identity of the shim binary that compiled it (its
//! device, inode, size and modification time): another policy text, a pod profile or a new
//! shim build never meets an old program. The runtime reads the files directly
//! (`--seccomp`), so nothing is copied into the bundle. Files are written to a temporary name
//! and renamed, and a manifest (`<hash>.count`) is renamed into place last: a reader finds
//! every program of a key or none.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::error::{Error, Result};

/// Where the node-wide cache lives.
pub const DEFAULT_DIR: &str = "/run/airlock/.seccomp";

/// The program files of one key, in install order.
pub type Files = Arc<[PathBuf]>;

/// What this shim remembers of a key.
enum Memo {
    /// In the node's cache directory.
    Files(Files),
    /// The cache directory is unusable: written into each container's bundle.
    Bytes(Arc<[Vec<u8>]>),
}

pub struct SeccompCache {
    dir: PathBuf,
    /// Identity of this shim build; None disables the node's files.
    build: Option<String>,
    memo: Mutex<HashMap<String, Memo>>,
}

impl SeccompCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let build = std::fs::metadata("/proc/self/exe").ok().map(|m| {
            format!(
                "{}:{}:{}:{}.{}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            )
        });
        SeccompCache {
            dir: dir.into(),
            build,
            memo: Mutex::new(HashMap::new()),
        }
    }

    /// The program files to install for `key` (what `compile` compiles: a policy's seccomp
    /// section, a pod's profile): from this shim's memory, else from the node's files, else
    /// compiled and written there. If the node's directory cannot be used (not a directory
    /// of ours that only we can read), the programs are written into `bundle` instead, as a
    /// shim without the cache did.
    pub fn programs(
        &self,
        key: &str,
        compile: impl FnOnce() -> Result<Vec<airlock_policies::SeccompProgram>>,
        bundle: &Path,
    ) -> Result<Vec<PathBuf>> {
        let mut memo = self.memo.lock().expect("not poisoned");
        match memo.get(key) {
            // Someone may have cleaned /run: then compile again.
            Some(Memo::Files(files)) if files.iter().all(|f| f.is_file()) => {
                return Ok(files.to_vec())
            }
            Some(Memo::Bytes(programs)) => return write_into(bundle, programs),
            _ => {}
        }
        let hash = self.hash(key);
        let usable = self.usable();
        if let Some(files) = usable.then(|| self.read(&hash)).flatten() {
            memo.insert(key.to_string(), Memo::Files(files.clone()));
            return Ok(files.to_vec());
        }
        let t = Instant::now();
        let programs = compile()?;
        info!(
            what = %key.chars().take(40).collect::<String>(),
            filters = programs.len(),
            instructions = programs.iter().map(|p| p.len()).sum::<usize>(),
            compile_us = t.elapsed().as_micros() as u64,
            "seccomp compiled"
        );
        let bytes: Arc<[Vec<u8>]> = programs.iter().map(|p| p.to_bytes()).collect();
        if usable {
            match self.write(&hash, &bytes) {
                Ok(files) => {
                    memo.insert(key.to_string(), Memo::Files(files.clone()));
                    return Ok(files.to_vec());
                }
                Err(e) => warn!("seccomp cache: {e}; programs go into each bundle"),
            }
        }
        memo.insert(key.to_string(), Memo::Bytes(bytes.clone()));
        write_into(bundle, &bytes)
    }

    /// The node's directory exists (made if missing), is a directory (not a link) owned by
    /// this process's user, and nobody else may read or write it.
    fn usable(&self) -> bool {
        if self.build.is_none() {
            return false;
        }
        let ok = ensure_private_dir(&self.dir).is_ok()
            && std::fs::symlink_metadata(&self.dir).is_ok_and(|m| {
                m.file_type().is_dir()
                    && m.uid() == nix::unistd::geteuid().as_raw()
                    && m.mode() & 0o077 == 0
            });
        if !ok {
            warn!(dir = %self.dir.display(), "seccomp cache unusable (must be a directory of ours with mode 0700); programs go into each bundle");
        }
        ok
    }

    fn hash(&self, key: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.build.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        hex::encode(h.finalize())
    }

    fn file(&self, hash: &str, i: usize) -> PathBuf {
        self.dir.join(format!("{hash}-{i}.bpf"))
    }

    fn manifest(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.count"))
    }

    /// The files of a complete earlier write, if any.
    fn read(&self, hash: &str) -> Option<Files> {
        let n: usize = std::fs::read_to_string(self.manifest(hash))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let files: Vec<PathBuf> = (0..n).map(|i| self.file(hash, i)).collect();
        files.iter().all(|f| f.is_file()).then(|| files.into())
    }

    /// Writes the programs and then their manifest into the node's directory.
    fn write(&self, hash: &str, programs: &[Vec<u8>]) -> Result<Files> {
        let mut files = Vec::with_capacity(programs.len());
        for (i, p) in programs.iter().enumerate() {
            let file = self.file(hash, i);
            write_atomically(&file, p)?;
            files.push(file);
        }
        write_atomically(&self.manifest(hash), programs.len().to_string().as_bytes())?;
        Ok(files.into())
    }
}

/// The programs as files in the container's bundle (containerd removes it with the container).
fn write_into(bundle: &Path, programs: &[Vec<u8>]) -> Result<Vec<PathBuf>> {
    programs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let file = bundle.join(format!("airlock-seccomp-{i}.bpf"));
            std::fs::write(&file, p)
                .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
            Ok(file)
        })
        .collect()
}

/// A directory only we can read (the programs are the sandbox's syscall filter).
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    // The parent is the state root (`/run/airlock`), which the runtime also makes.
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Written under a fresh temporary name beside `path` (created exclusively, mode 0600) and
/// renamed over it: a reader sees the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let what = |e| Error::io(format!("write {}", path.display()), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(what)?;
    tmp.write_all(bytes).map_err(what)?;
    tmp.persist(path).map_err(|e| what(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn program() -> Vec<airlock_policies::SeccompProgram> {
        let policy = airlock_policies::builtin("agent-strict").expect("built-in policy");
        policy.compile_seccomp().unwrap().into_iter().collect()
    }

    /// Compiled once per node: a second shim (a new cache on the same directory) reads the
    /// files; another key or another build compiles again. A file removed behind the shim's
    /// back is compiled again, not handed to the runtime.
    #[test]
    fn compiles_once_per_key_and_build() {
        let t = tempfile::tempdir().unwrap();
        let (dir, bundle) = (t.path().join("cache"), t.path());
        let compiled = Cell::new(0);
        let compile = || {
            compiled.set(compiled.get() + 1);
            Ok(program())
        };
        let a = SeccompCache::new(&dir);
        let files = a.programs("policy x", compile, bundle).unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].starts_with(&dir));
        assert_eq!(std::fs::read(&files[0]).unwrap(), program()[0].to_bytes());
        assert_eq!(a.programs("policy x", compile, bundle).unwrap(), files);
        assert_eq!(compiled.get(), 1);

        let b = SeccompCache::new(&dir);
        assert_eq!(b.programs("policy x", compile, bundle).unwrap(), files);
        assert_eq!(compiled.get(), 1, "a new shim reads the node's files");

        assert_ne!(b.programs("policy y", compile, bundle).unwrap(), files);
        assert_eq!(compiled.get(), 2);

        let mut other_build = SeccompCache::new(&dir);
        other_build.build = Some("another binary".into());
        assert_ne!(
            other_build.programs("policy x", compile, bundle).unwrap(),
            files
        );
        assert_eq!(compiled.get(), 3);

        std::fs::remove_file(&files[0]).unwrap();
        assert_eq!(a.programs("policy x", compile, bundle).unwrap(), files);
        assert_eq!(compiled.get(), 4, "a vanished file is compiled again");
        assert!(files[0].is_file());

        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&files[0]).unwrap().mode() & 0o777, 0o600);
    }

    /// Programs without their manifest (a write cut short) are compiled again; a key with no
    /// program at all (seccomp off) is remembered as none.
    #[test]
    fn an_incomplete_write_is_not_used() {
        let t = tempfile::tempdir().unwrap();
        let (dir, bundle) = (t.path().join("cache"), t.path());
        let a = SeccompCache::new(&dir);
        let files = a.programs("k", || Ok(program()), bundle).unwrap();
        std::fs::remove_file(a.manifest(&a.hash("k"))).unwrap();
        let compiled = Cell::new(false);
        let b = SeccompCache::new(&dir);
        let again = b
            .programs(
                "k",
                || {
                    compiled.set(true);
                    Ok(program())
                },
                bundle,
            )
            .unwrap();
        assert!(compiled.get());
        assert_eq!(again, files);

        assert!(b
            .programs("off", || Ok(Vec::new()), bundle)
            .unwrap()
            .is_empty());
        let c = SeccompCache::new(&dir);
        assert!(c
            .programs("off", || panic!("remembered as none"), bundle)
            .unwrap()
            .is_empty());
    }

    /// A cache directory others may read or write (or a link) is not used: the programs go
    /// into the bundle, nothing is written to the directory.
    #[test]
    fn an_unsafe_directory_is_not_used() {
        let t = tempfile::tempdir().unwrap();
        let (dir, bundle) = (t.path().join("cache"), t.path().join("bundle"));
        std::fs::create_dir(&bundle).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let a = SeccompCache::new(&dir);
        let files = a.programs("k", || Ok(program()), &bundle).unwrap();
        assert_eq!(files, vec![bundle.join("airlock-seccomp-0.bpf")]);
        assert_eq!(std::fs::read(&files[0]).unwrap(), program()[0].to_bytes());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &link).unwrap();
        std::fs::create_dir(t.path().join("elsewhere")).unwrap();
        std::fs::set_permissions(
            t.path().join("elsewhere"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let b = SeccompCache::new(&link);
        assert!(b.programs("k", || Ok(program()), &bundle).unwrap()[0].starts_with(&bundle));
    }
}
