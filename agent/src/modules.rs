//! The guest's kernel modules: which files, in which order.
//!
//! Debian's cloud kernel builds the virtio transports, the console and virtio-fs as modules,
//! and this kernel loads no compressed module (`finit_module` answers EOPNOTSUPP), so the
//! initramfs carries the needed `.ko` files uncompressed with a trimmed `modules.dep`, and
//! the agent loads them itself in this order (it has no modprobe). A module that the kernel
//! has built in (`modules.builtin`) needs no file.

use std::collections::BTreeMap;

/// What the guest needs: the virtio-mmio transport of QEMU's `microvm` machine, the
/// virtio-serial port of the control channel, and virtio-fs for the container's rootfs.
/// The guest's drivers: the virtio transport, the control port, the rootfs share, the pod's
/// NIC, and the balloon whose free page reporting hands the pages the guest frees back to
/// the host.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtiofs",
    "virtio_net",
    "virtio_balloon",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error(
        "kernel module {0} is neither in modules.dep nor built in: the guest kernel cannot \
         run Airlock's agent (its modules directory must match the kernel image)"
    )]
    Missing(String),
}

/// A kernel's `modules.dep` and `modules.builtin`.
#[derive(Debug, Default, Clone)]
pub struct ModuleDep {
    /// Module file (relative to the modules directory) -> the files it needs.
    deps: BTreeMap<String, Vec<String>>,
    builtin: Vec<String>,
}

/// `kernel/fs/fuse/virtiofs.ko[.xz]` -> `virtiofs`; modprobe treats `-` and `_` alike.
pub fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDep {
    /// Parses `modules.dep` (`file: dep dep ...` per line) and `modules.builtin` (a file per
    /// line).
    pub fn parse(dep: &str, builtin: &str) -> ModuleDep {
        let deps = dep
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(file, needs)| {
                (
                    file.trim().to_string(),
                    needs.split_whitespace().map(String::from).collect(),
                )
            })
            .collect();
        let builtin = builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(name_of)
            .collect();
        ModuleDep { deps, builtin }
    }

    fn file_of(&self, name: &str) -> Option<&str> {
        let want = name.replace('-', "_");
        self.deps
            .keys()
            .find(|f| name_of(f) == want)
            .map(String::as_str)
    }

    /// The files to load for `names`, each after the files it needs, each once; built-in
    /// modules need none.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>, Error> {
        let mut order = Vec::new();
        for name in names {
            if self.builtin.iter().any(|b| *b == name.replace('-', "_")) {
                continue;
            }
            let file = self
                .file_of(name)
                .ok_or_else(|| Error::Missing(name.to_string()))?;
            self.visit(file, &mut order, 0);
        }
        Ok(order)
    }

    fn visit(&self, file: &str, order: &mut Vec<String>, depth: usize) {
        if depth > 64 || order.iter().any(|o| o == file) {
            return;
        }
        if let Some(needs) = self.deps.get(file) {
            // modules.dep lists a module's needs so that the last is loaded first.
            for need in needs.iter().rev() {
                self.visit(need, order, depth + 1);
            }
        }
        order.push(file.to_string());
    }

    /// The `modules.dep` of just `files` (for the initramfs).
    pub fn render(&self, files: &[String]) -> String {
        files
            .iter()
            .map(|f| {
                let needs = self.deps.get(f).map(|d| d.join(" ")).unwrap_or_default();
                format!("{f}: {needs}\n")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_balloon.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vsock.ko:
";

    #[test]
    fn every_module_loads_after_what_it_needs_and_once() {
        let m = ModuleDep::parse(DEP, "");
        let order = m.load_order(GUEST_MODULES).unwrap();
        let names: Vec<String> = order.iter().map(|f| name_of(f)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_console",
                "fuse",
                "virtiofs",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_balloon"
            ]
        );
        assert_eq!(
            m.render(&order).lines().nth(1),
            Some("kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko")
        );
    }

    #[test]
    fn built_in_modules_need_no_file_and_missing_ones_are_named() {
        let m = ModuleDep::parse(DEP, "kernel/fs/fuse/virtiofs.ko\nkernel/fs/fuse/fuse.ko\n");
        let order = m.load_order(&["virtiofs", "virtio-console"]).unwrap();
        assert_eq!(order.len(), 3, "{order:?}");
        assert_eq!(
            m.load_order(&["vhost_vsock"]),
            Err(Error::Missing("vhost_vsock".into()))
        );
    }

    #[test]
    fn names_ignore_compression_and_dashes() {
        assert_eq!(name_of("kernel/a/virtio-mmio.ko.xz"), "virtio_mmio");
        assert_eq!(name_of("fuse.ko"), "fuse");
    }
}
