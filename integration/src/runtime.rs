//! The runtimes under test and how to select them through `ctr` and gRPC.

use prost_types::Any;

/// A runtime registered in the harness's containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `io.containerd.runc.v2` with runc.
    Runc,
    /// `io.containerd.runc.v2` with `BinaryName = "crun"`.
    Crun,
    /// `io.containerd.airlock.v2` (`containerd-shim-airlock-v2` found through PATH).
    Airlock,
}

/// Protobuf `containerd.runc.v1.Options`, only the field we set.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
}

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Runc, Runtime::Crun, Runtime::Airlock];

    /// The name it is registered under in the config (CRI runtime handler).
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Airlock => "airlock",
        }
    }

    /// containerd runtime_type (shim name).
    pub fn runtime_type(self) -> &'static str {
        match self {
            Runtime::Runc | Runtime::Crun => "io.containerd.runc.v2",
            Runtime::Airlock => "io.containerd.airlock.v2",
        }
    }

    /// `ctr run` flags selecting this runtime.
    pub fn ctr_args(self) -> Vec<String> {
        let mut v = vec!["--runtime".to_string(), self.runtime_type().to_string()];
        if self == Runtime::Crun {
            v.push("--runc-binary".into());
            v.push("crun".into());
        }
        v
    }

    /// Runtime options for a gRPC `Container.runtime`.
    pub fn options_any(self) -> Option<Any> {
        match self {
            Runtime::Crun => Some(runc_options_any("crun")),
            _ => None,
        }
    }

    /// Exit status a runtime reports for a container killed by `sig`.
    pub fn killed_status(sig: i32) -> u32 {
        128 + sig as u32
    }
}

/// Runtime options (`containerd.runc.v1.Options`) selecting `binary_name` under the runc.v2 shim,
/// for peers that are not a [`Runtime`] variant (e.g. the benchmark's gVisor wrapper).
pub fn runc_options_any(binary_name: &str) -> Any {
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: prost::Message::encode_to_vec(&RuncOptions {
            binary_name: binary_name.into(),
        }),
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
