//! The seccomp part of a policy, compiled to classic BPF with `seccompiler`.
//!
//! A policy names a base syscall set (see [`crate::syscalls`]), adds to it (`allow`) and
//! takes from it (`deny`). Everything else is denied with an errno (`enforce`) or allowed
//! and logged by the kernel (`audit`: `SECCOMP_RET_LOG`, visible in the kernel log as
//! `audit: type=1326 ... syscall=N`).
//!
//! The compiled program has a short hand-assembled prefix in front of seccompiler's allowlist,
//! for the cases an allowlist keyed by syscall number cannot express:
//!
//! 1. a syscall from a non-native architecture (e.g. `int 0x80` on x86_64) kills the process;
//! 2. on x86_64, an x32-ABI syscall number (bit 30 set) kills the process: x32 numbers would
//!    otherwise reach the kernel's x32 entry points, which the allowlist never names;
//! 3. `clone3` fails with `ENOSYS`, so libcs fall back to `clone`, whose flags a classic BPF
//!    filter can inspect (clone3 passes them in memory); `clone` is then allowed only without
//!    namespace flags.
//!
//! Both stay in force in `audit` mode: they are never legitimate for an agent workload.
//!
//! The program is stored as an array of `struct sock_filter` in host byte order
//! ([`SeccompProgram::to_bytes`]), the format `seccomp(SECCOMP_SET_MODE_FILTER)` takes.

use std::collections::BTreeSet;

use seccompiler::{sock_filter, TargetArch};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{seccomp_tree, syscalls};

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: a `clone` with any of these bits is denied.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `AF_VSOCK`: sockets of this family could reach the host or a VM's host; denied.
const AF_VSOCK: u64 = 40;
/// Execution domains `personality` may select: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (query only).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// The x32 ABI marks its syscall numbers with this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The largest program the kernel accepts.
const BPF_MAX_LEN: usize = 4096;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_RISCV64: u32 = 0xC000_00F3;
/// `clone3` has the same number on every architecture we build for.
const NR_CLONE3: u32 = 435;

// Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const ENOSYS: u32 = 38;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// What the filter does with a syscall the policy does not allow.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// No filter at all (runc without a profile).
    Off,
    /// Deny with the policy's errno.
    #[default]
    Enforce,
    /// Allow, and let the kernel log the syscall (to find what a workload needs).
    Audit,
}

/// The `[seccomp]` section of a policy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seccomp {
    #[serde(default)]
    pub mode: SeccompMode,
    /// The base syscall set: `agent` or `none`.
    #[serde(default = "default_base")]
    pub base: String,
    /// Syscalls allowed on top of the base set (unconditionally).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Syscalls taken out of the base set.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The errno a denied syscall returns in `enforce` mode: EPERM, EACCES or ENOSYS.
    #[serde(default = "default_errno")]
    pub errno: String,
}

fn default_base() -> String {
    "agent".into()
}

fn default_errno() -> String {
    "EPERM".into()
}

impl Default for Seccomp {
    fn default() -> Self {
        Seccomp {
            mode: SeccompMode::default(),
            base: default_base(),
            allow: Vec::new(),
            deny: Vec::new(),
            errno: default_errno(),
        }
    }
}

/// A compiled filter, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProgram {
    instructions: Vec<sock_filter>,
}

impl SeccompProgram {
    pub fn len(&self) -> usize {
        self.instructions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }

    pub(crate) fn from_instructions(instructions: Vec<sock_filter>) -> Self {
        SeccompProgram { instructions }
    }

    pub fn instructions(&self) -> &[sock_filter] {
        &self.instructions
    }

    /// The program as an array of `struct sock_filter` (8 bytes each, host byte order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.instructions.len() * 8);
        for i in &self.instructions {
            out.extend_from_slice(&i.code.to_ne_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_ne_bytes());
        }
        out
    }
}

/// The architecture this binary runs on, as seccompiler names it.
pub fn native_arch() -> Option<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).ok()
}

fn audit_arch(arch: TargetArch) -> u32 {
    match arch {
        TargetArch::x86_64 => AUDIT_ARCH_X86_64,
        TargetArch::aarch64 => AUDIT_ARCH_AARCH64,
        TargetArch::riscv64 => AUDIT_ARCH_RISCV64,
    }
}

fn errno_value(name: &str) -> Option<u32> {
    Some(match name {
        "EPERM" => 1,
        "EACCES" => 13,
        "ENOSYS" => ENOSYS,
        _ => return None,
    })
}

/// Whether seccompiler knows `name` as a syscall of `arch`.
pub fn is_syscall(name: &str, arch: TargetArch) -> bool {
    seccomp_tree::seccompiler_numbers(&[name.to_string()].into(), arch).is_ok()
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

impl Seccomp {
    /// Checks names and values; `Err` is a message that starts with the field.
    pub fn validate(&self, arch: TargetArch) -> Result<(), String> {
        if !matches!(self.base.as_str(), "agent" | "none") {
            return Err(format!(
                "seccomp.base: unknown syscall set {:?} (use \"agent\" or \"none\")",
                self.base
            ));
        }
        if errno_value(&self.errno).is_none() {
            return Err(format!(
                "seccomp.errno: {:?} is not one of EPERM, EACCES, ENOSYS",
                self.errno
            ));
        }
        for (field, names) in [("seccomp.allow", &self.allow), ("seccomp.deny", &self.deny)] {
            if let Some(bad) = names.iter().find(|n| !is_syscall(n, arch)) {
                return Err(format!("{field}: unknown syscall {bad:?} on {arch:?}"));
            }
        }
        if let Some(both) = self.allow.iter().find(|n| self.deny.contains(n)) {
            return Err(format!(
                "seccomp: {both:?} is in both allow and deny; keep it in one"
            ));
        }
        if self.mode != SeccompMode::Off && self.base == "none" && self.allow.is_empty() {
            return Err(
                "seccomp: base \"none\" with an empty allow list denies execve itself; \
                 allow syscalls or set mode = \"off\""
                    .into(),
            );
        }
        Ok(())
    }

    /// The syscalls allowed without conditions, for `arch`.
    pub fn allowed(&self, arch: TargetArch) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = BTreeSet::new();
        if self.base == "agent" {
            set.extend(syscalls::AGENT_COMMON.iter().map(|s| s.to_string()));
            if arch == TargetArch::x86_64 {
                set.extend(syscalls::AGENT_X86_64.iter().map(|s| s.to_string()));
            }
        }
        set.extend(self.allow.iter().cloned());
        for d in &self.deny {
            set.remove(d);
        }
        set
    }

    /// How many syscalls are allowed on `arch`, conditional ones included.
    pub(crate) fn seccomp_allowed_len(&self, arch: TargetArch) -> usize {
        let mut set = self.allowed(arch);
        set.extend(
            syscalls::CONDITIONAL
                .iter()
                .filter(|n| self.conditional(n))
                .map(|n| n.to_string()),
        );
        set.len()
    }

    /// Whether the base set's conditional rule for `name` is in force (not denied, not
    /// replaced by an unconditional allow).
    fn conditional(&self, name: &str) -> bool {
        self.base == "agent"
            && !self.deny.iter().any(|d| d == name)
            && !self.allow.iter().any(|a| a == name)
    }

    /// Compiles the filter for `arch`; `None` when the mode is `off`.
    pub fn compile(&self, arch: TargetArch) -> Result<Option<SeccompProgram>, String> {
        self.compile_with(arch, seccomp_tree::compile)
    }

    /// [`Seccomp::compile`], with `body` compiling the allowlist rules (seccompiler JSON) and
    /// the mismatch action into the part after the prelude.
    fn compile_with(
        &self,
        arch: TargetArch,
        body: impl FnOnce(Vec<Value>, &Value, TargetArch) -> Result<Vec<sock_filter>, String>,
    ) -> Result<Option<SeccompProgram>, String> {
        if self.mode == SeccompMode::Off {
            return Ok(None);
        }
        self.validate(arch)?;
        let errno = errno_value(&self.errno).expect("validated");
        let mismatch = match self.mode {
            SeccompMode::Audit => json!("log"),
            _ => json!({ "errno": errno }),
        };
        let mut rules: Vec<Value> = self
            .allowed(arch)
            .into_iter()
            .filter(|n| !syscalls::CONDITIONAL.contains(&n.as_str()) || !self.conditional(n))
            .map(|n| json!({ "syscall": n }))
            .collect();
        if self.conditional("clone") {
            rules.push(json!({"syscall": "clone", "args": [
                {"index": 0, "type": "qword", "op": {"masked_eq": CLONE_NAMESPACE_FLAGS}, "val": 0}
            ]}));
        }
        if self.conditional("socket") {
            rules.push(json!({"syscall": "socket", "args": [
                {"index": 0, "type": "dword", "op": "ne", "val": AF_VSOCK}
            ]}));
        }
        if self.conditional("personality") {
            for p in PERSONALITIES {
                rules.push(json!({"syscall": "personality", "args": [
                    {"index": 0, "type": "dword", "op": "eq", "val": p}
                ]}));
            }
        }
        let body = body(rules, &mismatch, arch)?;

        let mut prog = Vec::with_capacity(body.len() + 8);
        prog.push(stmt(BPF_LD_W_ABS, DATA_ARCH));
        prog.push(jump(BPF_JMP_JEQ_K, audit_arch(arch), 1, 0));
        prog.push(stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS));
        prog.push(stmt(BPF_LD_W_ABS, DATA_NR));
        if arch == TargetArch::x86_64 {
            prog.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
            prog.push(stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS));
        }
        if self.conditional("clone3") {
            prog.push(jump(BPF_JMP_JEQ_K, NR_CLONE3, 0, 1));
            prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS));
        }
        // The number search (see seccomp_tree) starts with the number loaded above; each
        // seccompiler program under it has its own arch check and reloads the number.
        prog.extend(body);
        if prog.len() > BPF_MAX_LEN {
            return Err(format!(
                "seccomp: the filter has {} instructions, more than the kernel's {BPF_MAX_LEN}; \
                 allow fewer syscalls",
                prog.len()
            ));
        }
        Ok(Some(SeccompProgram { instructions: prog }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86() -> TargetArch {
        TargetArch::x86_64
    }

    #[test]
    fn agent_base_names_exist_on_both_arches() {
        for n in syscalls::AGENT_COMMON.iter().chain(syscalls::CONDITIONAL) {
            assert!(is_syscall(n, TargetArch::x86_64), "{n} on x86_64");
            assert!(is_syscall(n, TargetArch::aarch64), "{n} on aarch64");
        }
        for n in syscalls::AGENT_X86_64 {
            assert!(is_syscall(n, TargetArch::x86_64), "{n} on x86_64");
        }
    }

    #[test]
    fn default_compiles_for_both_arches_within_kernel_limit() {
        for arch in [TargetArch::x86_64, TargetArch::aarch64] {
            let p = Seccomp::default().compile(arch).unwrap().unwrap();
            assert!(p.len() > 300 && p.len() <= BPF_MAX_LEN, "{}", p.len());
            assert_eq!(p.to_bytes().len(), p.len() * 8);
        }
    }

    #[test]
    fn dangerous_syscalls_are_not_in_the_agent_set() {
        let allowed = Seccomp::default().allowed(x86());
        for n in [
            "ptrace",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "init_module",
            "finit_module",
            "reboot",
            "kexec_load",
            "pivot_root",
            "chroot",
            "userfaultfd",
            "io_uring_setup",
            "open_by_handle_at",
            "swapon",
        ] {
            assert!(!allowed.contains(n), "{n} must not be allowed");
        }
    }

    #[test]
    fn the_number_search_gives_every_syscall_the_verdict_of_the_linear_filter() {
        let policies = [
            Seccomp::default(),
            Seccomp {
                allow: vec!["ptrace".into(), "clone".into(), "socket".into()],
                deny: vec!["getpid".into(), "clone3".into(), "personality".into()],
                ..Default::default()
            },
            Seccomp {
                mode: SeccompMode::Audit,
                ..Default::default()
            },
            Seccomp {
                base: "none".into(),
                allow: vec!["read".into(), "write".into(), "exit_group".into()],
                ..Default::default()
            },
        ];
        let clone_ns: u64 = 0x1000_0000; // CLONE_NEWUSER
        let argsets: [[u64; 6]; 6] = [
            [0; 6],
            [clone_ns, 0, 0, 0, 0, 0],
            [AF_VSOCK, 0, 0, 0, 0, 0],
            [2, 0, 0, 0, 0, 0],
            [0x8, 0, 0, 0, 0, 0],
            [0x1234, 0xffff_ffff_0000_0000, 0, 0, 0, 0],
        ];
        for arch in [TargetArch::x86_64, TargetArch::aarch64] {
            for (p, s) in policies.iter().enumerate() {
                let tree = s.compile(arch).unwrap().unwrap();
                let flat = s.compile_with(arch, seccomp_tree::linear).unwrap().unwrap();
                let (mut tree_max, mut flat_max) = (0, 0);
                let numbers = (0..1100u32).chain([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 1]);
                for nr in numbers {
                    for args in argsets {
                        for audit in [audit_arch(arch), 0x4000_0003] {
                            let (t, ts) = seccomp_tree::run(tree.instructions(), audit, nr, args);
                            let (f, fs) = seccomp_tree::run(flat.instructions(), audit, nr, args);
                            assert_eq!(t, f, "{arch:?} policy {p}: syscall {nr} {args:?}");
                            tree_max = tree_max.max(ts);
                            flat_max = flat_max.max(fs);
                        }
                    }
                }
                // The point of the search: a short walk for every number.
                assert!(
                    tree_max <= 12 + 8 + 5 * seccomp_tree::BUCKET + 12,
                    "{arch:?} policy {p}: {tree_max} steps (linear {flat_max})"
                );
                if p == 0 {
                    assert!(
                        flat_max > 400 && tree_max < 60,
                        "{tree_max} against {flat_max}"
                    );
                }
            }
        }
    }

    #[test]
    fn off_compiles_to_nothing() {
        let s = Seccomp {
            mode: SeccompMode::Off,
            ..Default::default()
        };
        assert_eq!(s.compile(x86()).unwrap(), None);
    }

    #[test]
    fn unknown_names_are_refused_naming_the_field() {
        let s = Seccomp {
            deny: vec!["ptrace".into(), "fork2".into()],
            ..Default::default()
        };
        let e = s.validate(x86()).unwrap_err();
        assert!(e.starts_with("seccomp.deny") && e.contains("fork2"), "{e}");
        let s = Seccomp {
            errno: "EWHAT".into(),
            ..Default::default()
        };
        assert!(s.validate(x86()).unwrap_err().starts_with("seccomp.errno"));
    }

    #[test]
    fn allow_and_deny_change_the_set() {
        let s = Seccomp {
            allow: vec!["ptrace".into()],
            deny: vec!["fork".into()],
            ..Default::default()
        };
        let allowed = s.allowed(x86());
        assert!(allowed.contains("ptrace"));
        assert!(!allowed.contains("fork"));
        assert!(allowed.contains("vfork"));
    }
    /// Runs `body` in a forked child with `prog` installed; returns the child's wait status.
    /// The child makes only raw syscalls before `_exit`.
    fn in_child_with(prog: &SeccompProgram, body: fn() -> i32) -> i32 {
        // SAFETY: the child calls only async-signal-safe syscalls before `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match seccompiler::apply_filter(&prog.instructions) {
                Ok(()) => body(),
                Err(_) => 100,
            };
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    /// One bit per expectation that failed.
    fn enforce_checks() -> i32 {
        let mut bad = 0;
        // SAFETY (all): raw syscalls with integer arguments or null pointers the kernel
        // checks; none of them succeeds when the filter works.
        unsafe {
            if libc::syscall(libc::SYS_getpid) <= 0 {
                bad |= 1;
            }
            if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)) != libc::EPERM {
                bad |= 2;
            }
            if errno_of(libc::syscall(libc::SYS_clone3, 0, 0)) != libc::ENOSYS {
                bad |= 4;
            }
            let rc = libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWNS | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            );
            if rc == 0 {
                libc::_exit(99);
            }
            if errno_of(rc) != libc::EPERM {
                bad |= 8;
            }
            if errno_of(libc::syscall(
                libc::SYS_socket,
                libc::AF_VSOCK,
                libc::SOCK_STREAM,
                0,
            )) != libc::EPERM
            {
                bad |= 16;
            }
            let fd = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                bad |= 32;
            }
            if errno_of(libc::syscall(libc::SYS_keyctl, 9999, 0, 0, 0, 0)) != libc::EPERM {
                bad |= 64;
            }
        }
        bad
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn installed_filter_enforces_the_policy() {
        let prog = Seccomp::default().compile(x86()).unwrap().unwrap();
        let status = in_child_with(&prog, enforce_checks);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "failed checks (bits)");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x32_syscall_numbers_kill_the_process() {
        let prog = Seccomp::default().compile(x86()).unwrap().unwrap();
        let status = in_child_with(&prog, || {
            // SAFETY: getpid through the x32 ABI; the filter kills before the kernel runs it.
            unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
            0
        });
        assert!(
            libc::WIFSIGNALED(status),
            "x32 syscall survived: {status:#x}"
        );
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn audit_mode_lets_denied_syscalls_through() {
        let s = Seccomp {
            mode: SeccompMode::Audit,
            ..Default::default()
        };
        let prog = s.compile(x86()).unwrap().unwrap();
        let status = in_child_with(&prog, || {
            // SAFETY: an invalid keyctl operation: the kernel answers EOPNOTSUPP.
            let rc = unsafe { libc::syscall(libc::SYS_keyctl, 9999, 0, 0, 0, 0) };
            (errno_of(rc) == libc::EPERM) as i32
        });
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "audit mode denied keyctl");
    }
}
