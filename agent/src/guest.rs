//! `airlock-agent` as the guest's PID 1: mount the kernel's file systems, load the modules
//! the initramfs carries, open the control port and serve the shim's requests.
//!
//! Nothing here can be told to the agent except through [`crate::protocol`]: it reads no
//! environment and no kernel command line.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_contract::ErrorKind;
use rustix::fs::{FileType, Mode};
use rustix::mount::MountFlags;

#[cfg(doc)]
use crate::modules::ModuleDep;
use crate::processes::{Processes, Send};
use crate::protocol::{self, Call, FromAgent, Ready, Request, Response, PORT_NAME, VERSION};

/// Where the initramfs keeps the modules and their trimmed `modules.dep`.
pub const MODULES_DIR: &str = "/lib/modules";
/// How long the agent waits for its control port to show up before it powers off.
const PORT_WAIT: Duration = Duration::from_secs(30);

/// Milliseconds since the guest kernel booted.
pub fn boottime_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

fn log(msg: &str) {
    // PID 1's stderr is the kernel console (the VM's serial log on the host).
    let _ = writeln!(io::stderr(), "airlock-agent: {msg}");
}

fn mount(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let data = CString::new(data).map_err(|_| io::ErrorKind::InvalidInput)?;
    rustix::mount::mount(src, target, fstype, flags, Some(data.as_c_str()))?;
    Ok(())
}

/// Mounts /proc, /sys, /dev, /dev/pts and the cgroup v2 hierarchy.
pub fn mount_kernel_filesystems() -> io::Result<()> {
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount("proc", "/proc", "proc", hardened, "")?;
    mount("sysfs", "/sys", "sysfs", hardened, "")?;
    mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    )?;
    // The terminals of the processes it runs (Io::Terminal).
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0620,ptmxmode=0666",
    )?;
    crate::cgroups::mount()?;
    Ok(())
}

/// Loads every module of `dir/modules.dep` in the order it lists them (the initramfs
/// builder writes it in load order: [`ModuleDep::render`]); a module already loaded is fine.
pub fn load_modules(dir: &Path) -> io::Result<()> {
    let dep = fs::read_to_string(dir.join("modules.dep"))?;
    let files = dep
        .lines()
        .filter_map(|l| l.split_once(':').map(|(f, _)| f.trim().to_string()));
    for file in files {
        let path = dir.join(&file);
        let f = File::open(&path)?;
        match rustix::system::finit_module(&f, c"", 0) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("loading kernel module {}: {e}", path.display()),
                ))
            }
        }
    }
    Ok(())
}

/// Finds the virtio-serial port named `name` and opens it (its device node made from sysfs,
/// so it does not depend on devtmpfs naming).
pub fn open_port(name: &str, wait: Duration) -> io::Result<File> {
    let start = Instant::now();
    loop {
        if let Ok(ports) = fs::read_dir("/sys/class/virtio-ports") {
            for port in ports.flatten() {
                let p = port.path();
                if fs::read_to_string(p.join("name"))
                    .unwrap_or_default()
                    .trim()
                    != name
                {
                    continue;
                }
                let dev = fs::read_to_string(p.join("dev"))?;
                let (major, minor) = dev
                    .trim()
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| io::Error::other(format!("bad dev number {dev:?}")))?;
                let node = format!("/dev/{name}");
                match rustix::fs::mknodat(
                    rustix::fs::CWD,
                    node.as_str(),
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                ) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                return OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&node);
            }
        }
        if start.elapsed() > wait {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn mount_share(tag: &str, target: &str, read_only: bool) -> Response {
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    match mount(tag, target, "virtiofs", flags, "") {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            kind: match e.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
                _ => ErrorKind::Unknown,
            },
            message: format!("mounting virtio-fs share {tag} at {target}: {e}"),
        },
    }
}

fn answer(req: &Request, processes: &Processes, send: &Send) -> Response {
    match req {
        Request::Ping => Response::Pong {
            uptime_ms: boottime_ms(),
        },
        Request::Mount {
            tag,
            target,
            read_only,
        } => mount_share(tag, target, *read_only),
        Request::Network { network } => match airlock_net::guest::configure(network) {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error {
                kind: ErrorKind::FailedPrecondition,
                message: format!("the pod's network in the guest: {e}"),
            },
        },
        Request::Run {
            process,
            args,
            env,
            root,
            cwd,
            io,
            confine,
        } => processes.run(process, args, env, root, cwd, *io, confine, send.clone()),
        Request::Resize {
            process,
            rows,
            cols,
        } => processes.resize(process, *rows, *cols),
        Request::CloseInput { process } => processes.close_input(process),
        // Answered by the process's stdin writer (see the serving loop).
        Request::Input { .. } => Response::Ok,
        Request::Limits { cgroup, limits } => {
            let r = crate::cgroups::set_limits(cgroup, limits);
            if r == Response::Ok {
                crate::oom::watch(cgroup);
            }
            r
        }
        Request::RemoveCgroup { cgroup } => {
            let r = crate::cgroups::remove(cgroup);
            crate::oom::forget(cgroup);
            r
        }
        Request::Freeze { cgroup, frozen } => crate::cgroups::freeze(cgroup, *frozen),
        Request::ReadCgroup { cgroup } => crate::cgroups::read(cgroup),
        Request::Signal { process, signal } => processes.signal(process, *signal),
        Request::Shutdown => Response::Ok,
    }
}

fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    // Only PID 1 may reboot; outside a guest there is nothing to power off.
    std::process::exit(1)
}

/// The agent's life: set up, say [`Ready`], serve until told to shut down or until the host
/// closes the port, then power the guest off.
pub fn run() -> ! {
    let init_ms = boottime_ms();
    if let Err(e) = mount_kernel_filesystems() {
        log(&format!("mounting /proc, /sys, /dev, /sys/fs/cgroup: {e}"));
        power_off();
    }
    if let Err(e) = load_modules(Path::new(MODULES_DIR)) {
        log(&e.to_string());
        power_off();
    }
    let modules_ms = boottime_ms();
    let port = match open_port(PORT_NAME, PORT_WAIT) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("control port: {e}"));
            power_off();
        }
    };
    let ready = Ready {
        version: VERSION,
        init_ms,
        modules_ms,
        port_ms: boottime_ms(),
    };
    let (mut r, mut w) = match port.try_clone() {
        Ok(w) => (port, w),
        Err(e) => {
            log(&format!("control port: {e}"));
            power_off();
        }
    };
    // The port's writes wait until the host side is connected, so Ready is never lost.
    if let Err(e) = protocol::write_frame(&mut w, &ready) {
        log(&e.to_string());
        power_off();
    }
    // Replies and the processes' output and exits share the port, one whole frame at a time.
    let writer = Mutex::new(w);
    let send: Send = Arc::new(move |msg: &FromAgent| {
        if let Err(e) = protocol::write_frame(&mut *writer.lock().unwrap(), msg) {
            log(&format!("control port: {e}"));
        }
    });
    if let Err(e) = crate::oom::start(send.clone()) {
        log(&format!("OOM watch: {e}"));
        power_off();
    }
    let processes = Processes::get();
    loop {
        let call: Call = match protocol::read_frame(&mut r) {
            Ok(call) => call,
            Err(protocol::Error::Decode(e)) => {
                log(&format!("not a call this agent knows: {e}"));
                continue;
            }
            Err(e) => {
                log(&e.to_string());
                break;
            }
        };
        // Input is answered once written, by the process's own writer: a process that does
        // not read its stdin holds up nothing else.
        if let Request::Input { process, data } = call.request {
            let (id, send) = (call.id, send.clone());
            let reply = Box::new(move |response| send(&FromAgent::Reply { id, response }));
            processes.input(&process, data, reply);
            continue;
        }
        let response = answer(&call.request, processes, &send);
        send(&FromAgent::Reply {
            id: call.id,
            response,
        });
        if call.request == Request::Shutdown {
            break;
        }
    }
    power_off()
}
