//! What a shim killed during a Create leaves behind when containerd's cleanup cannot find it,
//! and its removal.
//!
//! containerd cleans up after a dead shim by running `shim delete` in the container's bundle,
//! which also names the shim's socket (its `address` file). When the shim is killed while a
//! Create is in flight, containerd's failed-create path can remove the bundle first; that
//! `delete` then never runs, and the container's init (created, waiting for a Start that
//! will not come), its cgroup, state and uid range, and the socket file under
//! `/run/containerd/s` stay with nothing to remove them.
//!
//! So `start` records each container with its shim's socket and bundle, as a file under
//! [`DIR`] (`<namespace>@<id>`); `shim delete` removes the record with the rest; and every
//! shim, once, soon after it starts ([`SWEEP_AFTER`], off any request's path), cleans up
//! after each recorded container whose socket nothing serves any more. A lock keeps that
//! sweep and the `start`s apart: a `start` (shared) binds the socket and writes the record
//! together, and the sweep (exclusive) never sees a socket that is bound but not recorded.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// Where the records live (the node's state root; a dot name, so no namespace's).
pub const DIR: &str = "/run/airlock/.orphans";

/// How long after its start a shim looks for the containers of dead shims.
pub const SWEEP_AFTER: Duration = Duration::from_secs(2);

/// One container as `start` recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub namespace: String,
    pub id: String,
    pub socket: PathBuf,
    pub bundle: PathBuf,
}

fn record_path(dir: &Path, namespace: &str, id: &str) -> PathBuf {
    // containerd's namespaces and ids hold only [A-Za-z0-9._-].
    dir.join(format!("{namespace}@{id}"))
}

/// The registry's lock: shared for `start`s, exclusive for a sweep.
pub fn lock(dir: &Path, exclusive: bool) -> std::io::Result<Flock<File>> {
    std::fs::create_dir_all(dir)?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    Flock::lock(f, arg).map_err(|(_, e)| e.into())
}

/// Records a container whose shim serves `socket` (hold [`lock`] shared around the bind and
/// this; the lock makes the directory).
pub fn record(dir: &Path, r: &Record) -> std::io::Result<()> {
    let text = format!("{}\n{}\n", r.socket.display(), r.bundle.display());
    std::fs::write(record_path(dir, &r.namespace, &r.id), text)
}

/// Removes the record of a container that has been cleaned up.
pub fn forget(dir: &Path, namespace: &str, id: &str) {
    let _ = std::fs::remove_file(record_path(dir, namespace, id));
}

/// The recorded container `namespace`/`id`, if any.
pub fn recorded(dir: &Path, namespace: &str, id: &str) -> Option<Record> {
    read(&record_path(dir, namespace, id))
}

fn read(path: &Path) -> Option<Record> {
    let name = path.file_name()?.to_str()?;
    let (namespace, id) = name.split_once('@')?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    Some(Record {
        namespace: namespace.to_owned(),
        id: id.to_owned(),
        socket: PathBuf::from(lines.next()?),
        bundle: PathBuf::from(lines.next()?),
    })
}

/// Whether nothing serves `socket`: it is gone, or a connect is refused (`start` binds and
/// listens before its shim runs, so a socket of a shim on its way accepts).
fn dead(socket: &Path) -> bool {
    match UnixStream::connect(socket) {
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused),
    }
}

/// Under the exclusive lock: for every recorded container whose shim's socket nothing
/// serves, runs `clean_up` (the same cleanup as `shim delete`), then removes the dead socket
/// and the record. Returns the containers cleaned up after.
pub fn sweep(dir: &Path, mut clean_up: impl FnMut(&Record)) -> std::io::Result<Vec<Record>> {
    let mut done = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e),
    };
    let paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
        .collect();
    if paths.is_empty() {
        return Ok(done);
    }
    let _held = lock(dir, true)?;
    for path in paths {
        let Some(r) = read(&path) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if !dead(&r.socket) {
            continue;
        }
        clean_up(&r);
        let _ = std::fs::remove_file(&r.socket);
        let _ = std::fs::remove_file(&path);
        done.push(r);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn rec(d: &Path, id: &str, socket: &Path) -> Record {
        Record {
            namespace: "ns1".into(),
            id: id.into(),
            socket: socket.to_path_buf(),
            bundle: d.join("bundles").join(id),
        }
    }

    /// A container whose socket nothing serves is cleaned up after, and its socket and record
    /// go; one whose shim serves stays; a forgotten one is not touched.
    #[test]
    fn sweep_cleans_up_after_dead_shims_only() {
        let d = tempfile::tempdir().unwrap();
        let recs = d.path().join("records");
        let dead_sock = d.path().join("dead");
        let live_sock = d.path().join("live");
        drop(UnixListener::bind(&dead_sock).unwrap());
        let live = UnixListener::bind(&live_sock).unwrap();
        let _l = lock(&recs, false).unwrap();
        for r in [
            rec(d.path(), "c1", &dead_sock),
            rec(d.path(), "c2", &live_sock),
            rec(d.path(), "c3", &dead_sock),
        ] {
            record(&recs, &r).unwrap();
        }
        drop(_l);
        forget(&recs, "ns1", "c3");
        let mut cleaned = Vec::new();
        let done = sweep(&recs, |r| cleaned.push(r.id.clone())).unwrap();
        assert_eq!(cleaned, vec!["c1".to_owned()]);
        assert_eq!(done, vec![rec(d.path(), "c1", &dead_sock)]);
        assert!(!dead_sock.exists(), "the dead socket stays");
        assert!(!recs.join("ns1@c1").exists());
        assert!(live_sock.exists() && recs.join("ns1@c2").exists());
        drop(live);
        let again = sweep(&recs, |_| {}).unwrap();
        assert_eq!(again.len(), 1);
        assert!(sweep(&recs, |_| panic!("nothing is left"))
            .unwrap()
            .is_empty());
    }

    /// A sweep waits for a `start` that holds the lock (its socket bound, its record not yet
    /// written), so it never judges a container halfway recorded.
    #[test]
    fn a_sweep_waits_for_a_start_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let recs = d.path().join("records");
        let sock = d.path().join("s");
        let held = lock(&recs, false).unwrap();
        record(&recs, &rec(d.path(), "old", &d.path().join("gone"))).unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        let recs2 = recs.clone();
        let sweeper = std::thread::spawn(move || sweep(&recs2, |_| {}).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !sweeper.is_finished(),
            "the sweep did not wait for the lock"
        );
        record(&recs, &rec(d.path(), "new", &sock)).unwrap();
        drop(held);
        let done = sweeper.join().unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].id, "old");
        assert!(recs.join("ns1@new").exists() && sock.exists());
        drop(listener);
    }

    /// A record with no readable content is dropped, and a missing directory is no error.
    #[test]
    fn bad_records_and_no_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(sweep(&d.path().join("none"), |_| {}).unwrap().is_empty());
        let recs = d.path().join("records");
        std::fs::create_dir_all(&recs).unwrap();
        std::fs::write(recs.join("no-separator"), "x").unwrap();
        assert!(sweep(&recs, |_| {}).unwrap().is_empty());
        assert!(!recs.join("no-separator").exists());
    }
}
