//! Compiled seccomp programs, kept for the whole node.
//!
//! Every pod has its own shim, so a cache in the shim's memory alone compiles each policy's
//! filter once per pod: ~0.85 ms for `agent-strict` (1,438 instructions) on the start path of
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
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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

pub struct SeccompCache {
    dir: PathBuf,
    /// Identity of this shim build; None disables the files (compile in memory only).
    build: Option<String>,
    memo: Mutex<HashMap<String, Files>>,
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

    /// The program files for `key` (what `compile` compiles: a policy's seccomp section, a
    /// pod's profile): from this shim's memory, else from the node's files, else compiled
    /// and written there.
    pub fn programs(
        &self,
        key: &str,
        compile: impl FnOnce() -> Result<Vec<airlock_policies::SeccompProgram>>,
    ) -> Result<Files> {
        let mut memo = self.memo.lock().expect("not poisoned");
        if let Some(files) = memo.get(key) {
            return Ok(files.clone());
        }
        let hash = self.hash(key);
        let files = match self.read(&hash) {
            Some(files) => files,
            None => {
                let t = Instant::now();
                let programs = compile()?;
                info!(
                    what = %key.chars().take(40).collect::<String>(),
                    filters = programs.len(),
                    instructions = programs.iter().map(|p| p.len()).sum::<usize>(),
                    compile_us = t.elapsed().as_micros() as u64,
                    "seccomp compiled"
                );
                self.write(&hash, &programs)?
            }
        };
        memo.insert(key.to_string(), files.clone());
        Ok(files)
    }

    fn hash(&self, key: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.build.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    }

    fn file(&self, hash: &str, i: usize) -> PathBuf {
        self.dir.join(format!("{hash}-{i}.bpf"))
    }

    fn manifest(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.count"))
    }

    /// The files of a complete earlier write, if any.
    fn read(&self, hash: &str) -> Option<Files> {
        self.build.as_ref()?;
        let n: usize = std::fs::read_to_string(self.manifest(hash))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let files: Vec<PathBuf> = (0..n).map(|i| self.file(hash, i)).collect();
        files.iter().all(|f| f.is_file()).then(|| files.into())
    }

    /// Writes the programs and then their manifest. Without a usable cache directory the
    /// programs go to a private temporary directory of this shim instead (kept for its life).
    fn write(&self, hash: &str, programs: &[airlock_policies::SeccompProgram]) -> Result<Files> {
        let dir = if self.build.is_some() && ensure_private_dir(&self.dir).is_ok() {
            self.dir.clone()
        } else {
            let d = std::env::temp_dir().join(format!("airlock-seccomp-{}", std::process::id()));
            ensure_private_dir(&d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
            d
        };
        let here = |name: PathBuf| dir.join(name.file_name().expect("named file"));
        let mut files = Vec::with_capacity(programs.len());
        for (i, p) in programs.iter().enumerate() {
            let file = here(self.file(hash, i));
            write_atomically(&file, &p.to_bytes())?;
            files.push(file);
        }
        if dir == self.dir {
            if let Err(e) = write_atomically(
                &here(self.manifest(hash)),
                programs.len().to_string().as_bytes(),
            ) {
                warn!("seccomp cache: {e}");
            }
        }
        Ok(files.into())
    }
}

/// A directory only root can read (the programs are the sandbox's syscall filter).
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let what = |e| Error::io(format!("write {}", path.display()), e);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(what)?;
    f.write_all(bytes).map_err(what)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(what)
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
    /// files; another key or another build compiles again.
    #[test]
    fn compiles_once_per_key_and_build() {
        let dir = tempfile::tempdir().unwrap();
        let compiled = Cell::new(0);
        let compile = || {
            compiled.set(compiled.get() + 1);
            Ok(program())
        };
        let a = SeccompCache::new(dir.path());
        let files = a.programs("policy x", compile).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            std::fs::read(&files[0]).unwrap(),
            program()[0].to_bytes(),
            "the file holds the program"
        );
        assert_eq!(a.programs("policy x", compile).unwrap(), files);
        assert_eq!(compiled.get(), 1);

        let b = SeccompCache::new(dir.path());
        assert_eq!(b.programs("policy x", compile).unwrap(), files);
        assert_eq!(compiled.get(), 1, "a new shim reads the node's files");

        assert_ne!(b.programs("policy y", compile).unwrap(), files);
        assert_eq!(compiled.get(), 2);

        let mut other_build = SeccompCache::new(dir.path());
        other_build.build = Some("another binary".into());
        assert_ne!(other_build.programs("policy x", compile).unwrap(), files);
        assert_eq!(compiled.get(), 3);

        let mode = std::fs::metadata(dir.path().join(files[0].file_name().unwrap()))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Programs without their manifest (a write cut short) are compiled again; a key with no
    /// program at all (seccomp off) is remembered as none.
    #[test]
    fn an_incomplete_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let a = SeccompCache::new(dir.path());
        let files = a.programs("k", || Ok(program())).unwrap();
        std::fs::remove_file(a.manifest(&a.hash("k"))).unwrap();
        let compiled = Cell::new(false);
        let b = SeccompCache::new(dir.path());
        let again = b
            .programs("k", || {
                compiled.set(true);
                Ok(program())
            })
            .unwrap();
        assert!(compiled.get());
        assert_eq!(again, files);

        let none = b.programs("off", || Ok(Vec::new())).unwrap();
        assert!(none.is_empty());
        let c = SeccompCache::new(dir.path());
        assert!(c
            .programs("off", || panic!("remembered as none"))
            .unwrap()
            .is_empty());
    }
}
