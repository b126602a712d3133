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
            "seccomp": { "enabled": false },
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
    }
}
