//! The policy inside the guest: the spec, as the policy left it, lowered onto what the agent
//! applies to each process ([`Confinement`]) and onto the container's guest cgroup
//! ([`Limits`]). The seccomp programs are the ones the process sandbox installs (the pod's
//! own profile first, the policy's last), compiled on the host.

use std::str::FromStr;

use airlock_agent::protocol::{Capabilities, Confinement, GuestMount, Limits, Namespaces, User};
use oci_spec::runtime::{Capability, LinuxResources, Mount, Process, Spec};
use tracing::debug;

use super::share;
use crate::error::{Error, Result};

/// The kernel file systems the agent mounts inside a container's root; binds and cgroup
/// mounts of the spec are not made in the guest.
const GUEST_FS: [&str; 5] = ["proc", "sysfs", "tmpfs", "devpts", "mqueue"];

/// The seccomp programs for `spec` under `policy`, in install order.
pub fn seccomp(spec: &Spec, policy: &airlock_policies::Policy) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        let pod = airlock_policies::compile_pod_profile(profile).map_err(Error::InvalidArgument)?;
        out.extend(pod.iter().map(|p| p.to_bytes()));
    }
    if let Some(own) = policy.compile_seccomp()? {
        out.push(own.to_bytes());
    }
    Ok(out)
}

/// The confinement of the container's init (`id`): new namespaces, the spec's kernel file
/// systems, the container's cgroup.
pub fn init(spec: &Spec, id: &str, seccomp: Vec<Vec<u8>>) -> Result<Confinement> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("the spec has no process: nothing to run".into()))?;
    let mut c = process_confinement(process, id, seccomp)?;
    c.namespaces = Some(Namespaces::New {
        hostname: spec.hostname().clone(),
    });
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    c.mounts = mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| guest_mount(m, &share::bind_source_in_guest(id, i)))
        .collect();
    // Read-only in the guest, after the mount points are made in it.
    c.read_only_root = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    if let Some(linux) = spec.linux() {
        c.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
        c.masked_paths = linux.masked_paths().clone().unwrap_or_default();
    }
    debug!(
        made = c.mounts.len(),
        left = mounts.len() - c.mounts.len(),
        "the spec's mounts in the guest (cgroup mounts are not made there)"
    );
    Ok(c)
}

/// The confinement of an exec in container `id`: its init's namespaces and cgroup.
pub fn exec(process: &Process, id: &str, seccomp: Vec<Vec<u8>>) -> Result<Confinement> {
    let mut c = process_confinement(process, id, seccomp)?;
    c.namespaces = Some(Namespaces::Join {
        process: id.to_string(),
    });
    Ok(c)
}

fn process_confinement(process: &Process, id: &str, seccomp: Vec<Vec<u8>>) -> Result<Confinement> {
    let user = process.user();
    let set = |s: &Option<oci_spec::runtime::Capabilities>| mask(s.iter().flatten());
    // No capabilities object: none (oci-spec's default object holds some).
    let capabilities = match process.capabilities() {
        None => Capabilities::default(),
        Some(caps) => Capabilities {
            bounding: set(caps.bounding())?,
            effective: set(caps.effective())?,
            permitted: set(caps.permitted())?,
            inheritable: set(caps.inheritable())?,
            ambient: set(caps.ambient())?,
        },
    };
    Ok(Confinement {
        namespaces: None,
        mounts: Vec::new(),
        readonly_paths: Vec::new(),
        masked_paths: Vec::new(),
        read_only_root: false,
        cgroup: Some(id.to_string()),
        user: Some(User {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        }),
        capabilities: Some(capabilities),
        // As in the process sandbox: always, whatever the spec says.
        no_new_privs: true,
        seccomp,
    })
}

/// A capability set as a bit mask (bit N = capability N).
fn mask<'a>(caps: impl Iterator<Item = &'a Capability>) -> Result<u64> {
    let mut m = 0u64;
    for cap in caps {
        // strum's name lacks the prefix: SYS_ADMIN.
        let name = format!("CAP_{}", cap.to_string().trim_start_matches("CAP_"));
        let c = caps::Capability::from_str(&name).map_err(|_| {
            Error::InvalidArgument(format!("unknown capability {name} in the spec"))
        })?;
        m |= 1 << c.index();
    }
    Ok(m)
}

/// The spec's mount as the agent makes it: a file system of [`GUEST_FS`], or a bind of the
/// host path that the shim bound into the share at `bind_source` ([`share::is_bind`]); None
/// for other file systems.
fn guest_mount(m: &Mount, bind_source: &str) -> Option<GuestMount> {
    let options = m.options().as_deref().unwrap_or_default();
    let (flags, data) = mount_options(options);
    if share::is_bind(m) {
        let rec = if options.iter().any(|o| o == "rbind") {
            libc::MS_REC
        } else {
            0
        };
        return Some(GuestMount {
            target: m.destination().display().to_string(),
            fstype: "bind".into(),
            source: Some(bind_source.to_string()),
            flags: flags | rec,
            data: String::new(),
        });
    }
    let fstype = m.typ().as_deref()?;
    if !GUEST_FS.contains(&fstype) {
        return None;
    }
    Some(GuestMount {
        target: m.destination().display().to_string(),
        fstype: fstype.to_string(),
        source: None,
        flags,
        data,
    })
}

/// `mount(8)` options as `MS_*` flags and the file system's own options.
fn mount_options(options: &[String]) -> (u64, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        let f = match o.as_str() {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "sync" => libc::MS_SYNCHRONOUS,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            // Defaults, or propagation (the container's mount namespace is private).
            "rw" | "suid" | "dev" | "exec" | "async" | "atime" | "private" | "rprivate"
            | "slave" | "rslave" | "shared" | "rshared" | "bind" | "rbind" => 0,
            other => {
                data.push(other.to_string());
                0
            }
        };
        flags |= f;
    }
    #[allow(clippy::unnecessary_cast)] // c_ulong is u64 on 64-bit targets only
    (flags as u64, data.join(","))
}

/// The container's `linux.resources` as guest cgroup v2 limits.
pub fn limits(resources: Option<&LinuxResources>) -> Limits {
    let Some(r) = resources else {
        return Limits::default();
    };
    let mut l = Limits::default();
    if let Some(m) = r.memory() {
        l.memory_max = m.limit();
        if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
            // OCI's swap is memory plus swap; cgroup v2's is swap alone.
            l.swap_max = Some(if swap < 0 || limit < 0 {
                -1
            } else {
                (swap - limit).max(0)
            });
        }
    }
    if let Some(p) = r.pids() {
        l.pids_max = Some(if p.limit() <= 0 { -1 } else { p.limit() });
    }
    if let Some(cpu) = r.cpu() {
        if cpu.quota().is_some() || cpu.period().is_some() {
            l.cpu_max = Some((
                cpu.quota().filter(|q| *q > 0).unwrap_or(-1),
                cpu.period().filter(|p| *p > 0).unwrap_or(100_000),
            ));
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            // The conversion runc and crun use: shares 2..262144 onto weight 1..10000.
            let shares = shares.clamp(2, 262_144);
            l.cpu_weight = Some(1 + ((shares - 2) * 9999) / 262_142);
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_init_gets_new_namespaces_its_kernel_filesystems_and_the_specs_user_and_caps() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","hostname":"agent",
            "linux":{"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"]},
            "process":{"cwd":"/","args":["sh"],"user":{"uid":1000,"gid":100,"additionalGids":[10]},
              "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"]}},
            "mounts":[
              {"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
              {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
              {"destination":"/etc/hosts","type":"bind","source":"/x/hosts","options":["rbind","ro"]},
              {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro"]}]}"#,
        );
        let c = init(&s, "c1", vec![vec![1; 8]]).unwrap();
        assert_eq!(
            c.namespaces,
            Some(Namespaces::New {
                hostname: Some("agent".into())
            })
        );
        let targets: Vec<_> = c.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/proc", "/dev", "/etc/hosts"]);
        // MS_NOSUID | MS_NODEV | MS_NOEXEC
        assert_eq!(c.mounts[0].flags, 2 | 4 | 8);
        assert_eq!(c.mounts[1].data, "mode=755,size=65536k");
        // The bind's source is where the shim binds the host path on the share (mount 2 of
        // the spec); MS_RDONLY | MS_REC.
        assert_eq!(c.mounts[2].fstype, "bind");
        assert_eq!(c.mounts[2].source.as_deref(), Some("/run/shared/c1.m/2"));
        assert_eq!(c.mounts[2].flags, 1 | 16384);
        assert!(!c.read_only_root);
        assert_eq!(c.readonly_paths, ["/proc/sys"]);
        assert_eq!(c.masked_paths, ["/proc/kcore"]);
        assert_eq!(c.cgroup.as_deref(), Some("c1"));
        let u = c.user.unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 100, vec![10]));
        let caps = c.capabilities.unwrap();
        assert_eq!(caps.bounding, (1 << 5) | (1 << 0)); // CAP_KILL = 5, CAP_CHOWN = 0
        assert_eq!(caps.effective, 1 << 5);
        assert_eq!((caps.permitted, caps.ambient), (0, 0));
        assert!(c.no_new_privs);
        assert_eq!(c.seccomp.len(), 1);
    }

    #[test]
    fn an_exec_joins_its_init() {
        let p: Process =
            serde_json::from_str(r#"{"cwd":"/","args":["ls"],"user":{"uid":0,"gid":0}}"#).unwrap();
        let c = exec(&p, "c1", Vec::new()).unwrap();
        assert_eq!(
            c.namespaces,
            Some(Namespaces::Join {
                process: "c1".into()
            })
        );
        assert!(c.mounts.is_empty());
        assert_eq!(c.capabilities, Some(Capabilities::default()));
    }

    #[test]
    fn resources_become_cgroup_v2_limits() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864,"swap":134217728},"pids":{"limit":64},
                "cpu":{"quota":50000,"period":100000,"shares":1024}}"#,
        )
        .unwrap();
        let l = limits(Some(&r));
        assert_eq!(l.memory_max, Some(64 << 20));
        assert_eq!(l.swap_max, Some(64 << 20));
        assert_eq!(l.pids_max, Some(64));
        assert_eq!(l.cpu_max, Some((50_000, 100_000)));
        assert_eq!(l.cpu_weight, Some(39));
        assert_eq!(limits(None), Limits::default());
    }
}
