//! A pod's own OCI seccomp profile (for example Kubernetes' `RuntimeDefault`, or a
//! `Localhost` profile), compiled with `seccompiler` into filters installed *next to* the
//! policy's filter.
//!
//! The kernel runs every installed filter and takes the most restrictive answer, so the pod's
//! profile can only narrow what the policy allows: a profile stricter than the policy takes
//! effect, a weaker one changes nothing (the policy stays the ceiling).
//!
//! An OCI profile is "first matching rule, else the default action", with one action per
//! rule; a seccompiler filter has one match and one mismatch action. The profile is split into
//! filters whose combination gives the same answer:
//!
//! * a *named* filter: every syscall (with its argument conditions) that has a rule whose
//!   action differs from the default is allowed, everything else gets the default action;
//! * one filter per other non-allow action A: the rules with action A return A, everything
//!   else is allowed.
//!
//! For a syscall with a rule of action A, the named filter allows and A's filter returns A; for
//! a syscall without one, the named filter returns the default and the others allow.
//!
//! Names unknown on this architecture (profiles list 32-bit and other architectures' syscalls)
//! are skipped, as libseccomp does.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use serde_json::{json, Value};

use crate::seccomp::{native_arch, SeccompProgram};
use crate::seccomp_tree;

const EPERM: u32 = 1;

fn action(a: LinuxSeccompAction, errno: Option<u32>, default_errno: u32) -> Result<Value, String> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => json!("allow"),
        LinuxSeccompAction::ScmpActErrno => json!({ "errno": errno.unwrap_or(default_errno) }),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            json!("kill_thread")
        }
        LinuxSeccompAction::ScmpActKillProcess => json!("kill_process"),
        LinuxSeccompAction::ScmpActTrap => json!("trap"),
        LinuxSeccompAction::ScmpActLog => json!("log"),
        LinuxSeccompAction::ScmpActTrace => json!({ "trace": errno.unwrap_or(0) }),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(
                "linux.seccomp: SCMP_ACT_NOTIFY (a seccomp agent) is not supported by \
                        airlock; remove it from the pod's profile"
                    .into(),
            )
        }
    })
}

fn op(o: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (Value, u64) {
    let name = match o {
        LinuxSeccompOperator::ScmpCmpNe => "ne",
        LinuxSeccompOperator::ScmpCmpLt => "lt",
        LinuxSeccompOperator::ScmpCmpLe => "le",
        LinuxSeccompOperator::ScmpCmpEq => "eq",
        LinuxSeccompOperator::ScmpCmpGe => "ge",
        LinuxSeccompOperator::ScmpCmpGt => "gt",
        // OCI: the argument masked with `value` equals `valueTwo`.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return (json!({ "masked_eq": value }), value_two.unwrap_or(0))
        }
    };
    (json!(name), value)
}

/// Compiles `profile` for this machine into the filters to install beside the policy's.
pub fn compile_pod_profile(profile: &LinuxSeccomp) -> Result<Vec<SeccompProgram>, String> {
    let arch = native_arch().ok_or_else(|| {
        format!(
            "linux.seccomp: no filter support on {}",
            std::env::consts::ARCH
        )
    })?;
    let default_errno = profile.default_errno_ret().unwrap_or(EPERM);
    let default = action(profile.default_action(), None, default_errno)?;
    let allow = json!("allow");

    let mut named: Vec<Value> = Vec::new();
    // action (as JSON text) -> (action, rules)
    let mut by_action: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for rule in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(rule.action(), rule.errno_ret(), default_errno)?;
        if act == default {
            continue;
        }
        let args: Vec<Value> = rule
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let (op, val) = op(a.op(), a.value(), a.value_two());
                json!({ "index": a.index(), "type": "qword", "op": op, "val": val })
            })
            .collect();
        for name in rule.names() {
            if syscalls::Sysno::from_str(name).is_err() {
                continue;
            }
            let r = if args.is_empty() {
                json!({ "syscall": name })
            } else {
                json!({ "syscall": name, "args": args })
            };
            named.push(r.clone());
            if act != allow {
                by_action
                    .entry(act.to_string())
                    .or_insert_with(|| (act.clone(), Vec::new()))
                    .1
                    .push(r);
            }
        }
    }

    let mut programs = Vec::new();
    if default != allow {
        // The allowlist-shaped filter (RuntimeDefault's, ~300 syscalls): searched by number,
        // as the policy's own (see seccomp_tree).
        let prog = seccomp_tree::compile_standalone(named, &default, arch)
            .map_err(|e| format!("linux.seccomp: the pod's profile does not compile: {e}"))?;
        programs.push(SeccompProgram::from_instructions(prog));
    }
    let mut doc = serde_json::Map::new();
    for (i, (act, rules)) in by_action.into_values().enumerate() {
        doc.insert(
            format!("{}-action", i + 1),
            json!({ "mismatch_action": "allow", "match_action": act, "filter": rules }),
        );
    }
    let mut compiled =
        seccompiler::compile_from_json(Value::Object(doc).to_string().as_bytes(), arch)
            .map_err(|e| format!("linux.seccomp: the pod's profile does not compile: {e}"))?;
    let mut names: Vec<String> = compiled.keys().cloned().collect();
    names.sort();
    programs.extend(
        names
            .into_iter()
            .map(|n| SeccompProgram::from_instructions(compiled.remove(&n).expect("listed"))),
    );
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn runtime_default_shape_splits_into_named_and_enosys_filters() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
               "architectures":["SCMP_ARCH_X86_64"],
               "syscalls":[
                 {"names":["read","write","exit_group","_llseek","chown32"],"action":"SCMP_ACT_ALLOW"},
                 {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                  "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                 {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        );
        let progs = compile_pod_profile(&p).unwrap();
        assert_eq!(progs.len(), 2, "named filter + ENOSYS filter");
    }

    /// A RuntimeDefault-sized allowlist: the number-searched named filter answers every
    /// syscall as seccompiler's single chain of the same rules does.
    #[test]
    fn the_named_filter_answers_as_one_seccompiler_chain() {
        let mut names: Vec<&str> = crate::syscalls::AGENT_COMMON.to_vec();
        names.extend(crate::syscalls::AGENT_X86_64);
        names.retain(|n| *n != "personality");
        let p = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
               "syscalls":[{{"names":{},"action":"SCMP_ACT_ALLOW"}},
                 {{"names":["personality"],"action":"SCMP_ACT_ALLOW",
                  "args":[{{"index":0,"value":8,"op":"SCMP_CMP_EQ"}}]}}]}}"#,
            serde_json::to_string(&names).unwrap()
        ));
        if native_arch() != Some(seccompiler::TargetArch::x86_64) {
            return;
        }
        let progs = compile_pod_profile(&p).unwrap();
        assert_eq!(progs.len(), 1);
        let mut rules: Vec<Value> = names.iter().map(|n| json!({"syscall": n})).collect();
        rules.push(json!({"syscall": "personality", "args": [
            {"index": 0, "type": "dword", "op": "eq", "val": 8}]}));
        let chain =
            seccomp_tree::linear(rules, &json!({"errno": 1}), seccompiler::TargetArch::x86_64)
                .unwrap();
        assert!(progs[0].len() > 300);
        for nr in (0..1100u32).chain([0x4000_0000, 0x4000_0001]) {
            for args in [[0u64; 6], [8, 0, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]] {
                for arch in [0xC000_003E, 0x4000_0003] {
                    let (a, _) = seccomp_tree::run(progs[0].instructions(), arch, nr, args);
                    let (b, _) = seccomp_tree::run(&chain, arch, nr, args);
                    assert_eq!(a, b, "syscall {nr} {args:?} arch {arch:#x}");
                }
            }
        }
    }

    #[test]
    fn default_allow_profile_is_a_denylist() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
               "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile_pod_profile(&p).unwrap().len(), 1);
    }

    #[test]
    fn notify_is_refused_naming_the_field() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
               "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let e = compile_pod_profile(&p).unwrap_err();
        assert!(
            e.starts_with("linux.seccomp") && e.contains("NOTIFY"),
            "{e}"
        );
    }

    /// The pod's stricter profile takes effect on top of the policy's filter: mkdir is
    /// allowed by agent-strict but denied (EACCES) by this profile.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn stricter_pod_profile_narrows_the_policy() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
               "syscalls":[{"names":["mkdirat","mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        );
        let mut progs = compile_pod_profile(&p).unwrap();
        progs.push(
            crate::builtin("agent-strict")
                .unwrap()
                .compile_seccomp()
                .unwrap()
                .unwrap(),
        );
        // SAFETY: the child makes raw syscalls only, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut code = 0;
            for prog in &progs {
                if seccompiler::apply_filter(prog.instructions()).is_err() {
                    code = 100;
                }
            }
            // SAFETY: raw syscalls with a static path.
            unsafe {
                let rc = libc::syscall(
                    libc::SYS_mkdirat,
                    libc::AT_FDCWD,
                    c"/nonexistent/x".as_ptr(),
                    0o700,
                );
                if rc != -1 || *libc::__errno_location() != libc::EACCES {
                    code |= 1;
                }
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    code |= 2;
                }
                // Still refused by the policy, whatever the pod's profile says.
                let rc = libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER);
                if rc != -1 || *libc::__errno_location() != libc::EPERM {
                    code |= 4;
                }
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "failed checks (bits)");
    }
}
