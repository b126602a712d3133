//! A node config for the microVM mode (`[vm]`), with the guest's initramfs built from the
//! agent in the binaries under test. The tests and the bench give it to the shim through
//! the runtime options' `ConfigPath` (`ctr run --runtime-config-path`, or a CRI runtime's
//! `options`), so they never touch the node's `/etc/airlock`.

use std::path::{Path, PathBuf};

/// Writes `dir/config-ACCELERATOR.toml` (and `dir/initramfs.cpio`, with `bin_dir`'s
/// `airlock-agent`) with `accelerator` (`kvm`, `tcg` or `auto`) and returns its path.
pub fn node_config(dir: &Path, bin_dir: &Path, accelerator: &str) -> Result<PathBuf, String> {
    let kernel = airlock_vm::locate::cloud_kernel(Path::new("/boot")).ok_or(
        "no /boot/vmlinuz-*-cloud-amd64: scripts/setup.sh installs linux-image-cloud-amd64",
    )?;
    let qemu = airlock_vm::locate::tool("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not installed (scripts/setup.sh installs it)")?;
    let virtiofsd = airlock_vm::locate::tool("virtiofsd")
        .ok_or("virtiofsd is not installed (scripts/setup.sh installs it)")?;
    let initramfs = dir.join("initramfs.cpio");
    if !initramfs.exists() {
        airlock_vm::initramfs::build(
            &kernel,
            Path::new("/lib/modules"),
            &bin_dir.join("airlock-agent"),
            &initramfs,
        )
        .map_err(|e| e.to_string())?;
    }
    let cfg = dir.join(format!("config-{accelerator}.toml"));
    let text = format!(
        "[vm]\nkernel = \"{}\"\ninitramfs = \"{}\"\nqemu = \"{}\"\nvirtiofsd = \"{}\"\naccelerator = \"{accelerator}\"\n",
        kernel.display(),
        initramfs.display(),
        qemu.display(),
        virtiofsd.display()
    );
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Writes the node config that the CRI runtime [`crate::containerd::VM_HANDLER`] of `ctd`
/// reads ([`Containerd::vm_config`](crate::Containerd::vm_config)), with `accelerator`.
pub fn cri_node_config(ctd: &crate::Containerd, accelerator: &str) -> Result<(), String> {
    let dir = ctd
        .vm_config()
        .parent()
        .expect("in a directory")
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let written = node_config(&dir, ctd.airlock_bin_dir(), accelerator)?;
    std::fs::copy(&written, ctd.vm_config()).map_err(|e| e.to_string())?;
    Ok(())
}

/// Kills container `id`'s task and removes it and the container, retrying while its task is
/// going (a VM's shutdown takes a moment); Err when it stays.
pub fn remove_container(ctd: &crate::Containerd, ns: &str, id: &str) -> Result<(), String> {
    let _ = ctd.ctr(Some(ns), &["task", "kill", "-s", "KILL", id]);
    let gone = crate::proc_util::wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
        || {
            ctd.ctr(Some(ns), &["task", "rm", "-f", id])
                .is_ok_and(|o| o.success())
                || !ctd
                    .ctr(Some(ns), &["task", "ls"])
                    .is_ok_and(|o| o.stdout.contains(id))
        },
    );
    if !gone {
        return Err(format!("the task of {id} was not removable"));
    }
    let out = ctd
        .ctr(Some(ns), &["containers", "rm", id])
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!("ctr containers rm {id}: {}", out.stderr.trim()))
    }
}
