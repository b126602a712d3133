//! One lazily started containerd per version per process, torn down at process exit.
//!
//! Rust's test harness has no global teardown; tests share a containerd through [`shared`], and an
//! `atexit` hook (registered on first use) drops every shared instance when the test binary exits
//! normally (also after failed tests, which libtest catches). Each test should use its own namespace
//! ([`Containerd::new_namespace`]) so tests can run in parallel.

use crate::containerd::{Containerd, Version};
use anyhow::Result;
use std::sync::{Arc, Mutex, Once};

/// An instance is keyed by its version and whether CRI is on.
type Key = (Version, bool);
static INSTANCES: Mutex<Vec<(Key, Arc<Containerd>)>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

extern "C" fn teardown() {
    let taken: Vec<_> = match INSTANCES.lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    // Dropping the last Arc stops containerd and removes everything it started.
    drop(taken);
}

/// The process-wide containerd of version `v`, started on first use.
pub fn shared(v: Version) -> Result<Arc<Containerd>> {
    shared_instance(v, false)
}

/// The process-wide containerd of version `v` with the CRI plugin on and the CRI images
/// (busybox, pause) imported into `k8s.io`, started on first use.
pub fn shared_cri(v: Version) -> Result<Arc<Containerd>> {
    shared_instance(v, true)
}

fn shared_instance(v: Version, cri: bool) -> Result<Arc<Containerd>> {
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with atexit(3).
        unsafe {
            libc::atexit(teardown);
        }
    });
    let mut g = INSTANCES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = g.iter().find(|(key, _)| *key == (v, cri)) {
        return Ok(c.clone());
    }
    let c = Arc::new(Containerd::builder().version(v).cri(cri).start()?);
    if cri {
        c.import_cri_images()?;
    }
    g.push(((v, cri), c.clone()));
    Ok(c)
}
