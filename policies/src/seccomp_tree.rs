//! An allowlist compiled as small `seccompiler` programs behind a binary search on the syscall
//! number.
//!
//! `seccompiler` emits one linear chain: a syscall is compared with every allowed number in
//! turn (five instructions each; 1,438 for `agent-strict`). The kernel pays for that length
//! when the filter is installed, on the container's start path: it runs the filter once for
//! every syscall number to fill its per-filter cache of always-allowed syscalls
//! (`seccomp_cache_prepare`), which took about 0.6 ms for the linear `agent-strict` program
//! here. A syscall the cache does not cover (a denied one, or one whose rule reads its
//! arguments) walks the chain at every call.
//!
//! So the rules are grouped by syscall number into buckets of [`BUCKET`] numbers, each bucket
//! compiled by `seccompiler` as a program of its own (with its own architecture check), and a
//! binary search on the number (`JGE` on each bucket's lowest number) jumps to the one bucket
//! that can allow it. A number is allowed only by the rules of its own bucket, which compares
//! the exact number as before: the tree routes, it never allows. A lookup walks the search,
//! the bucket's architecture check and about two instructions per smaller number of its bucket:
//! at most 57 instructions for `agent-strict`, against 571 through the whole chain.

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{sock_filter, TargetArch};
use serde_json::{json, Map, Value};

/// Syscall numbers per bucket (the linear part of a lookup).
pub const BUCKET: usize = 16;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const DATA_NR: u32 = 0;

/// The program for `rules` (seccompiler JSON rules, each with a `syscall` name): a number
/// search, then one seccompiler program per bucket, each ending in `mismatch`. Expects the
/// syscall number in the accumulator when it starts (the caller's prelude loads it); each
/// bucket program checks the architecture and loads the number again itself.
pub fn compile(
    rules: Vec<Value>,
    mismatch: &Value,
    arch: TargetArch,
) -> Result<Vec<sock_filter>, String> {
    let names: BTreeSet<String> = rules
        .iter()
        .map(|r| {
            r["syscall"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("seccomp: a rule names no syscall: {r}"))
        })
        .collect::<Result<_, _>>()?;
    let numbers = syscall_numbers(&names, arch)?;
    let mut by_nr: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for r in rules {
        let nr = numbers[r["syscall"].as_str().expect("checked above")];
        by_nr.entry(nr).or_default().push(r);
    }
    let groups: Vec<(u32, Vec<Value>)> = by_nr.into_iter().collect();
    let mut buckets: Vec<(u32, Vec<Value>)> = groups
        .chunks(BUCKET)
        .map(|c| (c[0].0, c.iter().flat_map(|(_, r)| r.clone()).collect()))
        .collect();
    if buckets.is_empty() {
        // Nothing allowed: one program that answers `mismatch` to everything.
        buckets.push((0, Vec::new()));
    }
    let doc: Map<String, Value> = buckets
        .iter()
        .enumerate()
        .map(|(i, (_, rules))| {
            (
                format!("b{i}"),
                json!({"mismatch_action": mismatch, "match_action": "allow", "filter": rules}),
            )
        })
        .collect();
    let mut map = seccompiler::compile_from_json(Value::Object(doc).to_string().as_bytes(), arch)
        .map_err(|e| format!("seccomp: seccompiler could not compile the filter: {e}"))?;
    let programs: Vec<Vec<sock_filter>> = (0..buckets.len())
        .map(|i| map.remove(&format!("b{i}")).expect("the programs we named"))
        .collect();
    let lows: Vec<u32> = buckets.iter().map(|(low, _)| *low).collect();
    let mut out = Vec::new();
    let mut leaves = Vec::new();
    search(&lows, 0, lows.len(), &mut out, &mut leaves)?;
    let mut starts = Vec::with_capacity(programs.len());
    for p in programs {
        starts.push(out.len());
        out.extend(p);
    }
    for (at, bucket) in leaves {
        out[at].k = u32::try_from(starts[bucket] - at - 1).expect("a program under 4096");
    }
    Ok(out)
}

/// [`compile`] as a program of its own: it loads the syscall number first.
pub fn compile_standalone(
    rules: Vec<Value>,
    mismatch: &Value,
    arch: TargetArch,
) -> Result<Vec<sock_filter>, String> {
    let mut prog = vec![sock_filter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: DATA_NR,
    }];
    prog.extend(compile(rules, mismatch, arch)?);
    Ok(prog)
}

/// Emits the search over buckets `lo..hi` (by their lowest numbers `lows`): pre-order, the
/// `nr < low` side right after each node, so a node's jump skips its lower side. A single
/// bucket is a `JA` whose offset is set once the programs are placed (`leaves`).
fn search(
    lows: &[u32],
    lo: usize,
    hi: usize,
    out: &mut Vec<sock_filter>,
    leaves: &mut Vec<(usize, usize)>,
) -> Result<(), String> {
    if hi - lo == 1 {
        leaves.push((out.len(), lo));
        out.push(sock_filter {
            code: BPF_JMP_JA,
            jt: 0,
            jf: 0,
            k: 0,
        });
        return Ok(());
    }
    let mid = (lo + hi) / 2;
    let node = out.len();
    out.push(sock_filter {
        code: BPF_JMP_JGE_K,
        jt: 0,
        jf: 0,
        k: lows[mid],
    });
    search(lows, lo, mid, out, leaves)?;
    out[node].jt = u8::try_from(out.len() - node - 1)
        .map_err(|_| "seccomp: too many syscall buckets for one search".to_string())?;
    search(lows, mid, hi, out, leaves)
}

/// The number of each syscall name on `arch`: from the `syscalls` crate's tables, and for a
/// name those lack, from seccompiler's (see [`seccompiler_numbers`]; the unit tests check that
/// both tables agree for every name of the agent sets). Reading seccompiler's table costs a
/// one-rule program per name (~0.6 ms for the agent set, several ms in the musl shim), on a
/// policy's first compile on a node. A wrong number could only deny a syscall, never allow
/// one: every bucket compares exact numbers.
pub fn syscall_numbers(
    names: &BTreeSet<String>,
    arch: TargetArch,
) -> Result<BTreeMap<String, u32>, String> {
    let known = |n: &str| -> Option<u32> {
        let id = match arch {
            TargetArch::x86_64 => n.parse::<syscalls::x86_64::Sysno>().ok()?.id(),
            TargetArch::aarch64 => n.parse::<syscalls::aarch64::Sysno>().ok()?.id(),
            TargetArch::riscv64 => n.parse::<syscalls::riscv64::Sysno>().ok()?.id(),
        };
        u32::try_from(id).ok()
    };
    let mut out = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for n in names {
        match known(n) {
            Some(nr) => {
                out.insert(n.clone(), nr);
            }
            None => {
                unknown.insert(n.clone());
            }
        }
    }
    if !unknown.is_empty() {
        out.extend(seccompiler_numbers(&unknown, arch)?);
    }
    Ok(out)
}

/// The number `seccompiler` gives each syscall name on `arch` (read from a one-rule program
/// per name).
pub fn seccompiler_numbers(
    names: &BTreeSet<String>,
    arch: TargetArch,
) -> Result<BTreeMap<String, u32>, String> {
    let doc: Map<String, Value> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                json!({"mismatch_action": "allow", "match_action": {"errno": 1}, "filter": [{"syscall": n}]}),
            )
        })
        .collect();
    let map = seccompiler::compile_from_json(Value::Object(doc).to_string().as_bytes(), arch)
        .map_err(|e| format!("seccomp: seccompiler could not compile the filter: {e}"))?;
    names
        .iter()
        .map(|n| {
            map[n]
                .windows(2)
                .find(|w| {
                    w[0].code == BPF_LD_W_ABS && w[0].k == DATA_NR && w[1].code == BPF_JMP_JEQ_K
                })
                .map(|w| (n.clone(), w[1].k))
                .ok_or_else(|| {
                    format!("seccomp: no syscall number for {n} in seccompiler's program")
                })
        })
        .collect()
}

/// The allowlist as one seccompiler chain, as it was compiled before the number search: what
/// the tests compare the search with.
#[cfg(test)]
pub(crate) fn linear(
    rules: Vec<Value>,
    mismatch: &Value,
    arch: TargetArch,
) -> Result<Vec<sock_filter>, String> {
    let doc = json!({"l": {"mismatch_action": mismatch, "match_action": "allow", "filter": rules}});
    seccompiler::compile_from_json(doc.to_string().as_bytes(), arch)
        .map(|mut m| m.remove("l").expect("the program we named"))
        .map_err(|e| e.to_string())
}

/// A classic BPF interpreter for the instructions seccompiler and this module emit, for tests.
#[cfg(test)]
pub(crate) fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
    // struct seccomp_data: nr at 0, arch at 4, ip at 8, args at 16 (little endian).
    let word = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            8 | 12 => 0,
            16..=63 => {
                let a = args[((off - 16) / 8) as usize];
                if (off - 16).is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            _ => panic!("load at offset {off}"),
        }
    };
    let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
    loop {
        let i = &prog[pc];
        steps += 1;
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => acc = word(i.k),
            0x06 => return (i.k, steps),
            BPF_JMP_JA => pc += i.k as usize,
            0x54 => acc &= i.k,
            BPF_JMP_JEQ_K | BPF_JMP_JGE_K | 0x25 | 0x45 => {
                let taken = match i.code {
                    BPF_JMP_JEQ_K => acc == i.k,
                    BPF_JMP_JGE_K => acc >= i.k,
                    0x25 => acc > i.k,
                    _ => acc & i.k != 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            c => panic!("instruction {c:#x} at {}", pc - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_tables_agree_with_seccompilers() {
        let x86: BTreeSet<String> = crate::syscalls::AGENT_COMMON
            .iter()
            .chain(crate::syscalls::AGENT_X86_64)
            .chain(crate::syscalls::CONDITIONAL)
            .chain(&["ptrace", "mount", "bpf", "fork", "io_uring_setup"])
            .map(|n| n.to_string())
            .collect();
        let arm: BTreeSet<String> = crate::syscalls::AGENT_COMMON
            .iter()
            .chain(crate::syscalls::CONDITIONAL)
            .map(|n| n.to_string())
            .collect();
        for (arch, names) in [(TargetArch::x86_64, x86), (TargetArch::aarch64, arm)] {
            let ours = syscall_numbers(&names, arch).unwrap();
            assert_eq!(ours, seccompiler_numbers(&names, arch).unwrap(), "{arch:?}");
            assert_eq!(ours.len(), names.len());
        }
        let names: BTreeSet<String> = ["read", "write", "clone3"].map(String::from).into();
        let x86 = syscall_numbers(&names, TargetArch::x86_64).unwrap();
        assert_eq!((x86["read"], x86["write"], x86["clone3"]), (0, 1, 435));
        let arm = syscall_numbers(&names, TargetArch::aarch64).unwrap();
        assert_eq!((arm["read"], arm["write"], arm["clone3"]), (63, 64, 435));
    }

    #[test]
    fn a_search_routes_each_number_to_its_own_bucket() {
        // The 40 lowest-numbered agent syscalls: three buckets; other numbers get the mismatch.
        let all: BTreeSet<String> = crate::syscalls::AGENT_COMMON
            .iter()
            .map(|n| n.to_string())
            .collect();
        let numbers = syscall_numbers(&all, TargetArch::x86_64).unwrap();
        let mut chosen: Vec<(&String, &u32)> = numbers.iter().collect();
        chosen.sort_by_key(|(_, nr)| **nr);
        chosen.truncate(40);
        let rules = chosen.iter().map(|(n, _)| json!({"syscall": n})).collect();
        let prog = compile(rules, &json!({"errno": 1}), TargetArch::x86_64).unwrap();
        assert_eq!(prog[0].code, BPF_JMP_JGE_K, "three buckets need a search");
        let allowed: BTreeSet<u32> = chosen.iter().map(|(_, nr)| **nr).collect();
        let arch = 0xC000_003E;
        for nr in 0..600 {
            // The caller's prelude leaves the number in the accumulator: emulate it.
            let mut with_load = vec![sock_filter {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: DATA_NR,
            }];
            with_load.extend(prog.iter().cloned());
            let (verdict, steps) = run(&with_load, arch, nr, [0; 6]);
            let want = if allowed.contains(&nr) {
                0x7fff_0000
            } else {
                0x0005_0001
            };
            assert_eq!(verdict, want, "syscall {nr}");
            assert!(steps <= 4 + 5 * BUCKET + 8, "syscall {nr}: {steps} steps");
        }
    }
}
