//! Checks of a container's spec against this node, made before anything is created: what the
//! node's kernel can enforce, and which cgroup a container may take.
//!
//! A container gets a cgroup of its own. Its delete, a failed create's cleanup and `kill --all`
//! signal every process in that cgroup, so a spec that names another container's cgroup, or a
//! hierarchy's root, would let one container kill another (or the node's own processes):
//! [`check_cgroup_claim`] refuses both.

use std::path::{Component, Path, PathBuf};

use airlock_state::blkio::BlockIoProbe;
use oci_spec::runtime::LinuxResources;

use crate::error::{Result, RuntimeError};

/// Refuses a block I/O weight the node cannot enforce (see [`airlock_state::blkio`]). The node
/// is probed only when a weight is asked for, so an ordinary start pays nothing.
pub fn check_block_io(
    resources: Option<&LinuxResources>,
    probe: impl FnOnce() -> BlockIoProbe,
) -> Result<()> {
    let Some(io) = resources.and_then(|r| r.block_io().as_ref()) else {
        return Ok(());
    };
    let mut asked = Vec::new();
    if io.weight().is_some_and(|w| w > 0) {
        asked.push("weight");
    }
    if io.leaf_weight().is_some_and(|w| w > 0) {
        asked.push("leafWeight");
    }
    if io.weight_device().as_ref().is_some_and(|d| !d.is_empty()) {
        asked.push("weightDevice");
    }
    if asked.is_empty() {
        return Ok(());
    }
    let probe = probe();
    match asked.iter().find_map(|f| probe.cannot_enforce(f)) {
        Some(why) => Err(RuntimeError::Unenforceable(why)),
        None => Ok(()),
    }
}

/// Writes the pid-namespaced sysctl `name` = `value` in the pid namespace of process `pid` (a
/// container's init, waiting for start). Its `/proc/sys` file belongs to the node's root in
/// every namespace, so the container's own (user-namespaced) root cannot: this process, the
/// node's root and single-threaded, makes the namespace its children's and forks a child that
/// writes the file from inside it.
pub fn write_pid_ns_sysctl(pid: i32, name: &str, value: &str) -> Result<()> {
    use nix::sched::{setns, CloneFlags};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let fail = |what: String| RuntimeError::Io(format!("cannot set {name} = {value}: {what}"));
    let target = std::fs::File::open(format!("/proc/{pid}/ns/pid"))
        .map_err(|e| fail(format!("open the pid namespace of {pid}: {e}")))?;
    let own = std::fs::File::open("/proc/self/ns/pid")
        .map_err(|e| fail(format!("open our pid namespace: {e}")))?;
    let file = format!("/proc/sys/{}", name.replace('.', "/"));
    setns(&target, CloneFlags::CLONE_NEWPID)
        .map_err(|e| fail(format!("join the pid namespace of {pid}: {e}")))?;
    // SAFETY: this process is single-threaded (airlock-runtime); the child writes one file and
    // exits.
    let forked = unsafe { fork() };
    let restored = setns(&own, CloneFlags::CLONE_NEWPID);
    match forked {
        Ok(ForkResult::Child) => {
            let code = match std::fs::write(&file, value) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(255).clamp(1, 255),
            };
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            restored.map_err(|e| fail(format!("return to our pid namespace: {e}")))?;
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(WaitStatus::Exited(_, e)) => Err(fail(format!(
                    "writing {file} in the container's pid namespace: {}",
                    std::io::Error::from_raw_os_error(e)
                ))),
                other => Err(fail(format!("the writer ended with {other:?}"))),
            }
        }
        Err(e) => Err(fail(format!("fork: {e}"))),
    }
}

/// The cgroup path relative to each hierarchy's root, or why it cannot be a container's own.
fn relative_cgroup(path: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => rel.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err("it has a '.' or '..' component");
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err("it names the root of the cgroup hierarchy, which holds the node's processes");
    }
    Ok(rel)
}

/// What a create found at the container's cgroup path before making it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No hierarchy has the cgroup yet: the create makes it.
    New,
    /// It exists, empty and without child cgroups, in at least one hierarchy (left by a create
    /// that crashed, or made by the operator): the container may use it, and a failed create
    /// leaves it in place.
    ExistingEmpty,
}

/// Checks that `cgroup_path` (the spec's `linux.cgroupsPath`) can be this container's own:
/// not a hierarchy's root, no `..`, and, where the cgroup exists in one of `hierarchies`, no
/// process in it and no cgroup below it. Every refusal says which input to change.
pub fn check_cgroup_claim(hierarchies: &[PathBuf], cgroup_path: &Path) -> Result<Claim> {
    let refuse = |why: String| {
        Err(RuntimeError::CgroupRefused {
            path: cgroup_path.to_owned(),
            why,
        })
    };
    let rel = match relative_cgroup(cgroup_path) {
        Ok(r) => r,
        Err(why) => return refuse(why.to_owned()),
    };
    let mut claim = Claim::New;
    for h in hierarchies {
        let dir = h.join(&rel);
        if !dir.is_dir() {
            continue;
        }
        claim = Claim::ExistingEmpty;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<&str> = procs.split_whitespace().take(5).collect();
        if !pids.is_empty() {
            return refuse(format!(
                "it exists and holds processes (pids {}{}, in {})",
                pids.join(", "),
                if procs.split_whitespace().count() > 5 {
                    ", ..."
                } else {
                    ""
                },
                dir.display()
            ));
        }
        let child = std::fs::read_dir(&dir)
            .map_err(|e| RuntimeError::Io(format!("cannot read cgroup {}: {e}", dir.display())))?
            .flatten()
            .find(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        if let Some(child) = child {
            return refuse(format!(
                "other cgroups live below it ({})",
                child.path().display()
            ));
        }
    }
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBlockIoBuilder, LinuxResourcesBuilder};

    fn no_weights() -> BlockIoProbe {
        BlockIoProbe {
            unified: false,
            weight_file: None,
            weight_device_file: None,
            leaf_weight: false,
            known: true,
            schedulers: vec![("vda".into(), "mq-deadline".into())],
        }
    }

    #[test]
    fn a_weight_the_node_cannot_enforce_is_refused_by_name() {
        let r = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = check_block_io(Some(&r), no_weights)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the node's kernel cannot enforce blockIO.weight"),
            "{e}"
        );
        assert!(e.contains("vda: mq-deadline"), "{e}");
    }

    #[test]
    fn no_weight_asks_nothing_of_the_node() {
        let r = LinuxResourcesBuilder::default()
            .block_io(LinuxBlockIoBuilder::default().weight(0u16).build().unwrap())
            .build()
            .unwrap();
        check_block_io(Some(&r), || panic!("probed without a weight")).unwrap();
        check_block_io(None, || panic!("probed without resources")).unwrap();
    }

    #[test]
    fn the_root_and_dot_dot_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let h = vec![d.path().to_owned()];
        for bad in ["/", "", "/default/../..", "./x", "/a/../b"] {
            let e = check_cgroup_claim(&h, Path::new(bad)).unwrap_err();
            assert!(
                matches!(e, RuntimeError::CgroupRefused { .. }),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("linux.cgroupsPath"), "{e}");
        }
    }

    #[test]
    fn a_cgroup_with_processes_or_children_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let h = vec![d.path().join("memory"), d.path().join("pids")];
        for dir in &h {
            std::fs::create_dir_all(dir.join("default/victim")).unwrap();
            std::fs::write(dir.join("default/victim/cgroup.procs"), "").unwrap();
        }
        std::fs::write(h[1].join("default/victim/cgroup.procs"), "4242\n4243\n").unwrap();
        let e = check_cgroup_claim(&h, Path::new("/default/victim"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds processes (pids 4242, 4243"), "{e}");
        let e = check_cgroup_claim(&h, Path::new("/default"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("other cgroups live below it"), "{e}");
        assert_eq!(
            check_cgroup_claim(&h, Path::new("/default/new")).unwrap(),
            Claim::New
        );
        std::fs::write(h[1].join("default/victim/cgroup.procs"), "").unwrap();
        assert_eq!(
            check_cgroup_claim(&h, Path::new("/default/victim")).unwrap(),
            Claim::ExistingEmpty
        );
    }
}
