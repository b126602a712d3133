//! The built-in syscall sets a policy's `[seccomp] base` can name.
//!
//! `agent` is a default-deny allowlist for AI-agent workloads: what ordinary programs
//! (shells, interpreters, compilers, package managers, network clients) need, and nothing
//! whose main use is changing the machine or reaching into the kernel. It starts from the
//! set container runtimes have allowed for a decade and leaves out, on purpose:
//!
//! * namespaces and mounts: `unshare`, `setns`, `mount`, `umount2`, `pivot_root`, `chroot`,
//!   the new mount API (`fsopen`, `fsmount`, `move_mount`, `open_tree`, `mount_setattr`);
//!   `clone` is allowed only without namespace flags (see `seccomp.rs`);
//! * kernel attack surface an agent never needs: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `io_uring_*`, `keyctl`/`add_key`/`request_key`, `modify_ldt`, `kcmp`;
//! * other processes: `ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`;
//! * the machine: `reboot`, `kexec_*`, `*_module`, `swapon`/`swapoff`, `syslog`, `acct`,
//!   clock setting (`settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex`),
//!   `sethostname`, `iopl`/`ioperm`, `quotactl`, `open_by_handle_at`, `lookup_dcookie`.
//!
//! An operator adds a syscall with `allow = [...]` and removes one with `deny = [...]`.

/// Syscalls present on every supported architecture (x86_64, aarch64).
#[rustfmt::skip]
pub const AGENT_COMMON: &[&str] = &[
    // files and directories
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "openat", "openat2", "close", "close_range", "lseek", "dup", "dup3",
    "fcntl", "flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "truncate",
    "ftruncate", "fallocate", "fadvise64", "readahead", "getdents64", "getcwd", "chdir",
    "fchdir", "mkdirat", "mknodat", "unlinkat", "renameat", "renameat2", "linkat",
    "symlinkat", "readlinkat", "faccessat", "faccessat2", "fchmod", "fchmodat", "fchown",
    "fchownat", "umask", "newfstatat", "fstat", "statx", "statfs", "fstatfs", "utimensat",
    "copy_file_range", "sendfile", "splice", "tee", "vmsplice", "getxattr", "lgetxattr",
    "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr",
    "flistxattr", "removexattr", "lremovexattr", "fremovexattr", "inotify_init1",
    "inotify_add_watch", "inotify_rm_watch", "ioctl", "memfd_create",
    // memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "membarrier", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "get_mempolicy", "set_mempolicy", "mbind", "remap_file_pages",
    // processes and threads
    "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tkill", "tgkill",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getsid", "setsid", "set_tid_address",
    "set_robust_list", "get_robust_list", "rseq", "futex", "futex_waitv", "prctl", "prlimit64",
    "getrlimit", "setrlimit", "getrusage", "getpriority", "setpriority", "sched_yield",
    "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "ioprio_get", "ioprio_set", "getcpu", "pidfd_open", "pidfd_send_signal", "seccomp",
    "capget", "capset", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self",
    // credentials (meaningful only inside the user namespace; capabilities still gate them)
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid",
    // signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "signalfd4",
    "restart_syscall",
    // time
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "times",
    "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime",
    // polling and events
    "ppoll", "pselect6", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2",
    "eventfd2", "pipe2",
    // sockets (`socket` itself is allowed by a conditional rule)
    "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "shutdown", "sendto", "recvfrom", "sendmsg",
    "recvmsg", "sendmmsg", "recvmmsg",
    // System V and POSIX IPC (the container has its own IPC namespace)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget",
    "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr",
    // system information
    "uname", "sysinfo", "getrandom",
];

/// Legacy and x86-specific syscalls x86_64 programs still use.
#[rustfmt::skip]
pub const AGENT_X86_64: &[&str] = &[
    "open", "creat", "stat", "lstat", "access", "chmod", "chown", "lchown", "mkdir", "rmdir",
    "rename", "link", "unlink", "symlink", "readlink", "mknod", "getdents", "dup2", "pipe",
    "poll", "select", "epoll_create", "epoll_wait", "eventfd", "signalfd", "inotify_init",
    "fork", "vfork", "pause", "alarm", "time", "utime", "utimes", "futimesat", "getpgrp",
    "arch_prctl", "set_thread_area", "get_thread_area",
];

/// Syscalls the filter handles with rules of its own, whatever the base set says.
pub const CONDITIONAL: &[&str] = &["clone", "clone3", "socket", "personality"];
