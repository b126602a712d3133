//! A bound on a runtime step that a container can hold up.
//!
//! An exec's setup processes (libcontainer's intermediate and the init that becomes the exec'd
//! process) join the container's namespaces before they report back to the runtime, so a
//! process inside the container can see them and stop them (`kill -STOP`); the runtime then
//! waits for ever, and so would the Task API's Exec. The shim bounds the step instead: past
//! [`EXEC_SETUP_LIMIT`] it kills the runtime and every process it started, reaps them, and
//! fails the exec with an error that says so. Nothing is left waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long an exec's setup may take: it takes milliseconds (about a second in the emulated
/// test node), so only a setup held from inside the container gets near it.
pub const EXEC_SETUP_LIMIT: Duration = Duration::from_secs(10);

/// The parent pid in `/proc/<pid>/stat` text (the field after the command's closing paren).
fn ppid_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The command name in `/proc/<pid>/stat` text (between the first `(` and the last `)`).
fn comm_of(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// The name libcontainer gives its setup processes (`youki:[1:INTER]`, `youki:[2:INIT]`)
/// until the init execs the workload.
const SETUP_NAME: &str = "youki:[";

/// Every descendant of `root`, parents before children, and every child of this process that
/// is still a setup process (a setup process whose parent exited first was reparented here,
/// the subreaper), from one scan of `/proc`.
pub fn descendants(root: i32) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut orphans = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = ppid_of(&stat) {
            children.entry(ppid).or_default().push(pid);
            if ppid == me && comm_of(&stat).is_some_and(|c| c.starts_with(SETUP_NAME)) {
                orphans.push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut next = vec![root];
    next.extend(&orphans);
    out.extend(&orphans);
    while let Some(p) = next.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if !out.contains(&c) {
                out.push(c);
                next.push(c);
            }
        }
    }
    out
}

/// SIGKILLs `root` and its descendants (and setup processes reparented here, see
/// [`descendants`]) (SIGCONT too: a stopped process dies of SIGKILL as
/// well, but says so sooner when resumed), then reaps the descendants, which become this
/// process's children (it is their subreaper) once `root` is gone. `root` itself is reaped by
/// whoever spawned it. Returns the descendants it killed.
pub fn kill_tree(root: i32) -> Vec<i32> {
    let tree = descendants(root);
    for &p in std::iter::once(&root).chain(&tree) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = tree.clone();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(
            |&p| match waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => true,
                Ok(_) => false,
                // Not (yet) our child: wait while it exists (its parent is still dying).
                Err(_) => std::fs::metadata(format!("/proc/{p}")).is_ok(),
            },
        );
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_follows_the_command_even_with_parens_in_it() {
        assert_eq!(ppid_of("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(
            comm_of("42 (youki:[2:INIT]) T 7 42"),
            Some("youki:[2:INIT]")
        );
        assert_eq!(ppid_of("1 (init) S 0 1 1"), Some(0));
        assert_eq!(ppid_of("garbage"), None);
    }

    #[test]
    fn a_stopped_tree_is_killed_and_reaped() {
        // sh -> sleep, both stopped, as a held setup would be.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 600 & wait"])
            .spawn()
            .unwrap();
        let root = sh.id() as i32;
        let t0 = Instant::now();
        while descendants(root).is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let tree = descendants(root);
        assert_eq!(tree.len(), 1, "{tree:?}");
        for &p in std::iter::once(&root).chain(&tree) {
            kill(Pid::from_raw(p), Signal::SIGSTOP).unwrap();
        }
        assert_eq!(kill_tree(root), tree);
        let status = sh.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // The sleep was this test process's grandchild: killed, and gone (reaped by its
        // subreaper or init).
        let t0 = Instant::now();
        while std::fs::metadata(format!("/proc/{}", tree[0])).is_ok()
            && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let state = std::fs::read_to_string(format!("/proc/{}/stat", tree[0])).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "{state}");
    }
}
