//! `containerd-shim-airlock-v2 -info` and `-v`: answered before any runtime starts, and
//! without depending on any other runtime being installed.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

pub const NAME: &str = "containerd-shim-airlock-v2";

/// What the process backend supports, in the OCI runtime-spec "features" format.
pub fn features_json() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "private", "rprivate", "slave", "rslave", "shared", "rshared", "relatime", "noatime", "strictatime", "size", "mode"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            // The pod's linux.seccomp is compiled with seccompiler and installed beside the
            // policy's own filter (policies/src/pod_seccomp.rs); SCMP_ACT_NOTIFY is refused.
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": [match std::env::consts::ARCH { "x86_64" => "SCMP_ARCH_X86_64", "aarch64" => "SCMP_ARCH_AARCH64", _ => "SCMP_ARCH_NATIVE" }]
            },
            "mountExtensions": { "idmap": { "enabled": true } },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": { "dev.airlock.policy.annotation": airlock_policies::POLICY_ANNOTATION }
    })
}

pub fn runtime_info() -> RuntimeInfo {
    RuntimeInfo {
        name: NAME.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: String::new(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
                .to_string(),
            value: serde_json::to_vec(&features_json()).expect("static json"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Handle `-info` / `-v` / `--version` if present; returns whether it did.
pub fn handle(args: &[String]) -> bool {
    if args.iter().any(|a| a == "-info" || a == "--info") {
        // containerd writes the runtime options to stdin; the answer does not depend on them.
        let bytes = runtime_info().write_to_bytes().expect("encode RuntimeInfo");
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&bytes);
        let _ = out.flush();
        return true;
    }
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!("{NAME}:\n  Version: {}", env!("CARGO_PKG_VERSION"));
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_roundtrips() {
        let bytes = runtime_info().write_to_bytes().unwrap();
        let back = RuntimeInfo::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back.name, NAME);
        let f: serde_json::Value = serde_json::from_slice(&back.features.value).unwrap();
        assert_eq!(f["linux"]["cgroup"]["v2"], true);
        assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    }
}
