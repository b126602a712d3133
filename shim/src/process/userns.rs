//! Per-pod host id ranges for user namespaces.
//!
//! Every pod gets its own range of [`SLOT_SIZE`] host uids/gids (the same numbers for both),
//! never shared with another pod, from [`BASE`] upwards. The ranges live as files in a state
//! directory shared by every shim on the node (`/run/airlock/.userns`: a dot name, so no
//! containerd namespace can collide with it), one file per allocated range named by its first
//! host id, holding the pod's key and the containers that use it:
//!
//! ```text
//! /run/airlock/.userns/1073741824.json  {"pod":"k8s.io/<sandbox-id>","members":["k8s.io/<id>", ...]}
//! ```
//!
//! Every operation holds an exclusive `flock` on `<dir>/.lock` (per open file description, so
//! it excludes threads as well as processes); the range file is also created with `O_EXCL`,
//! so two shims can never both own one range. A range is freed when its last container is
//! released: by the shim at Task.Delete or after a failed create, and by `shim delete` after
//! a shim crash (which only knows the container, hence members are recorded, not counts).
//! A file that cannot be read is treated as allocated: never reuse a range one is unsure of.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Ids per range.
pub const SLOT_SIZE: u32 = 65536;
/// First host id handed out: far above login users, system users and `/etc/subuid` ranges
/// (conventionally from 100000), and below 2^31 so 32-bit-signed tools still show them right.
pub const BASE: u32 = 1 << 30;
/// Ranges available (BASE + 16384 * 65536 = 2^31).
pub const SLOTS: u32 = 16384;
/// The node-wide directory of allocated ranges.
pub const STATE_DIR: &str = "/run/airlock/.userns";

const LOCK_FILE: &str = ".lock";

/// Set by the shim in the spec it writes to the bundle (`config.json`): the first host id of
/// the range the container was registered in. `shim delete` reads it on a node with many
/// pods, to release the container with one range file read ([`RangeAllocator::release_in`])
/// instead of reading every pod's. The shim removes it from any spec it did not register.
pub const HOST_ANNOTATION: &str = "airlock.dev/userns-range";

/// With at most this many range files, `shim delete` reads them all (cheaper than parsing the
/// bundle's spec for [`HOST_ANNOTATION`]).
pub const FEW_RANGES: usize = 8;

/// The range start recorded in a spec's annotations, if it is one of the allocator's.
pub fn host_from_annotations(a: Option<&std::collections::HashMap<String, String>>) -> Option<u32> {
    let host: u32 = a?.get(HOST_ANNOTATION)?.parse().ok()?;
    (host >= BASE && (host - BASE).is_multiple_of(SLOT_SIZE) && (host - BASE) / SLOT_SIZE < SLOTS)
        .then_some(host)
}

/// Host ids below this are the node's root, system and login users: a pod's own mapping may not
/// cover them.
pub const LOWEST_POD_HOST_ID: u64 = 65536;

/// The host id intervals `[start, end)` of the spec's own uid and gid mappings (a new user
/// namespace mapped by the pod: `ctr run --uidmap`, CRI `hostUsers: false`), checked: none may
/// cover the node's own users (below [`LOWEST_POD_HOST_ID`]) or Airlock's pool, where the
/// shim gives pods their ranges. Empty when the spec maps nothing itself.
pub fn pod_supplied_ranges(
    spec: &oci_spec::runtime::Spec,
) -> std::result::Result<Vec<(u64, u64)>, String> {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(linux) = spec.linux() else {
        return Ok(Vec::new());
    };
    let new_userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if !new_userns {
        return Ok(Vec::new());
    }
    let pool = (
        u64::from(BASE),
        u64::from(BASE) + u64::from(SLOTS) * u64::from(SLOT_SIZE),
    );
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (field, maps) in [
        ("linux.uidMappings", linux.uid_mappings()),
        ("linux.gidMappings", linux.gid_mappings()),
    ] {
        for m in maps.iter().flatten() {
            let (start, end) = (
                u64::from(m.host_id()),
                u64::from(m.host_id()) + u64::from(m.size()),
            );
            let what = format!(
                "{field}: container {} -> host {} (size {})",
                m.container_id(),
                m.host_id(),
                m.size()
            );
            if start < LOWEST_POD_HOST_ID {
                return Err(format!(
                    "{what} covers host ids below {LOWEST_POD_HOST_ID}, the node's root, system \
                     and login users; map the container at or above {LOWEST_POD_HOST_ID}, or \
                     leave the mappings out and Airlock maps the pod to a range of its own"
                ));
            }
            if start < pool.1 && pool.0 < end {
                return Err(format!(
                    "{what} overlaps Airlock's own pod ranges (host ids {}..{}); map the \
                     container outside them, or leave the mappings out and Airlock maps the \
                     pod to a range of its own",
                    pool.0,
                    pool.1 - 1
                ));
            }
            if end > start && !out.contains(&(start, end)) {
                out.push((start, end));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("host ids {start}..{end} of this pod's own mappings overlap those of pod {other} (host ids {other_start}..{other_end}): two pods may never share host ids; map this pod to a range of its own, or leave the mappings out and Airlock maps it to one")]
    Overlap {
        start: u64,
        end: u64,
        other: String,
        other_start: u64,
        other_end: u64,
    },
    #[error("user namespace ranges in {dir}: {what}: {source}; check that the directory is on a writable local filesystem")]
    Io {
        dir: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free user namespace range left in {dir} ({SLOTS} ranges of {SLOT_SIZE} ids are in use); delete pods, or remove range files of pods that no longer exist")]
    Exhausted { dir: PathBuf },
    #[error("a user namespace range of {asked} ids was asked for; ranges hold {SLOT_SIZE}")]
    TooLarge { asked: u32 },
}

pub type Result<T> = std::result::Result<T, UsernsError>;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct RangeFile {
    pod: String,
    members: Vec<String>,
    /// A pod's own mappings ([`RangeAllocator::claim`]): the host id intervals `[start, end)`
    /// it holds. Empty for a range of the pool (`[host, host + SLOT_SIZE)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ranges: Vec<(u64, u64)>,
}

impl RangeFile {
    /// The host id intervals the file holds; `host` is its first id (its name).
    fn intervals(&self, host: u32) -> Vec<(u64, u64)> {
        if self.ranges.is_empty() {
            vec![(u64::from(host), u64::from(host) + u64::from(SLOT_SIZE))]
        } else {
            self.ranges.clone()
        }
    }
}

/// Allocates and releases pod ranges under one state directory.
#[derive(Debug, Clone)]
pub struct RangeAllocator {
    dir: PathBuf,
    /// The range this allocator last saw a pod or member (container) in. Only a hint: the
    /// file it names is read under the lock and must still say so; otherwise every range file
    /// is read, as without it. It saves reading all of the node's range files (one per pod)
    /// for a pod's later containers and for releases.
    hint: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl Default for RangeAllocator {
    fn default() -> Self {
        RangeAllocator::new(STATE_DIR)
    }
}

impl RangeAllocator {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RangeAllocator {
            dir: dir.into(),
            hint: Default::default(),
        }
    }

    fn hinted(&self, key: &str) -> Option<u32> {
        self.hint.lock().ok()?.get(key).copied()
    }

    fn remember(&self, key: &str, host: Option<u32>) {
        if let Ok(mut h) = self.hint.lock() {
            match host {
                Some(host) => h.insert(key.to_string(), host),
                None => h.remove(key),
            };
        }
    }

    /// The range file of `host`, if it exists and reads.
    fn read(&self, host: u32) -> Option<RangeFile> {
        let bytes = std::fs::read(self.path_of(host)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UsernsError + '_ {
        let what = what.into();
        move |source| UsernsError::Io {
            dir: self.dir.clone(),
            what,
            source,
        }
    }

    fn lock(&self) -> Result<Flock<File>> {
        std::fs::create_dir_all(&self.dir).map_err(self.io("create the directory"))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK_FILE))
            .map_err(self.io("open the lock file"))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| (self.io("lock"))(std::io::Error::from(e)))
    }

    fn path_of(&self, host: u32) -> PathBuf {
        self.dir.join(format!("{host}.json"))
    }

    /// The allocated ranges: (first host id, contents or `None` if unreadable).
    fn ranges(&self) -> Result<Vec<(u32, Option<RangeFile>)>> {
        Ok(self
            .hosts()?
            .into_iter()
            .map(|host| (host, self.read(host)))
            .collect())
    }

    /// The first host ids of the ranges that have a file (`<host>.json`): a directory listing.
    fn hosts(&self) -> Result<Vec<u32>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(self.io("list"))? {
            let name = e.map_err(self.io("list"))?.file_name();
            if let Some(host) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                v.push(host);
            }
        }
        Ok(v)
    }

    fn write(&self, host: u32, f: &RangeFile, create: bool) -> Result<()> {
        let path = self.path_of(host);
        let bytes = serde_json::to_vec(f).expect("serializes");
        if create {
            // O_EXCL: a range file is created exactly once, whoever else is looking.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(self.io(format!("create {}", path.display())))?;
            return file
                .write_all(&bytes)
                .map_err(self.io(format!("write {}", path.display())));
        }
        let replace = self.io(format!("replace {}", path.display()));
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{host}"))
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(self.io(format!("write beside {}", path.display())))?;
        tmp.write_all(&bytes)
            .map_err(self.io(format!("write beside {}", path.display())))?;
        tmp.persist(&path).map_err(|e| replace(e.error))?;
        Ok(())
    }

    /// The first host id of `pod`'s range, allocating it when the pod has none; records
    /// `member` (a container, `<namespace>/<id>`) as a user of it. Idempotent per member.
    pub fn acquire(&self, pod: &str, member: &str, size: u32) -> Result<u32> {
        if size > SLOT_SIZE {
            return Err(UsernsError::TooLarge { asked: size });
        }
        let _lock = self.lock()?;
        let hinted = self
            .hinted(pod)
            .and_then(|h| self.read(h).filter(|f| f.pod == pod).map(|f| (h, f)));
        if let Some((host, mut f)) = hinted {
            if !f.members.iter().any(|m| m == member) {
                f.members.push(member.to_string());
                self.write(host, &f, false)?;
            }
            self.remember(member, Some(host));
            return Ok(host);
        }
        let mut ranges = self.ranges()?;
        if let Some((host, f)) = ranges
            .iter_mut()
            .find_map(|(h, f)| f.as_mut().filter(|f| f.pod == pod).map(|f| (*h, f)))
        {
            if !f.members.iter().any(|m| m == member) {
                f.members.push(member.to_string());
                self.write(host, f, false)?;
            }
            self.remember(pod, Some(host));
            self.remember(member, Some(host));
            return Ok(host);
        }
        let used: std::collections::HashSet<u32> = ranges.iter().map(|(h, _)| *h).collect();
        let host = (0..SLOTS)
            .map(|i| BASE + i * SLOT_SIZE)
            .find(|h| !used.contains(h))
            .ok_or_else(|| UsernsError::Exhausted {
                dir: self.dir.clone(),
            })?;
        self.write(
            host,
            &RangeFile {
                pod: pod.to_string(),
                members: vec![member.to_string()],
                ranges: Vec::new(),
            },
            true,
        )?;
        self.remember(pod, Some(host));
        self.remember(member, Some(host));
        Ok(host)
    }

    /// Registers `member` (a container, `<namespace>/<id>`) of `pod` as a user of the host id
    /// intervals of the pod's own mappings ([`pod_supplied_ranges`]), refusing them when they
    /// overlap another pod's, whether another pod's own mappings or a range of the pool. The
    /// record is released like a pool range ([`Self::release`]). Returns its first host id.
    pub fn claim(&self, pod: &str, member: &str, ranges: &[(u64, u64)]) -> Result<u64> {
        let _lock = self.lock()?;
        let mut mine = None;
        for (host, f) in self.ranges()? {
            let (other, held) = match &f {
                Some(f) => (f.pod.clone(), f.intervals(host)),
                // Unreadable: held by someone, at least a pool range.
                None => (
                    "(unreadable range file)".to_string(),
                    vec![(u64::from(host), u64::from(host) + u64::from(SLOT_SIZE))],
                ),
            };
            if other == pod && held == ranges {
                mine = f.map(|f| (host, f));
                continue;
            }
            for &(start, end) in ranges {
                if let Some(&(other_start, other_end)) =
                    held.iter().find(|(s, e)| start < *e && *s < end)
                {
                    return Err(UsernsError::Overlap {
                        start,
                        end: end - 1,
                        other,
                        other_start,
                        other_end: other_end - 1,
                    });
                }
            }
        }
        if let Some((host, mut f)) = mine {
            if !f.members.iter().any(|m| m == member) {
                f.members.push(member.to_string());
                self.write(host, &f, false)?;
            }
            return Ok(u64::from(host));
        }
        // Host ids are u32: so is the first of a mapping's interval.
        let first = ranges.first().map_or(0, |r| r.0);
        let host = first as u32;
        self.write(
            host,
            &RangeFile {
                pod: pod.to_string(),
                members: vec![member.to_string()],
                ranges: ranges.to_vec(),
            },
            true,
        )?;
        Ok(first)
    }

    /// Removes `member` from whichever range lists it; frees the range when it was the last.
    /// Returns the first host id of a range it freed. Unknown members are not an error.
    pub fn release(&self, member: &str) -> Result<Option<u32>> {
        let _lock = self.lock()?;
        let hinted = self.hinted(member).and_then(|h| {
            self.read(h)
                .filter(|f| f.members.iter().any(|m| m == member))
                .map(|f| (h, Some(f)))
        });
        self.remember(member, None);
        let ranges = match hinted {
            Some(r) => vec![r],
            None => self.ranges()?,
        };
        self.remove_member(member, ranges)
    }

    /// [`Self::release`] of a member whose range is known to start at `host` (the shim records
    /// it in the container's spec, [`HOST_ANNOTATION`]): only that range file is read. A range
    /// that does not list the member means there is nothing to release (the shim that served
    /// the container released it at Delete); no other range file is read.
    pub fn release_in(&self, member: &str, host: u32) -> Result<Option<u32>> {
        let _lock = self.lock()?;
        self.remember(member, None);
        self.remove_member(member, vec![(host, self.read(host))])
    }

    /// How many range files there are (one per pod with a range): a directory listing, no
    /// file read.
    pub fn count(&self) -> usize {
        self.hosts().map_or(0, |h| h.len())
    }

    /// Takes `member` out of the first of `ranges` that lists it; removes that range's file when
    /// it was the last member (returning its host id). Called with the lock held.
    fn remove_member(
        &self,
        member: &str,
        ranges: Vec<(u32, Option<RangeFile>)>,
    ) -> Result<Option<u32>> {
        for (host, f) in ranges {
            let Some(mut f) = f else { continue };
            let before = f.members.len();
            f.members.retain(|m| m != member);
            if f.members.len() == before {
                continue;
            }
            if f.members.is_empty() {
                self.remember(&f.pod, None);
                let path = self.path_of(host);
                std::fs::remove_file(&path)
                    .map_err(self.io(format!("remove {}", path.display())))?;
                return Ok(Some(host));
            }
            self.write(host, &f, false)?;
            return Ok(None);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(uid: (u32, u32, u32), gid: (u32, u32, u32)) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {
                "namespaces": [{"type": "user"}],
                "uidMappings": [{"containerID": uid.0, "hostID": uid.1, "size": uid.2}],
                "gidMappings": [{"containerID": gid.0, "hostID": gid.1, "size": gid.2}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn pod_mappings_may_not_cover_node_users_or_the_pool() {
        let e = pod_supplied_ranges(&mapped((0, 1, 65536), (0, 1, 65536))).unwrap_err();
        assert!(
            e.starts_with(
                "linux.uidMappings: container 0 -> host 1 (size 65536) covers host ids below 65536"
            ),
            "{e}"
        );
        let e = pod_supplied_ranges(&mapped((0, 200_000, 65536), (0, BASE + 5, 10))).unwrap_err();
        assert!(
            e.starts_with("linux.gidMappings") && e.contains("overlaps Airlock's own pod ranges"),
            "{e}"
        );
        let kubelet = (1u32 << 31) + 7 * 65536;
        let r = pod_supplied_ranges(&mapped((0, kubelet, 65536), (0, kubelet, 65536))).unwrap();
        assert_eq!(r, vec![(u64::from(kubelet), u64::from(kubelet) + 65536)]);
        // Joined by path, or no user namespace: nothing of the pod's own.
        let mut joined = mapped((0, 1, 65536), (0, 1, 65536));
        let ns = oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::User)
            .path("/proc/1/ns/user")
            .build()
            .unwrap();
        joined
            .linux_mut()
            .as_mut()
            .unwrap()
            .set_namespaces(Some(vec![ns]));
        assert_eq!(pod_supplied_ranges(&joined).unwrap(), vec![]);
    }

    #[test]
    fn pods_own_mappings_never_overlap_another_pods() {
        let d = tempfile::tempdir().unwrap();
        let a = RangeAllocator::new(d.path());
        let k = (1u64 << 31) + 7 * 65536;
        assert_eq!(a.claim("ns/p1", "ns/c1", &[(k, k + 65536)]).unwrap(), k);
        // The same pod's next container joins the record; another pod overlapping is refused.
        a.claim("ns/p1", "ns/c2", &[(k, k + 65536)]).unwrap();
        let e = a
            .claim("ns/p2", "ns/c3", &[(k + 100, k + 200)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap those of pod ns/p1"), "{e}");
        // A pool range is another pod's too.
        let pool = a.acquire("ns/p3", "ns/c4", SLOT_SIZE).unwrap();
        let p = u64::from(pool);
        assert!(a.claim("ns/p4", "ns/c5", &[(p, p + 1)]).is_err());
        // Released with its last member, like a pool range: then another pod may claim it.
        a.release("ns/c1").unwrap();
        assert!(a.claim("ns/p2", "ns/c3", &[(k, k + 65536)]).is_err());
        assert_eq!(a.release("ns/c2").unwrap(), Some(k as u32));
        a.claim("ns/p2", "ns/c3", &[(k + 100, k + 200)]).unwrap();
    }
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Barrier};

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn release_in_reads_only_the_range_it_is_given() {
        let d = tempfile::tempdir().unwrap();
        let a = RangeAllocator::new(d.path());
        let p1 = a.acquire("ns/pod1", "ns/c1", SLOT_SIZE).unwrap();
        let p2 = a.acquire("ns/pod2", "ns/c2", SLOT_SIZE).unwrap();
        assert_eq!(a.count(), 2);
        // Named the wrong range: nothing is released, and c2's range still lists it.
        assert_eq!(a.release_in("ns/c2", p1).unwrap(), None);
        assert_eq!(a.read(p2).unwrap().members, ["ns/c2"]);
        assert_eq!(a.read(p1).unwrap().members, ["ns/c1"]);
        // Its own range: released, and the range freed with its last member.
        assert_eq!(a.release_in("ns/c2", p2).unwrap(), Some(p2));
        assert_eq!(a.release_in("ns/c1", p1).unwrap(), Some(p1));
        // A range that is gone: nothing to do.
        assert_eq!(a.release_in("ns/c1", p1).unwrap(), None);
        assert_eq!(a.count(), 0);
        assert!(files(d.path()).is_empty(), "{:?}", files(d.path()));
    }

    #[test]
    fn only_a_range_start_is_taken_from_annotations() {
        let with = |v: &str| HashMap::from([(HOST_ANNOTATION.to_string(), v.to_string())]);
        assert_eq!(
            host_from_annotations(Some(&with(&BASE.to_string()))),
            Some(BASE)
        );
        let second = (BASE + SLOT_SIZE).to_string();
        assert_eq!(
            host_from_annotations(Some(&with(&second))),
            Some(BASE + SLOT_SIZE)
        );
        for bad in [
            "0",
            "1",
            "x",
            "",
            &(BASE + 1).to_string(),
            &(BASE - SLOT_SIZE).to_string(),
        ] {
            assert_eq!(host_from_annotations(Some(&with(bad))), None, "{bad:?}");
        }
        let past = (BASE + SLOTS * SLOT_SIZE).to_string();
        assert_eq!(host_from_annotations(Some(&with(&past))), None);
        assert_eq!(host_from_annotations(Some(&HashMap::new())), None);
        assert_eq!(host_from_annotations(None), None);
    }

    #[test]
    fn pods_get_distinct_ranges_containers_of_a_pod_share_one() {
        let d = tempfile::tempdir().unwrap();
        let a = RangeAllocator::new(d.path());
        let p1 = a.acquire("ns/pod1", "ns/c1", SLOT_SIZE).unwrap();
        let p1b = a.acquire("ns/pod1", "ns/c2", SLOT_SIZE).unwrap();
        let p2 = a.acquire("ns/pod2", "ns/c3", SLOT_SIZE).unwrap();
        assert_eq!(p1, BASE);
        assert_eq!(p1, p1b);
        assert_eq!(p2, BASE + SLOT_SIZE);
        // Acquiring again for the same member changes nothing.
        assert_eq!(a.acquire("ns/pod1", "ns/c1", SLOT_SIZE).unwrap(), p1);
        assert_eq!(a.release("ns/c1").unwrap(), None, "c2 still uses it");
        assert_eq!(a.release("ns/c2").unwrap(), Some(p1));
        // The freed range is reused; pod2's is not.
        assert_eq!(a.acquire("ns/pod3", "ns/c4", SLOT_SIZE).unwrap(), p1);
        assert_eq!(a.release("ns/c3").unwrap(), Some(p2));
        assert_eq!(a.release("ns/c4").unwrap(), Some(p1));
        assert_eq!(a.release("ns/unknown").unwrap(), None);
        assert!(files(d.path()).is_empty(), "{:?}", files(d.path()));
    }

    /// Another shim (allocator) may free a range this one remembers and give it to another
    /// pod: the remembered range is used only while its file still says so.
    #[test]
    fn a_remembered_range_is_checked_against_its_file() {
        let d = tempfile::tempdir().unwrap();
        let (a1, a2) = (RangeAllocator::new(d.path()), RangeAllocator::new(d.path()));
        let h = a1.acquire("ns/pod1", "ns/c1", SLOT_SIZE).unwrap();
        assert_eq!(
            a2.release("ns/c1").unwrap(),
            Some(h),
            "freed by the other shim"
        );
        assert_eq!(a2.acquire("ns/pod2", "ns/c2", SLOT_SIZE).unwrap(), h);
        // a1 remembers pod1 and c1 in h, which is pod2's now.
        let h1 = a1.acquire("ns/pod1", "ns/c3", SLOT_SIZE).unwrap();
        assert_ne!(h1, h, "pod1 must not get pod2's range");
        assert_eq!(a1.release("ns/c1").unwrap(), None, "c1 is in no range");
        assert_eq!(
            a2.release("ns/c2").unwrap(),
            Some(h),
            "pod2's range was left alone"
        );
        assert_eq!(a1.release("ns/c3").unwrap(), Some(h1));
        assert!(files(d.path()).is_empty(), "{:?}", files(d.path()));
    }

    #[test]
    fn an_unreadable_range_file_is_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let a = RangeAllocator::new(d.path());
        std::fs::write(d.path().join(format!("{BASE}.json")), b"{garbage").unwrap();
        assert_eq!(
            a.acquire("ns/p", "ns/c", SLOT_SIZE).unwrap(),
            BASE + SLOT_SIZE
        );
        assert!(matches!(
            a.acquire("ns/p", "ns/c", SLOT_SIZE + 1),
            Err(UsernsError::TooLarge { .. })
        ));
    }

    /// Many threads (each with its own lock file description) allocate and release at once:
    /// no two live pods ever hold the same range, and nothing is left at the end.
    #[test]
    fn concurrent_threads_never_share_a_range() {
        let d = tempfile::tempdir().unwrap();
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let a = RangeAllocator::new(d.path());
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let mut got = Vec::new();
                    for round in 0..20 {
                        let pod = format!("ns/pod-{t}-{round}");
                        let h1 = a.acquire(&pod, &format!("{pod}/a"), SLOT_SIZE).unwrap();
                        let h2 = a.acquire(&pod, &format!("{pod}/b"), SLOT_SIZE).unwrap();
                        assert_eq!(h1, h2);
                        got.push((pod.clone(), h1));
                        if round % 2 == 1 {
                            a.release(&format!("{pod}/a")).unwrap();
                            a.release(&format!("{pod}/b")).unwrap();
                            got.pop();
                        }
                    }
                    got
                })
            })
            .collect();
        let mut owner: HashMap<u32, String> = HashMap::new();
        for h in handles {
            for (pod, host) in h.join().unwrap() {
                if let Some(other) = owner.insert(host, pod.clone()) {
                    panic!("range {host} held by {other} and {pod}");
                }
            }
        }
        assert_eq!(owner.len(), threads * 10);
        assert_eq!(files(d.path()).len(), threads * 10);
        let a = RangeAllocator::new(d.path());
        for pod in owner.values() {
            a.release(&format!("{pod}/a")).unwrap();
            a.release(&format!("{pod}/b")).unwrap();
        }
        assert!(files(d.path()).is_empty());
    }

    /// Separate processes (forked children, each allocating for its own pods) get disjoint
    /// ranges: the flock and O_EXCL work across processes, not only threads.
    #[test]
    fn concurrent_processes_never_share_a_range() {
        let d = tempfile::tempdir().unwrap();
        let procs = 6;
        let per = 8;
        let mut children = Vec::new();
        for p in 0..procs {
            // A fresh process per allocator: re-exec this test binary in "child" mode.
            let exe = std::env::current_exe().unwrap();
            let child = std::process::Command::new(exe)
                .args([
                    "--exact",
                    "process::userns::tests::child_allocates",
                    "--nocapture",
                    "--ignored",
                ])
                .env("AIRLOCK_USERNS_TEST_DIR", d.path())
                .env("AIRLOCK_USERNS_TEST_POD", format!("proc{p}"))
                .env("AIRLOCK_USERNS_TEST_COUNT", per.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            children.push(child);
        }
        let mut seen = HashSet::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout);
            let hosts: Vec<u32> = text
                .lines()
                .filter_map(|l| l.strip_prefix("RANGE "))
                .map(|h| h.parse().unwrap())
                .collect();
            assert_eq!(hosts.len(), per, "{text}");
            for h in hosts {
                assert!(seen.insert(h), "range {h} handed out twice");
            }
        }
        assert_eq!(files(d.path()).len(), procs * per);
    }

    /// Helper of `concurrent_processes_never_share_a_range` (runs only when it starts it).
    #[test]
    #[ignore]
    fn child_allocates() {
        let Ok(dir) = std::env::var("AIRLOCK_USERNS_TEST_DIR") else {
            return;
        };
        let pod = std::env::var("AIRLOCK_USERNS_TEST_POD").unwrap();
        let n: usize = std::env::var("AIRLOCK_USERNS_TEST_COUNT")
            .unwrap()
            .parse()
            .unwrap();
        let a = RangeAllocator::new(dir);
        for i in 0..n {
            let h = a
                .acquire(
                    &format!("ns/{pod}-{i}"),
                    &format!("ns/{pod}-{i}/c"),
                    SLOT_SIZE,
                )
                .unwrap();
            println!("RANGE {h}");
        }
    }
}
