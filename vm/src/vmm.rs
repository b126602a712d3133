//! A VMM behind a trait: what Airlock asks of one, and QEMU as the first backend.
//!
//! A backend turns a [`VmSpec`] into the command that boots it. The rest (the control
//! socket it connects to, waiting for the agent, stopping the VM) is the same for every
//! backend and lives in [`crate::Vm`].
//!
//! QEMU's `microvm` machine: no PCI, no firmware, no ACPI-less legacy devices; the
//! virtio-mmio devices are found through ACPI by the guest's `virtio_mmio` module. The
//! control port is a virtio-serial port whose chardev connects to a unix socket the host
//! listens on (no vsock: this node has no `/dev/vhost-vsock`). Other backends (Cloud
//! Hypervisor, Firecracker) would implement the same trait; docs/design/microvm.md says
//! what each needs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_agent::protocol::PORT_NAME;

use crate::accel::Accelerator;

/// A virtio-fs share: a `virtiofsd` listening on `socket`, mounted in the guest by `tag`.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub tag: String,
    pub socket: PathBuf,
}

/// One VM, as the host wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accelerator: Accelerator,
    /// The unix socket the host listens on; the VMM connects the control port to it.
    pub control_socket: PathBuf,
    /// Where the guest's serial console goes.
    pub console_log: PathBuf,
    pub shares: Vec<Share>,
    /// The pod's network: one virtio-net device per tap.
    pub nics: Vec<Nic>,
    /// The VMM's uid and gid (None: the caller's, without capabilities).
    pub run_as: Option<crate::jail::RunAs>,
    /// `cgroup.procs` files (open for writing) of the cgroup the VMM joins before its exec.
    pub cgroup_procs: Vec<std::os::fd::RawFd>,
}

/// A NIC on a tap the host made (`-netdev tap,fd=`): the VMM inherits `fd`, and the guest's
/// NIC gets `mac`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nic {
    pub fd: std::os::fd::RawFd,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error(
        "{what} {path} holds a comma or is not UTF-8, which QEMU's option syntax cannot carry; \
         use a path without one"
    )]
    BadPath { what: &'static str, path: PathBuf },
}

/// A virtual machine monitor backend.
pub trait Vmm: Send + Sync {
    /// Its name in logs and reports (`qemu`).
    fn name(&self) -> &'static str;
    /// The command that boots `spec` (not started).
    fn command(&self, spec: &VmSpec) -> Result<Command, Error>;
}

/// QEMU (`qemu-system-x86_64 -M microvm`).
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    /// The host's TSC rate, told to an emulated guest (`tsc_early_khz`): microvm has no PIT,
    /// HPET or PM timer to calibrate against, and without it the guest kernel waits forever.
    pub tsc_khz: Option<u64>,
}

impl Qemu {
    pub fn new(binary: impl Into<PathBuf>) -> Qemu {
        Qemu {
            binary: binary.into(),
            tsc_khz: host_tsc_khz(),
        }
    }
}

/// The host's TSC rate in kHz, from the first `cpu MHz` of `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&info)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|mhz| *mhz > 0.0)
        .map(|mhz| (mhz * 1000.0).round() as u64)
}

/// The guest kernel's command line.
pub fn kernel_cmdline(accelerator: Accelerator, tsc_khz: Option<u64>) -> String {
    // The console on the serial port (early panics stay visible); a panic stops the VM at
    // once (panic=-1 reboots, and QEMU runs with -no-reboot); no legacy keyboard probing.
    let mut args = vec![
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "reboot=t",
        "pci=off",
        "i8042.noaux",
        "i8042.nokbd",
        "8250.nr_uarts=1",
        "no_timer_check",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if accelerator == Accelerator::Tcg {
        args.push("tsc=reliable".into());
        if let Some(khz) = tsc_khz {
            args.push(format!("tsc_early_khz={khz}"));
        }
    }
    args.join(" ")
}

fn opt_path(what: &'static str, path: &Path) -> Result<String, Error> {
    match path.to_str() {
        Some(s) if !s.contains(',') => Ok(s.to_string()),
        _ => Err(Error::BadPath {
            what,
            path: path.to_path_buf(),
        }),
    }
}

impl Vmm for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn command(&self, spec: &VmSpec) -> Result<Command, Error> {
        let control = opt_path("control socket", &spec.control_socket)?;
        let console = opt_path("console log", &spec.console_log)?;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str| args.push(a.into());
        let machine = if spec.shares.is_empty() {
            "microvm".to_string()
        } else {
            // vhost-user devices need guest memory that virtiofsd can map.
            "microvm,memory-backend=mem".to_string()
        };
        for a in [
            "-M",
            &machine,
            "-accel",
            spec.accelerator.name(),
            "-cpu",
            match spec.accelerator {
                Accelerator::Kvm => "host",
                Accelerator::Tcg => "max",
            },
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            // QEMU's own seccomp filter: no obsolete system calls, no privilege changes, no
            // process spawning, no scheduler or affinity changes.
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-m",
            &format!("{}M", spec.memory_mib),
            "-smp",
            &spec.vcpus.to_string(),
            "-append",
            &kernel_cmdline(spec.accelerator, self.tsc_khz),
            "-serial",
            &format!("file:{console}"),
            "-chardev",
            &format!("socket,id=ctl,path={control}"),
            // Free page reporting: the pages the guest frees go back to the host (the guest
            // touches about 100 MiB while it boots; this returns about 23 MiB of it).
            "-device",
            "virtio-balloon-device,free-page-reporting=on",
            "-device",
            "virtio-serial-device",
            "-device",
            &format!("virtserialport,chardev=ctl,name={PORT_NAME}"),
        ] {
            push(a);
        }
        if !spec.shares.is_empty() {
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ));
        }
        for (i, share) in spec.shares.iter().enumerate() {
            let socket = opt_path("virtio-fs socket", &share.socket)?;
            if share.tag.is_empty() || share.tag.contains(',') || share.tag.len() > 36 {
                return Err(Error::BadPath {
                    what: "virtio-fs tag",
                    path: PathBuf::from(&share.tag),
                });
            }
            push("-chardev");
            push(&format!("socket,id=fs{i},path={socket}"));
            push("-device");
            push(&format!(
                "vhost-user-fs-device,chardev=fs{i},tag={}",
                share.tag
            ));
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            push("-netdev");
            push(&format!("tap,id=net{i},fd={}", nic.fd));
            push("-device");
            push(&format!(
                "virtio-net-device,netdev=net{i},mac={}",
                airlock_net::mac_string(&nic.mac)
            ));
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-kernel")
            .arg(&spec.kernel)
            .arg("-initrd")
            .arg(&spec.initramfs)
            .args(args);
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &str) -> VmSpec {
        VmSpec {
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initramfs.cpio".into(),
            vcpus: 2,
            memory_mib: 256,
            accelerator: Accelerator::Tcg,
            control_socket: format!("{dir}/ctl.sock").into(),
            console_log: format!("{dir}/console.log").into(),
            shares: vec![],
            nics: vec![],
            run_as: None,
            cgroup_procs: vec![],
        }
    }

    fn argv(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn an_emulated_microvm_gets_the_tsc_rate_and_the_control_port() {
        let q = Qemu {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            tsc_khz: Some(2_596_120),
        };
        let a = argv(&q.command(&spec("/run/vm")).unwrap());
        let joined = a.join(" ");
        for want in [
            "-M microvm -accel tcg -cpu max",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-m 256M -smp 2",
            "tsc_early_khz=2596120",
            "-serial file:/run/vm/console.log",
            "-chardev socket,id=ctl,path=/run/vm/ctl.sock",
            "virtserialport,chardev=ctl,name=airlock.ctl",
            "virtio-balloon-device,free-page-reporting=on",
        ] {
            assert!(joined.contains(want), "{want} not in {joined}");
        }
        assert!(
            !joined.contains("memfd"),
            "no share, no shared memory: {joined}"
        );
    }

    #[test]
    fn hardware_kvm_uses_the_host_cpu_and_needs_no_tsc_rate() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: Some(1),
        };
        let mut s = spec("/run/vm");
        s.accelerator = Accelerator::Kvm;
        let joined = argv(&q.command(&s).unwrap()).join(" ");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
        assert!(!joined.contains("tsc_early_khz"), "{joined}");
    }

    #[test]
    fn a_nic_is_a_virtio_net_device_on_the_tap_it_is_given() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: None,
        };
        let mut s = spec("/run/vm");
        s.nics = vec![Nic {
            fd: 7,
            mac: [0x0a, 0x58, 0x0a, 0x58, 0, 7],
        }];
        let joined = argv(&q.command(&s).unwrap()).join(" ");
        assert!(
            joined.contains(
                "-netdev tap,id=net0,fd=7 -device virtio-net-device,netdev=net0,mac=0a:58:0a:58:00:07"
            ),
            "{joined}"
        );
        assert!(!argv(&q.command(&spec("/run/vm")).unwrap())
            .join(" ")
            .contains("netdev"));
    }

    #[test]
    fn a_share_brings_shared_memory_and_a_vhost_user_fs_device() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: None,
        };
        let mut s = spec("/run/vm");
        s.shares.push(Share {
            tag: "rootfs".into(),
            socket: "/run/vm/fs.sock".into(),
        });
        let joined = argv(&q.command(&s).unwrap()).join(" ");
        assert!(joined.contains("microvm,memory-backend=mem"), "{joined}");
        assert!(joined.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(joined.contains("vhost-user-fs-device,chardev=fs0,tag=rootfs"));
    }

    #[test]
    fn a_comma_in_a_path_is_refused_by_name() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: None,
        };
        let e = q.command(&spec("/run/a,b")).unwrap_err();
        assert!(
            e.to_string().contains("control socket /run/a,b/ctl.sock"),
            "{e}"
        );
    }

    #[test]
    fn the_tsc_rate_comes_from_cpu_mhz() {
        assert_eq!(
            parse_cpu_mhz("processor : 0\ncpu MHz\t\t: 2596.120\n"),
            Some(2_596_120)
        );
        assert_eq!(parse_cpu_mhz("processor : 0\n"), None);
    }
}
