//! What this node's kernel can enforce of a container's block I/O weights.
//!
//! A weight is proportional sharing, and only some I/O schedulers do it: BFQ (`blkio.bfq.weight`
//! on cgroup v1, `io.bfq.weight` on v2), CFQ before Linux 5.0 (`blkio.weight`), or io.cost on
//! cgroup v2 (`io.weight`). Machines of one kind differ here (one kernel build of this project's
//! machines has BFQ, the next uses mq-deadline and has no weight file at all), so the files are
//! probed, never assumed. Throttles (`blkio.throttle.*`, `io.max`) need none of this and are not
//! checked.

use std::path::{Path, PathBuf};

/// The weight files a container cgroup of this node gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIoProbe {
    /// `true` on a cgroup v2 host.
    pub unified: bool,
    /// The file a `blockIO.weight` is written to, if the node has one; `None` when it has
    /// none (or, on v2, when no cgroup with the io controller exists to look at: `known` false).
    pub weight_file: Option<&'static str>,
    /// The file per-device weights (`blockIO.weightDevice`) are written to, if any.
    pub weight_device_file: Option<&'static str>,
    /// `blkio.leaf_weight` exists (cgroup v1 with CFQ only; v2 has no leaf weight).
    pub leaf_weight: bool,
    /// Whether the probe could see a cgroup of the controller at all.
    pub known: bool,
    /// `(device, active scheduler)` of the node's block devices, for the error message.
    pub schedulers: Vec<(String, String)>,
}

impl BlockIoProbe {
    /// Probes this node: the blkio hierarchy's root on cgroup v1; on v2 a cgroup below the
    /// root that has the io controller (the root has no weight files).
    pub fn detect() -> Self {
        Self::detect_under(Path::new("/"))
    }

    /// [`Self::detect`] of the `/proc` and `/sys` under `root` (`/` on a node; a fake tree in
    /// tests).
    pub fn detect_under(root: &Path) -> Self {
        let cgroup = root.join("sys/fs/cgroup");
        let unified = cgroup.join("cgroup.controllers").exists();
        let dir = if unified {
            find_io_cgroup(&cgroup)
        } else {
            std::fs::read_to_string(root.join("proc/self/mountinfo"))
                .map(|t| crate::cgroups::parse_mountinfo(&t))
                .unwrap_or_default()
                .into_iter()
                .find(|m| !m.unified && m.options.split(',').any(|o| o == "blkio"))
                .map(|m| root.join(m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point)))
        };
        Self::from_dir(unified, dir.as_deref(), &root.join("sys/block"))
    }

    /// The probe of the cgroup directory `dir` (see [`Self::detect`]); `sys_block` is where the
    /// block devices' schedulers are read.
    pub fn from_dir(unified: bool, dir: Option<&Path>, sys_block: &Path) -> Self {
        let has = |f: &str| dir.is_some_and(|d| d.join(f).exists());
        let pick = |files: &[&'static str]| files.iter().copied().find(|f| has(f));
        let (weight_file, weight_device_file, leaf_weight) = if unified {
            (
                pick(&["io.bfq.weight", "io.weight"]),
                pick(&["io.bfq.weight"]),
                false,
            )
        } else {
            (
                pick(&["blkio.weight", "blkio.bfq.weight"]),
                pick(&["blkio.weight_device", "blkio.bfq.weight_device"]),
                has("blkio.leaf_weight"),
            )
        };
        BlockIoProbe {
            unified,
            weight_file,
            weight_device_file,
            leaf_weight,
            known: dir.is_some(),
            schedulers: schedulers(sys_block),
        }
    }

    /// Why the node cannot enforce the OCI field `field` (`weight`, `weightDevice` or
    /// `leafWeight` of `linux.resources.blockIO`), or `None` when it can (or the probe could
    /// not tell, and the kernel is left to answer).
    pub fn cannot_enforce(&self, field: &str) -> Option<String> {
        if !self.known {
            return None;
        }
        let missing = match field {
            "weight" if self.weight_file.is_none() => {
                if self.unified {
                    "no io.bfq.weight (BFQ) or io.weight (io.cost) file in the io cgroup"
                } else {
                    "no blkio.bfq.weight (BFQ) or blkio.weight (CFQ) file in the blkio cgroup"
                }
            }
            "weightDevice" if self.weight_device_file.is_none() => {
                if self.unified {
                    "no io.bfq.weight file (per-device weights need BFQ) in the io cgroup"
                } else {
                    "no blkio.weight_device or blkio.bfq.weight_device file in the blkio cgroup"
                }
            }
            "leafWeight" if !self.leaf_weight => {
                if self.unified {
                    "cgroup v2 has no leaf weight"
                } else {
                    "no blkio.leaf_weight file (leaf weights need CFQ) in the blkio cgroup"
                }
            }
            _ => return None,
        };
        let sched = if self.schedulers.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .schedulers
                .iter()
                .map(|(d, s)| format!("{d}: {s}"))
                .collect();
            format!(" (the block devices' I/O schedulers: {})", list.join(", "))
        };
        Some(format!(
            "the node's kernel cannot enforce blockIO.{field}: {missing}{sched}; \
             leave linux.resources.blockIO.{field} unset (throttles still work), or make BFQ \
             the scheduler of the node's disks (`modprobe bfq` and \
             `echo bfq > /sys/block/DEV/queue/scheduler`)"
        ))
    }
}

/// A direct child of the v2 root that has the io controller enabled (its `io.max` exists).
fn find_io_cgroup(root: &Path) -> Option<PathBuf> {
    let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).ok()?;
    if !enabled.split_whitespace().any(|c| c == "io") {
        return None;
    }
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .take(256)
        .map(|e| e.path())
        .find(|p| p.join("io.max").exists())
}

/// `(device, active scheduler)` of every device under `sys_block` that has a scheduler file.
fn schedulers(sys_block: &Path) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                return None;
            }
            let text = std::fs::read_to_string(e.path().join("queue/scheduler")).ok()?;
            let active = text
                .split_whitespace()
                .find(|s| s.starts_with('['))?
                .trim_matches(|c| c == '[' || c == ']')
                .to_owned();
            Some((name, active))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        d
    }

    fn sys_block(devs: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (dev, text) in devs {
            let q = d.path().join(dev).join("queue");
            std::fs::create_dir_all(&q).unwrap();
            std::fs::write(q.join("scheduler"), text).unwrap();
        }
        d
    }

    #[test]
    fn v1_without_bfq_or_cfq_cannot_weigh_and_says_why() {
        let cg = files(&["blkio.throttle.read_bps_device", "cgroup.procs"]);
        let sb = sys_block(&[
            ("vda", "none [mq-deadline] kyber\n"),
            ("loop0", "[none] mq-deadline\n"),
        ]);
        let p = BlockIoProbe::from_dir(false, Some(cg.path()), sb.path());
        assert_eq!(p.weight_file, None);
        let e = p.cannot_enforce("weight").expect("refused");
        assert!(
            e.starts_with("the node's kernel cannot enforce blockIO.weight: no blkio.bfq.weight"),
            "{e}"
        );
        assert!(
            e.contains("vda: mq-deadline") && !e.contains("loop0"),
            "{e}"
        );
        assert!(
            e.contains("leave linux.resources.blockIO.weight unset"),
            "{e}"
        );
        assert!(p.cannot_enforce("weightDevice").is_some());
        assert!(p.cannot_enforce("leafWeight").is_some());
        assert_eq!(p.cannot_enforce("throttleReadBpsDevice"), None);
    }

    #[test]
    fn v1_with_bfq_weighs() {
        let cg = files(&["blkio.bfq.weight", "blkio.bfq.weight_device"]);
        let sb = sys_block(&[("sda", "mq-deadline kyber [bfq] none\n")]);
        let p = BlockIoProbe::from_dir(false, Some(cg.path()), sb.path());
        assert_eq!(p.weight_file, Some("blkio.bfq.weight"));
        assert_eq!(p.cannot_enforce("weight"), None);
        assert_eq!(p.cannot_enforce("weightDevice"), None);
        assert!(
            p.cannot_enforce("leafWeight").is_some(),
            "BFQ has no leaf weight"
        );
    }

    #[test]
    fn v2_prefers_bfq_and_falls_back_to_io_cost() {
        let sb = sys_block(&[]);
        let cost = files(&["io.weight", "io.max"]);
        let p = BlockIoProbe::from_dir(true, Some(cost.path()), sb.path());
        assert_eq!(p.weight_file, Some("io.weight"));
        assert_eq!(p.cannot_enforce("weight"), None);
        let e = p.cannot_enforce("weightDevice").unwrap();
        assert!(e.contains("io.bfq.weight"), "{e}");
        let bfq = files(&["io.weight", "io.bfq.weight", "io.max"]);
        let p = BlockIoProbe::from_dir(true, Some(bfq.path()), sb.path());
        assert_eq!(p.weight_file, Some("io.bfq.weight"));
        assert!(p
            .cannot_enforce("leafWeight")
            .unwrap()
            .contains("no leaf weight"));
        let none = files(&["io.max"]);
        let p = BlockIoProbe::from_dir(true, Some(none.path()), sb.path());
        assert!(p.cannot_enforce("weight").unwrap().contains("io.cost"));
    }

    #[test]
    fn an_unknown_node_leaves_the_answer_to_the_kernel() {
        let sb = sys_block(&[]);
        let p = BlockIoProbe::from_dir(true, None, sb.path());
        assert!(!p.known);
        assert_eq!(p.cannot_enforce("weight"), None);
    }

    #[test]
    fn this_node_is_probed_without_error() {
        let p = BlockIoProbe::detect();
        // Whatever the kernel offers, the answer for weight agrees with the file found.
        assert_eq!(
            p.cannot_enforce("weight").is_none(),
            p.weight_file.is_some() || !p.known,
            "{p:?}"
        );
    }
}
