use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup (pid 0: the calling thread, see
    /// [`attach`])
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        attach(pid, cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}

/// AIRLOCK PATCH: `v1 attach without the global lock`.
///
/// Moves `pid` into the cgroup at `cgroup_path`: its whole thread group through
/// `cgroup.procs`, or, for pid 0, only the calling thread through `tasks`.
///
/// The kernel moves a thread group under `cgroup_threadgroup_rwsem` taken for writing. Unless
/// the hierarchy is mounted with `favordynmods`, that writer first waits for an RCU grace
/// period whenever no other migration happened in about the last one: 5-11 ms measured on this
/// project's machine, against 0.2 ms for the calling thread alone, which the kernel moves
/// without that lock. [`Manager::add_task`](super::manager::Manager) passes 0 when a
/// single-threaded process moves itself, where both mean the same move.
pub(super) fn attach(pid: Pid, cgroup_path: &Path) -> Result<(), WrappedIoError> {
    if pid.as_raw() == 0 {
        common::write_cgroup_file_str(cgroup_path.join(CGROUP_TASKS), "0")
    } else {
        common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid)
    }
}

/// The per-thread membership file of a v1 cgroup.
pub(super) const CGROUP_TASKS: &str = "tasks";
