//! The properties the fuzz targets check, shared by them and by the unit tests that replay the
//! corpus (`cargo test` here runs every corpus file through its target without AFL).

use std::collections::HashMap;
use std::path::Path;

use airlock_policies::{Config, IdRange, Policy, PolicySet};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// A policy file: parsing never panics; a policy that parses also lowers the default spec.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Policy::parse(text, "fuzz.toml") {
        let mut spec = Spec::default();
        let _ = p.apply(&mut spec);
        let _ = p.compile_seccomp();
    }
    let _ = Config::parse(text, "fuzz-config.toml");
}

/// Pod annotations (`key=value` lines): selecting a policy and a handler never panics, and
/// what is selected is a known policy.
pub fn annotations(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let map: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let loaded = Config::default()
        .resolve(None, "")
        .expect("the default config resolves");
    let _ = loaded.handler(Some(&map));
    if let Ok(p) = loaded.select(Some(&map)) {
        assert!(
            PolicySet::builtin().get(&p.name).is_some(),
            "selected an unknown policy {}",
            p.name
        );
    }
}

/// An OCI spec (JSON) lowered onto a built-in policy (the first byte picks which, and whether
/// the policy clamps): never panics, and what is accepted keeps the policy's guarantees.
pub fn lowering(data: &[u8]) {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let Ok(mut spec) = serde_json::from_slice::<Spec>(json) else {
        return;
    };
    let names = ["agent-strict", "agent-default", "baseline"];
    let mut policy = PolicySet::builtin()
        .get(names[usize::from(pick) % names.len()])
        .expect("built-in")
        .policy
        .clone();
    if pick & 0x80 != 0 {
        policy.on_excess = airlock_policies::OnExcess::Clamp;
    }
    let range = IdRange {
        host_uid: 1 << 30,
        host_gid: 1 << 30,
        size: 65536,
    };
    let host = |_: LinuxNamespaceType, _: &Path| pick & 0x40 != 0;
    if policy.apply_in_pod(&mut spec, &host, Some(range)).is_err() {
        return;
    }
    check_guarantees(&policy, &spec);
}

/// What an accepted spec must hold under `policy`.
fn check_guarantees(policy: &Policy, spec: &Spec) {
    let linux = spec.linux().as_ref();
    let namespaces: Vec<_> = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (name, typ) in [
        ("network", LinuxNamespaceType::Network),
        ("pid", LinuxNamespaceType::Pid),
        ("ipc", LinuxNamespaceType::Ipc),
        ("uts", LinuxNamespaceType::Uts),
    ] {
        if !policy.namespaces.allow_host.iter().any(|a| a == name) {
            assert!(
                namespaces.iter().any(|n| n.typ() == typ),
                "{}: the host {name} namespace was accepted",
                policy.name
            );
        }
    }
    if let Some(caps) = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
    {
        for set in [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.inheritable(),
            caps.ambient(),
        ]
        .into_iter()
        .flatten()
        {
            for c in set {
                let name = format!("CAP_{c}");
                assert!(
                    policy.process.capabilities.contains(&name),
                    "{}: {name} kept",
                    policy.name
                );
            }
        }
    }
    if policy.process.no_new_privileges {
        if let Some(p) = spec.process() {
            assert_eq!(
                p.no_new_privileges(),
                Some(true),
                "{}: no_new_privs",
                policy.name
            );
        }
    }
    if policy.user_namespace.enabled {
        for maps in [
            linux.and_then(|l| l.uid_mappings().clone()),
            linux.and_then(|l| l.gid_mappings().clone()),
        ]
        .into_iter()
        .flatten()
        {
            for m in maps {
                assert!(
                    !(m.host_id() == 0 && m.size() > 0),
                    "{}: host id 0 mapped",
                    policy.name
                );
            }
        }
    }
    if policy.filesystem.noexec_writable {
        for m in spec.mounts().iter().flatten() {
            let o = m.options().clone().unwrap_or_default();
            let kernel = matches!(
                m.typ().as_deref(),
                Some("proc" | "sysfs" | "cgroup" | "cgroup2" | "mqueue")
            );
            if !kernel && !o.iter().any(|x| x == "ro") {
                assert!(
                    o.iter().any(|x| x == "noexec"),
                    "{}: writable mount {} executes",
                    policy.name,
                    m.destination().display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every corpus file through its target (what `cargo afl fuzz` starts from).
    #[test]
    fn the_corpus_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (dir, target) in [
            ("policy", super::policy as fn(&[u8])),
            ("annotations", super::annotations),
            ("lowering", super::lowering),
        ] {
            let mut n = 0;
            for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                target(&std::fs::read(e.path()).unwrap());
                n += 1;
            }
            assert!(n > 0, "empty corpus {dir}");
        }
    }
}
