//! `airlock-probe`: the escape battery's attempts, run from inside a sandbox.
//!
//! Each attempt runs in a forked child (so a kill by seccomp, or a changed process state,
//! stays in the child) and reports one line: `<attempt>\t<outcome>`, where the outcome
//! starts with one of
//!
//! * `refused <ERRNO>`: the call failed with that errno;
//! * `killed <SIGNAL>`: the child was killed (e.g. SIGSYS by a seccomp filter);
//! * `contained <detail>`: the call "worked" but reached nothing outside the sandbox;
//! * `ALLOWED <detail>`: the call succeeded: the sandbox let it through.
//!
//! `airlock-probe` runs every attempt; `airlock-probe NAME...` runs the named ones.
//! It is built statically (see `integration/src/probe.rs`) and bind-mounted read-only into
//! the busybox test image. Only raw syscalls through libc; nothing here is meant to succeed.

use std::ffi::CString;
use std::io::Write;

type Attempt = fn() -> String;

const ATTEMPTS: &[(&str, Attempt)] = &[
    ("mount_tmpfs", mount_tmpfs),
    ("remount_root_rw", remount_root_rw),
    ("umount_masked_kcore", umount_masked_kcore),
    ("unshare_user", || {
        call(|| sys(libc::SYS_unshare, &[libc::CLONE_NEWUSER as i64]))
    }),
    ("unshare_mount", || {
        call(|| sys(libc::SYS_unshare, &[libc::CLONE_NEWNS as i64]))
    }),
    ("clone_newuser", clone_newuser),
    ("ptrace_attach", ptrace_attach),
    ("keyctl_join_session", keyctl_join),
    ("bpf_map_create", bpf_map_create),
    ("perf_event_open", perf_event_open),
    ("finit_module", || {
        call(|| sys(libc::SYS_finit_module, &[-1, 0, 0]))
    }),
    ("reboot", || call(|| sys(libc::SYS_reboot, &[0, 0, 0, 0]))),
    ("iopl", || call(|| sys(libc::SYS_iopl, &[3]))),
    ("userfaultfd", || call(|| sys(libc::SYS_userfaultfd, &[0]))),
    ("io_uring_setup", io_uring_setup),
    ("open_by_handle_at", open_by_handle_at),
    ("setuid_binary_nnp", no_new_privs),
    ("raw_socket", || {
        socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
    }),
    ("packet_socket", || {
        socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
    }),
    ("vsock_socket", || {
        socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0)
    }),
    ("mknod_block_device", mknod_block),
    ("chroot", || {
        call(|| with_path("/tmp", |p| unsafe { libc::chroot(p) } as i64))
    }),
    ("write_proc_sys", || open_write("/proc/sys/kernel/hostname")),
    ("write_sysrq_trigger", || open_write("/proc/sysrq-trigger")),
    ("write_sys", || {
        open_write("/sys/kernel/mm/transparent_hugepage/enabled")
    }),
    ("read_kcore", read_kcore),
    ("host_pid1_root", host_pid1),
    ("x32_syscall", || {
        call(|| sys(0x4000_0000 | libc::SYS_getpid, &[]))
    }),
    ("i386_int80", i386_int80),
    ("fill_tmp", fill_tmp),
    ("memfd_exec", memfd_exec),
];

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    for (name, attempt) in ATTEMPTS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let outcome = in_child(*attempt);
        let _ = writeln!(out, "{name}\t{outcome}");
    }
}

/// Runs `attempt` in a forked child; its report comes back through a pipe.
fn in_child(attempt: Attempt) -> String {
    let mut fds = [0; 2];
    // SAFETY: plain pipe/fork/read/waitpid; the child writes its line and `_exit`s.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return format!("error pipe: {}", errno_name(errno()));
        }
        let pid = libc::fork();
        if pid == 0 {
            libc::close(fds[0]);
            let line = attempt();
            libc::write(fds[1], line.as_ptr().cast(), line.len());
            libc::_exit(0);
        }
        libc::close(fds[1]);
        let mut buf = vec![0u8; 512];
        let mut len = 0;
        loop {
            let n = libc::read(fds[0], buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        if libc::WIFSIGNALED(status) {
            return format!("killed {}", signal_name(libc::WTERMSIG(status)));
        }
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

fn signal_name(s: i32) -> String {
    match s {
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        _ => format!("signal {s}"),
    }
}

/// A raw syscall with up to six integer arguments.
fn sys(nr: i64, args: &[i64]) -> i64 {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    // SAFETY: every caller passes integers or pointers to live buffers the kernel checks.
    unsafe { libc::syscall(nr, a(0), a(1), a(2), a(3), a(4), a(5)) }
}

/// `refused ERRNO` for a -1 result, else `ALLOWED`.
fn call(f: impl FnOnce() -> i64) -> String {
    let rc = f();
    if rc < 0 {
        format!("refused {}", errno_name(errno()))
    } else {
        format!("ALLOWED (returned {rc})")
    }
}

fn with_path(path: &str, f: impl FnOnce(*const libc::c_char) -> i64) -> i64 {
    let c = CString::new(path).expect("no NUL");
    f(c.as_ptr())
}

fn mount_tmpfs() -> String {
    call(|| {
        with_path("/tmp", |p| {
            // SAFETY: valid C strings.
            let rc =
                unsafe { libc::mount(c"none".as_ptr(), p, c"tmpfs".as_ptr(), 0, std::ptr::null()) };
            rc as i64
        })
    })
}

fn remount_root_rw() -> String {
    call(|| {
        // SAFETY: valid C strings; a remount of "/" in the sandbox's own mount namespace.
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND,
                std::ptr::null(),
            ) as i64
        }
    })
}

fn umount_masked_kcore() -> String {
    // SAFETY: valid C string.
    call(|| unsafe { libc::umount2(c"/proc/kcore".as_ptr(), libc::MNT_DETACH) } as i64)
}

fn clone_newuser() -> String {
    let rc = sys(
        libc::SYS_clone,
        &[(libc::CLONE_NEWUSER | libc::SIGCHLD) as i64, 0, 0, 0, 0],
    );
    if rc == 0 {
        // SAFETY: the new child leaves at once.
        unsafe { libc::_exit(0) };
    }
    if rc > 0 {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(rc as i32, std::ptr::null_mut(), 0) };
        return "ALLOWED (a child in a new user namespace)".into();
    }
    format!("refused {}", errno_name(errno()))
}

fn ptrace_attach() -> String {
    // SAFETY: the child only pauses until it is killed.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: pause in the child.
            unsafe { libc::pause() };
        }
    }
    let out = call(|| {
        sys(
            libc::SYS_ptrace,
            &[libc::PTRACE_ATTACH as i64, child as i64, 0, 0],
        )
    });
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    out
}

fn keyctl_join() -> String {
    const KEYCTL_JOIN_SESSION_KEYRING: i64 = 1;
    call(|| {
        sys(
            libc::SYS_keyctl,
            &[
                KEYCTL_JOIN_SESSION_KEYRING,
                c"airlock-probe".as_ptr() as i64,
            ],
        )
    })
}

fn bpf_map_create() -> String {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    call(|| {
        sys(
            libc::SYS_bpf,
            &[0, attr.as_ptr() as i64, std::mem::size_of_val(&attr) as i64],
        )
    })
}

fn perf_event_open() -> String {
    // struct perf_event_attr: type (u32), size (u32), config (u64), ...
    let mut attr = [0u64; 16];
    attr[0] = 1 | ((std::mem::size_of_val(&attr) as u64) << 32); // PERF_TYPE_SOFTWARE
    attr[1] = 0; // PERF_COUNT_SW_CPU_CLOCK
    call(|| {
        sys(
            libc::SYS_perf_event_open,
            &[attr.as_ptr() as i64, 0, -1, -1, 0],
        )
    })
}

fn io_uring_setup() -> String {
    let params = [0u8; 120];
    call(|| sys(libc::SYS_io_uring_setup, &[1, params.as_ptr() as i64]))
}

fn open_by_handle_at() -> String {
    // struct file_handle { u32 handle_bytes; int handle_type; unsigned char f_handle[8]; }
    let handle = [8u32, 1, 0, 0];
    call(|| {
        sys(
            libc::SYS_open_by_handle_at,
            &[
                libc::AT_FDCWD as i64,
                handle.as_ptr() as i64,
                libc::O_RDONLY as i64,
            ],
        )
    })
}

fn no_new_privs() -> String {
    // SAFETY: a query.
    match unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } {
        1 => "contained no_new_privs=1 (setuid bits do not raise privileges)".into(),
        0 => "ALLOWED no_new_privs=0 (a setuid-root binary would run as root)".into(),
        _ => format!("refused {}", errno_name(errno())),
    }
}

fn socket(domain: i32, ty: i32, proto: i32) -> String {
    call(|| sys(libc::SYS_socket, &[domain as i64, ty as i64, proto as i64]))
}

fn mknod_block() -> String {
    let path = "/tmp/airlock-probe-sda";
    let out = call(|| {
        with_path(path, |p| {
            // SAFETY: valid C string.
            unsafe { libc::mknod(p, libc::S_IFBLK | 0o600, libc::makedev(8, 0)) as i64 }
        })
    });
    let _ = std::fs::remove_file(path);
    out
}

fn open_write(path: &str) -> String {
    call(|| {
        with_path(path, |p| {
            // SAFETY: valid C string; the fd is dropped with the child.
            unsafe { libc::open(p, libc::O_WRONLY) as i64 }
        })
    })
}

fn read_kcore() -> String {
    match std::fs::File::open("/proc/kcore") {
        Err(e) => format!("refused {}", errno_name(e.raw_os_error().unwrap_or(0))),
        Ok(mut f) => {
            let mut buf = [0u8; 64];
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => "contained (masked: reads nothing)".into(),
                Ok(n) => format!("ALLOWED (read {n} bytes of kernel memory)"),
                Err(e) => format!("refused {}", errno_name(e.raw_os_error().unwrap_or(0))),
            }
        }
    }
}

fn host_pid1() -> String {
    let ns = |p: &str| std::fs::read_link(p).map(|l| l.display().to_string());
    match (ns("/proc/1/ns/pid"), ns("/proc/self/ns/pid")) {
        (Ok(a), Ok(b)) if a == b => {
            "contained (pid 1 is the sandbox's own init; the host's is not visible)".into()
        }
        (Ok(a), Ok(b)) => format!("ALLOWED (pid 1 is in another pid namespace: {a} vs {b})"),
        (Err(e), _) | (_, Err(e)) => {
            format!("refused {}", errno_name(e.raw_os_error().unwrap_or(0)))
        }
    }
}

fn i386_int80() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut rax: i64 = 20; // getpid in the i386 table
                               // SAFETY: a compat-mode getpid; it touches no memory.
        unsafe { std::arch::asm!("int 0x80", inout("rax") rax, options(nostack)) };
        if rax < 0 {
            format!("refused {}", errno_name(-rax as i32))
        } else {
            format!("ALLOWED (i386 getpid returned {rax})")
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "contained (not x86_64)".into()
    }
}

/// More than any built-in policy's /tmp size.
const FILL_MIB: usize = 512;

fn fill_tmp() -> String {
    let path = "/tmp/airlock-probe-fill";
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0usize;
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        for _ in 0..FILL_MIB {
            f.write_all(&chunk)?;
            written += 1;
        }
        f.sync_all()
    })();
    let _ = std::fs::remove_file(path);
    match res {
        Ok(()) => format!("ALLOWED (wrote {FILL_MIB} MiB)"),
        Err(e) => format!(
            "refused {} after {written} MiB",
            errno_name(e.raw_os_error().unwrap_or(0))
        ),
    }
}

/// Code written into a memfd and executed from it (`fexecve`), as a payload needs no writable
/// exec mount that way: the probe copies itself into a memfd and runs that copy with an
/// argument that selects no attempt (it prints nothing and exits 0). On a kernel without
/// `vm.memfd_noexec` (before Linux 6.3) nothing can refuse it: the outcome says so.
fn memfd_exec() -> String {
    let exe = match std::fs::read("/proc/self/exe") {
        Ok(b) => b,
        Err(e) => return format!("error read /proc/self/exe: {e}"),
    };
    // SAFETY: memfd_create/write/fork/execveat/waitpid on buffers and fds owned here; the
    // child only execs or `_exit`s.
    unsafe {
        let fd = libc::memfd_create(c"probe".as_ptr(), 0);
        if fd < 0 {
            return format!("refused {} at memfd_create", errno_name(errno()));
        }
        let mut off = 0;
        while off < exe.len() {
            let n = libc::write(fd, exe[off..].as_ptr().cast(), exe.len() - off);
            if n <= 0 {
                return format!("error write memfd: {}", errno_name(errno()));
            }
            off += n as usize;
        }
        let pid = libc::fork();
        if pid == 0 {
            let argv = [c"probe".as_ptr(), c"memfd-ran".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(errno().clamp(1, 255));
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::close(fd);
        if !libc::WIFEXITED(status) {
            return format!("error status {status}");
        }
        match libc::WEXITSTATUS(status) {
            0 if !std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() => {
                "unprotected: this kernel has no vm.memfd_noexec (Linux >= 6.3 has)".into()
            }
            0 => "ALLOWED (a memfd executed)".into(),
            e => format!("refused {}", errno_name(e)),
        }
    }
}
