//! Which accelerator a VM runs on: hardware KVM, or QEMU's emulation (TCG) where the node
//! config allows it. The microVM mode fails closed: with no usable accelerator a create
//! fails, saying what is missing, and it never falls back to the process sandbox.
//!
//! Hardware KVM means `/dev/kvm` backed by `kvm_intel` or `kvm_amd` on a CPU with VT-x or
//! AMD-V. Other KVM providers (a PVM host's `kvm_pvm`, say) open `/dev/kvm` but boot no
//! standard guest kernel, so they do not count.

use std::fmt;
use std::path::{Path, PathBuf};

use airlock_policies::config::AcceleratorChoice;

/// What a VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    /// QEMU's Tiny Code Generator: emulation, no hardware help.
    Tcg,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error(
        "the microVM mode needs hardware KVM and this node has none: {why}. Run it on a node \
         with VT-x or AMD-V and kvm_intel or kvm_amd loaded, or allow emulation (much slower) \
         with `[vm] accelerator = \"auto\"` or `\"tcg\"` in the node config"
    )]
    NoKvm { why: String },
}

/// What the node offers, read from `/dev`, `/sys/module` and `/proc/cpuinfo`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Host {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// `kvm_intel` or `kvm_amd`, when loaded.
    pub hardware_module: Option<String>,
    /// Another loaded `kvm_*` provider (such as `kvm_pvm`).
    pub other_module: Option<String>,
    /// The CPU flags show `vmx` or `svm`.
    pub cpu_virtualization: bool,
}

impl Host {
    /// Reads this node.
    pub fn probe() -> Host {
        Host::probe_at(Path::new("/"))
    }

    /// Reads a node whose `/dev`, `/sys` and `/proc` are under `root` (tests).
    pub fn probe_at(root: &Path) -> Host {
        let module = |name: &str| root.join("sys/module").join(name).exists();
        let hardware_module = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| module(m))
            .map(String::from);
        let other_module = std::fs::read_dir(root.join("sys/module"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|n| n.starts_with("kvm_") && n != "kvm_intel" && n != "kvm_amd");
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let cpu_virtualization = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .take(1)
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        Host {
            dev_kvm: PathBuf::from(root).join("dev/kvm").exists(),
            hardware_module,
            other_module,
            cpu_virtualization,
        }
    }

    /// Ok when hardware KVM is usable; else why not.
    pub fn hardware_kvm(&self) -> Result<(), String> {
        if !self.dev_kvm {
            return Err("/dev/kvm does not exist".into());
        }
        if self.hardware_module.is_none() {
            return Err(match &self.other_module {
                Some(other) => format!(
                    "/dev/kvm is provided by {other}, not by kvm_intel or kvm_amd, and boots no \
                     standard guest kernel"
                ),
                None => "neither kvm_intel nor kvm_amd is loaded".into(),
            });
        }
        if !self.cpu_virtualization {
            return Err("the CPU shows neither vmx nor svm".into());
        }
        Ok(())
    }
}

/// The accelerator for `choice` on `host`.
pub fn select(choice: AcceleratorChoice, host: &Host) -> Result<Accelerator, Error> {
    match (choice, host.hardware_kvm()) {
        (AcceleratorChoice::Tcg, _) => Ok(Accelerator::Tcg),
        (_, Ok(())) => Ok(Accelerator::Kvm),
        (AcceleratorChoice::Auto, Err(_)) => Ok(Accelerator::Tcg),
        (AcceleratorChoice::Kvm, Err(why)) => Err(Error::NoKvm { why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dev_kvm: bool, modules: &[&str], flags: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        if dev_kvm {
            std::fs::write(d.path().join("dev/kvm"), "").unwrap();
        }
        for m in modules {
            std::fs::create_dir_all(d.path().join("sys/module").join(m)).unwrap();
        }
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(
            d.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu sse2 {flags}\n"),
        )
        .unwrap();
        d
    }

    #[test]
    fn hardware_kvm_is_chosen_when_the_node_has_it() {
        let n = node(true, &["kvm", "kvm_intel"], "vmx");
        let host = Host::probe_at(n.path());
        for choice in [AcceleratorChoice::Kvm, AcceleratorChoice::Auto] {
            assert_eq!(select(choice, &host), Ok(Accelerator::Kvm));
        }
        assert_eq!(select(AcceleratorChoice::Tcg, &host), Ok(Accelerator::Tcg));
    }

    #[test]
    fn a_pvm_host_is_not_hardware_kvm() {
        let n = node(true, &["kvm", "kvm_pvm"], "");
        let host = Host::probe_at(n.path());
        let err = select(AcceleratorChoice::Kvm, &host).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kvm_pvm") && msg.contains("accelerator = \"auto\""),
            "{msg}"
        );
        assert_eq!(select(AcceleratorChoice::Auto, &host), Ok(Accelerator::Tcg));
    }

    #[test]
    fn each_missing_piece_is_named() {
        let cases = [
            (node(false, &["kvm_amd"], "svm"), "/dev/kvm does not exist"),
            (node(true, &["kvm"], "svm"), "neither kvm_intel nor kvm_amd"),
            (node(true, &["kvm_amd"], ""), "neither vmx nor svm"),
        ];
        for (n, want) in cases {
            let why = Host::probe_at(n.path()).hardware_kvm().unwrap_err();
            assert!(why.contains(want), "{why}");
        }
    }
}
