//! The node config's `[vm]` table: how the microVM mode (handler `airlock-vm`) boots a pod's
//! VM.
//!
//! ```toml
//! [vm]
//! kernel = "/var/lib/airlock/vm/vmlinuz"           # the guest kernel image
//! initramfs = "/var/lib/airlock/vm/initramfs.cpio"  # `airlock vm build` writes it
//! qemu = "/usr/bin/qemu-system-x86_64"
//! virtiofsd = "/usr/libexec/virtiofsd"
//! vcpus = 1
//! memory_mib = 256
//! accelerator = "kvm"      # "kvm" (hardware only), "tcg" (emulation) or "auto"
//! ```
//!
//! Every field is optional. The default accelerator is `kvm`: a node without hardware KVM
//! refuses VM pods until its operator allows emulation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where `airlock vm build` puts the guest's files by default.
pub const DEFAULT_VM_DIR: &str = "/var/lib/airlock/vm";

/// `[vm] accelerator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AcceleratorChoice {
    /// Hardware KVM or nothing.
    #[default]
    Kvm,
    /// QEMU's emulation, even where KVM is there (tests).
    Tcg,
    /// KVM where the node has it, else emulation.
    Auto,
}

/// `[vm]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accelerator: AcceleratorChoice,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::from(DEFAULT_VM_DIR).join("vmlinuz"),
            initramfs: PathBuf::from(DEFAULT_VM_DIR).join("initramfs.cpio"),
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            virtiofsd: PathBuf::from("/usr/libexec/virtiofsd"),
            vcpus: 1,
            memory_mib: 256,
            accelerator: AcceleratorChoice::Kvm,
        }
    }
}

impl VmConfig {
    /// The first thing wrong with these values, as `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, path) in [
            ("vm.kernel", &self.kernel),
            ("vm.initramfs", &self.initramfs),
            ("vm.qemu", &self.qemu),
            ("vm.virtiofsd", &self.virtiofsd),
        ] {
            if !path.is_absolute() {
                return Err((
                    field,
                    format!("{field}: {} must be an absolute path", path.display()),
                ));
            }
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err((
                "vm.vcpus",
                format!("vm.vcpus: {} is not between 1 and 64", self.vcpus),
            ));
        }
        if !(64..=1 << 20).contains(&self.memory_mib) {
            return Err((
                "vm.memory_mib",
                format!(
                    "vm.memory_mib: {} is not between 64 (the guest kernel's floor) and \
                     1048576",
                    self.memory_mib
                ),
            ));
        }
        Ok(())
    }
}
