//! OOM kills in the guest's container cgroups, reported to the host as
//! [`FromAgent::Oom`]: when the kernel changes a cgroup's `memory.events` (inotify), and
//! again just before the exit of any of its processes is reported, so an OOM kill that ended
//! a process always reaches the host before that exit.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use rustix::fs::inotify;

use crate::processes::Send;
use crate::protocol::FromAgent;

struct Watch {
    inotify: OwnedFd,
    send: Send,
    /// The cgroup of each watch, and the OOM kills reported per cgroup.
    state: Mutex<(HashMap<i32, String>, HashMap<String, u64>)>,
}

static WATCH: OnceLock<Watch> = OnceLock::new();

/// Starts watching (once per agent): OOM kills go to `send`.
pub fn start(send: Send) -> std::io::Result<()> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
    let _ = WATCH.set(Watch {
        inotify: fd,
        send,
        state: Mutex::default(),
    });
    std::thread::Builder::new().name("oom".into()).spawn(run)?;
    Ok(())
}

fn run() {
    let Some(w) = WATCH.get() else { return };
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(&w.inotify, &mut buf);
    loop {
        let wd = match reader.next() {
            Ok(event) => event.wd(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        };
        let cgroup = w.state.lock().unwrap().0.get(&wd).cloned();
        if let Some(cgroup) = cgroup {
            check(&cgroup);
        }
    }
}

/// Watches guest cgroup `name`'s `memory.events` (no-op before [`start`] or when watched).
pub fn watch(name: &str) {
    let Some(w) = WATCH.get() else { return };
    let Ok(dir) = crate::cgroups::path(name) else {
        return;
    };
    let mut state = w.state.lock().unwrap();
    if state.1.contains_key(name) {
        return;
    }
    if let Ok(wd) = inotify::add_watch(
        &w.inotify,
        dir.join("memory.events"),
        inotify::WatchFlags::MODIFY,
    ) {
        state.0.insert(wd, name.to_string());
        state.1.insert(name.to_string(), 0);
    }
}

/// Forgets cgroup `name` (removed; its watch went with it).
pub fn forget(name: &str) {
    let Some(w) = WATCH.get() else { return };
    let mut state = w.state.lock().unwrap();
    state.0.retain(|_, n| n != name);
    state.1.remove(name);
}

/// Reports cgroup `name`'s OOM kills if there are more than reported so far.
pub fn check(name: &str) {
    let Some(w) = WATCH.get() else { return };
    let Some(kills) = crate::cgroups::oom_kills(name) else {
        return;
    };
    // Under the lock while sending: two checks cannot report out of order.
    let mut state = w.state.lock().unwrap();
    let Some(reported) = state.1.get_mut(name) else {
        return;
    };
    if kills > *reported {
        *reported = kills;
        (w.send)(&FromAgent::Oom {
            cgroup: name.to_string(),
            kills,
        });
    }
}
