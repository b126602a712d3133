//! Our libcontainer `Executor`: the last code that runs in the container init before the
//! workload.
//!
//! * `validate` runs inside the init after namespaces, cgroup, rootfs/pivot_root, capability
//!   drop and chdir, but *before* the init reports ready, so a missing executable fails
//!   `create` (not `start`) with a clear message.
//! * `exec` installs the precompiled seccomp filter (if any) and execs. Installing here
//!   means the filter is the very last thing before `execve`, after capabilities are dropped.
//!
//! libcontainer is built without its `libseccomp` feature: it ignores `linux.seccomp` in
//! config.json with a warning. Seccomp is applied only through [`BpfProgram`] given to
//! this executor (compiled by `airlock-policies` with seccompiler).

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use crate::error::RuntimeError;
use airlock_contract::ErrorKind;

/// Markers around messages that cross the init -> runtime channel, so the runtime can show
/// our message verbatim instead of libcontainer's nested wrapping of it.
pub(crate) const MSG_START: &str = "<<airlock:";
pub(crate) const MSG_END: &str = ":airlock>>";

/// `PATH` used when the spec sets none (the same default as runc and execvp).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A classic-BPF seccomp program, ready to install with `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Clone)]
pub struct BpfProgram(Arc<[libc::sock_filter]>);

impl std::fmt::Debug for BpfProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpfProgram({} instructions)", self.0.len())
    }
}

impl BpfProgram {
    pub fn new(instructions: Vec<libc::sock_filter>) -> Self {
        Self(instructions.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Reads a program stored as an array of `struct sock_filter` in host byte order (the
    /// format `airlock-policies` writes), checking only its shape: the kernel verifies the
    /// program itself when it is installed.
    pub fn from_file(path: &Path) -> Result<Self, RuntimeError> {
        let bad = |detail: String| RuntimeError::SeccompProgram {
            path: path.to_owned(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        Self::from_bytes(&bytes).map_err(bad)
    }

    /// See [`BpfProgram::from_file`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Ok(Self::new(airlock_contract::bpf::decode(bytes)?))
    }

    /// The program in the format [`BpfProgram::from_bytes`] reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        airlock_contract::bpf::encode(self.0.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets no_new_privs (needed to install a filter without CAP_SYS_ADMIN, which the init
    /// has dropped by now) and installs the filter on the calling thread.
    pub fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: u16::try_from(self.0.len())
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?,
            filter: self.0.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: plain prctl/seccomp syscalls; `prog` points at memory that outlives them.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The Airlock executor. Cloned into the container init by libcontainer.
#[derive(Clone, Default)]
pub struct AirlockExecutor {
    /// Installed in order; the kernel runs them all and the most restrictive answer wins.
    seccomp: Vec<BpfProgram>,
    /// When `create` began; CLOCK_MONOTONIC is shared across fork, so the init can report
    /// how long namespaces + cgroup + rootfs took.
    create_started: Option<Instant>,
}

impl AirlockExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `program` just before exec (after those added before it).
    pub fn with_seccomp(mut self, program: BpfProgram) -> Self {
        self.seccomp.push(program);
        self
    }

    pub fn seccomp(&self) -> &[BpfProgram] {
        &self.seccomp
    }

    pub(crate) fn with_create_started(mut self, t: Instant) -> Self {
        self.create_started = Some(t);
        self
    }
}

fn wrap(e: &RuntimeError) -> String {
    format!("{MSG_START}{}:{e}{MSG_END}", e.kind().exit_code())
}

/// Finds an executor error inside libcontainer's wrapped error text: its kind (as its exit
/// code) and its message.
pub(crate) fn extract_message(text: &str) -> Option<(ErrorKind, &str)> {
    let start = text.find(MSG_START)? + MSG_START.len();
    let len = text[start..].find(MSG_END)?;
    let (code, msg) = text[start..start + len].split_once(':')?;
    Some((ErrorKind::from_exit_code(code.parse().ok()), msg))
}

fn spec_path_var(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
        .map(str::to_owned)
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// Resolves `name` like execvp: a name with `/` is used as is, else each PATH entry is tried.
/// Returns the first candidate that exists.
pub fn resolve_executable(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    path_var
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|p| p.exists())
}

/// Checks that `args[0]` resolves to an executable regular file (in the current root).
pub fn check_executable(spec: &Spec) -> Result<PathBuf, RuntimeError> {
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| RuntimeError::ConfigInvalid {
            bundle: PathBuf::from("."),
            detail: "process.args is missing or empty".into(),
        })?;
    let path_var = spec_path_var(spec);
    let exe = &args[0];
    let resolved =
        resolve_executable(exe, &path_var).ok_or_else(|| RuntimeError::ExecutableNotFound {
            executable: exe.clone(),
            path: path_var.clone(),
        })?;
    match std::fs::metadata(&resolved) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(resolved),
        _ => Err(RuntimeError::NotExecutable {
            executable: exe.clone(),
            resolved: resolved.display().to_string(),
        }),
    }
}

impl Executor for AirlockExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if let Some(t) = self.create_started {
            tracing::debug!(
                elapsed_us = t.elapsed().as_micros() as u64,
                "init: namespaces, cgroup, rootfs and capabilities ready"
            );
        }
        check_executable(spec)
            .map(|_| ())
            .map_err(|e| ExecutorValidationError::ArgValidationError(wrap(&e)))
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        for prog in &self.seccomp {
            prog.install().map_err(|e| {
                ExecutorError::Other(format!("installing the seccomp filter failed: {e}"))
            })?;
        }
        // execvp searches the PATH that setup_envs put in our environment (the spec's).
        let err = nix::unistd::execvp(&cargs[0], &cargs).unwrap_err();
        Err(ExecutorError::Other(format!(
            "exec of {:?} failed: {err}",
            args[0]
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert_eq!(
            resolve_executable("sh", "/nonexistent:/bin"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_executable("/bin/sh", ""),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_executable("no-such-binary-xyz", "/bin:/usr/bin"),
            None
        );
        assert_eq!(resolve_executable("/nope", "/bin"), None);
    }

    #[test]
    fn missing_executable_message_names_binary_and_path() {
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap();
        p.set_args(Some(vec!["/nope".into()]));
        p.set_env(Some(vec!["PATH=/bin:/usr/bin".into()]));
        spec.set_process(Some(p));
        let err = check_executable(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "executable \"/nope\" not found in the container's rootfs (PATH=/bin:/usr/bin); \
             fix process.args[0] or add the binary to the image"
        );
    }

    #[test]
    fn directory_is_not_executable() {
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap();
        p.set_args(Some(vec!["/tmp".into()]));
        spec.set_process(Some(p));
        let err = check_executable(&spec).unwrap_err();
        assert!(matches!(err, RuntimeError::NotExecutable { .. }), "{err}");
    }

    /// Installs a filter that makes getppid fail with EPERM, in a forked child (a filter
    /// cannot be removed). The child only makes raw syscalls before `_exit`.
    #[test]
    fn bpf_program_installs_before_exec() {
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_ERRNO: u32 = 0x0005_0000;
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let prog = BpfProgram::new(vec![
            // seccomp_data.nr is at offset 0
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            jeq(libc::SYS_getppid as u32, 0, 1),
            stmt(libc::BPF_RET | libc::BPF_K, RET_ERRNO | libc::EPERM as u32),
            stmt(libc::BPF_RET | libc::BPF_K, RET_ALLOW),
        ]);
        assert_eq!(prog.len(), 4);
        // SAFETY: the child only calls prctl/seccomp/getppid/_exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match prog.install() {
                Err(_) => 2,
                // SAFETY: raw syscall, no memory involved.
                Ok(()) => match unsafe { libc::syscall(libc::SYS_getppid) } {
                    -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) => 0,
                    _ => 3,
                },
            };
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "filter not effective");
    }

    #[test]
    fn program_file_round_trips_and_rejects_bad_shapes() {
        let p = BpfProgram::new(vec![libc::sock_filter {
            code: 6,
            jt: 1,
            jf: 2,
            k: 0x7fff_0000,
        }]);
        let back = BpfProgram::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), p.to_bytes());
        assert!(BpfProgram::from_bytes(&[]).is_err());
        assert!(BpfProgram::from_bytes(&[0; 12]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = BpfProgram::from_file(&dir.path().join("none.bpf")).unwrap_err();
        assert!(err.to_string().contains("none.bpf"), "{err}");
    }

    #[test]
    fn message_survives_libcontainer_wrapping() {
        let e = RuntimeError::ExecutableNotFound {
            executable: "x".into(),
            path: "/bin".into(),
        };
        let wrapped = format!(
            "failed to create container: exec process failed with error error in executing process : {}",
            wrap(&e)
        );
        assert_eq!(
            extract_message(&wrapped),
            Some((ErrorKind::InvalidArgument, e.to_string().as_str()))
        );
        assert_eq!(extract_message("plain"), None);
    }
}
