//! The microVM mode's guest, booted with no container yet: from starting the VMM to the agent's
//! `Ready`, the agent's own times in the guest, a control round trip, and the host memory of a
//! booted VM (QEMU and the virtiofsd of its share). It says which accelerator it ran on.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use airlock_agent::protocol::{Request, Response};
use airlock_policies::config::AcceleratorChoice;
use airlock_vm::accel::{self, Host};
use airlock_vm::{Qemu, Share, Vm, VmSpec};
use serde::{Deserialize, Serialize};

use crate::report::Metric;

const BOOT_LIMIT: Duration = Duration::from_secs(120);
const GUEST_MIB: u32 = 256;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmBootResult {
    pub accelerator: String,
    /// Why not hardware KVM, when emulated.
    pub why_not_kvm: Option<String>,
    pub kernel: String,
    pub initramfs_bytes: u64,
    pub guest_mib: u32,
    /// VMM start to the agent's Ready, ms.
    pub to_ready: Metric,
    /// In the guest, ms after the kernel's start: the agent runs, its port is open.
    pub agent_start: Metric,
    pub port_open: Metric,
    /// A ping over the control port, ms.
    pub ping: Metric,
    /// Host memory after ready, KiB (p50 over the boots).
    pub qemu_rss_kib: Option<u64>,
    pub virtiofsd_rss_kib: Option<u64>,
    pub first_error: Option<String>,
}

/// RSS (KiB) of process `pid`.
fn rss_kib(pid: u32) -> Option<u64> {
    crate::measure::memory_kib(pid as i32).0
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

struct Boot {
    to_ready: f64,
    agent_start: f64,
    port_open: f64,
    ping: f64,
    qemu_rss: Option<u64>,
    virtiofsd_rss: Option<u64>,
}

fn boot_once(
    dir: &Path,
    spec_of: &dyn Fn(Vec<Share>) -> VmSpec,
    qemu: &Qemu,
) -> Result<Boot, String> {
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
    let socket = dir.join("fs.sock");
    let _ = std::fs::remove_file(&socket);
    let virtiofsd = match airlock_vm::locate::tool("virtiofsd") {
        Some(bin) => Some(
            Command::new(bin)
                .arg("--socket-path")
                .arg(&socket)
                .arg("--shared-dir")
                .arg(&shared)
                .args(["--readonly", "--sandbox", "chroot"])
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("virtiofsd: {e}"))?,
        ),
        None => None,
    };
    let wait = Instant::now();
    while virtiofsd.is_some() && !socket.exists() && wait.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let shares = match virtiofsd {
        Some(_) => vec![Share {
            tag: "shared".into(),
            socket: socket.clone(),
        }],
        None => vec![],
    };
    let spec = spec_of(shares);
    let _ = std::fs::remove_file(&spec.control_socket);
    let booted = Vm::boot(qemu, &spec, &dir.join("qemu.log"), BOOT_LIMIT);
    let vm = match booted {
        Ok(vm) => vm,
        Err(e) => {
            if let Some(v) = virtiofsd {
                stop(v);
            }
            return Err(e.to_string());
        }
    };
    let t = Instant::now();
    let pong = vm.call(&Request::Ping, Duration::from_secs(30));
    let ping = t.elapsed().as_secs_f64() * 1e3;
    let qemu_rss = rss_kib(vm.pid());
    let virtiofsd_rss = virtiofsd.as_ref().and_then(|v| rss_kib(v.id()));
    let times = vm.times.clone();
    let _ = vm.shutdown(Duration::from_secs(30));
    if let Some(v) = virtiofsd {
        stop(v);
    }
    match pong {
        Ok(Response::Pong { .. }) => Ok(Boot {
            to_ready: times.to_ready.as_secs_f64() * 1e3,
            agent_start: times.ready.init_ms as f64,
            port_open: times.ready.port_ms as f64,
            ping,
            qemu_rss,
            virtiofsd_rss,
        }),
        Ok(other) => Err(format!("ping: {other:?}")),
        Err(e) => Err(format!("ping: {e}")),
    }
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Boots the guest `rounds` times; Err(why) when it cannot be measured on this node.
pub fn measure(rounds: usize, bin_dir: &Path) -> Result<VmBootResult, String> {
    let kernel = airlock_vm::locate::cloud_kernel(Path::new("/boot"))
        .ok_or("no /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64)")?;
    let qemu = airlock_vm::locate::tool("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not installed")?;
    let host = Host::probe();
    let accelerator = accel::select(AcceleratorChoice::Auto, &host).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let initramfs = dir.path().join("initramfs.cpio");
    let built = airlock_vm::initramfs::build(
        &kernel,
        Path::new("/lib/modules"),
        &bin_dir.join("airlock-agent"),
        &initramfs,
    )
    .map_err(|e| e.to_string())?;
    let qemu = Qemu::new(qemu);
    let spec_of = |shares| VmSpec {
        kernel: kernel.clone(),
        initramfs: initramfs.clone(),
        vcpus: 1,
        memory_mib: GUEST_MIB,
        accelerator,
        control_socket: dir.path().join("ctl.sock"),
        console_log: dir.path().join("console.log"),
        shares,
        nics: vec![],
        run_as: None,
        cgroup_procs: vec![],
    };
    let mut boots = Vec::new();
    let mut first_error = None;
    for _ in 0..rounds {
        match boot_once(dir.path(), &spec_of, &qemu) {
            Ok(b) => boots.push(Some(b)),
            Err(e) => {
                first_error.get_or_insert(e);
                boots.push(None);
            }
        }
    }
    let metric = |name: &str, f: &dyn Fn(&Boot) -> f64| {
        Metric::new(
            name,
            boots
                .iter()
                .map(|b| b.as_ref().map_or(f64::NAN, f))
                .collect(),
        )
    };
    Ok(VmBootResult {
        accelerator: accelerator.to_string(),
        why_not_kvm: host.hardware_kvm().err(),
        kernel: built.release,
        initramfs_bytes: built.bytes,
        guest_mib: GUEST_MIB,
        to_ready: metric("to ready", &|b| b.to_ready),
        agent_start: metric("agent start", &|b| b.agent_start),
        port_open: metric("port open", &|b| b.port_open),
        ping: metric("ping", &|b| b.ping),
        qemu_rss_kib: median(boots.iter().flatten().filter_map(|b| b.qemu_rss).collect()),
        virtiofsd_rss_kib: median(
            boots
                .iter()
                .flatten()
                .filter_map(|b| b.virtiofsd_rss)
                .collect(),
        ),
        first_error,
    })
}

fn p50_p99(m: &Metric) -> String {
    match &m.summary {
        Some(s) => format!("{:.1} / {:.1}", s.p50, s.p99),
        None => "-".into(),
    }
}

/// The report's section.
pub fn markdown(r: &VmBootResult) -> String {
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let mut s = format!(
        "**airlock-vm guest boot, no container** ({} boots; accelerator {}{}; kernel {}, \
         initramfs {} bytes, {} MiB guest; ms, p50 / p99; guest times are from the guest \
         kernel's start)\n\n",
        r.to_ready.samples.len(),
        r.accelerator,
        r.why_not_kvm
            .as_ref()
            .map(|w| format!(", not KVM: {w}"))
            .unwrap_or_default(),
        r.kernel,
        r.initramfs_bytes,
        r.guest_mib
    );
    s.push_str(
        "| VMM start to agent ready | in the guest: agent start | in the guest: port open | ping | failures | QEMU RSS, MiB | virtiofsd RSS, MiB |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    s.push_str(&format!(
        "| {} | {} | {} | {} | {} | {} | {} |\n\n",
        p50_p99(&r.to_ready),
        p50_p99(&r.agent_start),
        p50_p99(&r.port_open),
        p50_p99(&r.ping),
        r.to_ready.failures,
        mib(r.qemu_rss_kib),
        mib(r.virtiofsd_rss_kib)
    ));
    if let Some(e) = &r.first_error {
        s.push_str(&format!("first error: {e}\n\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_names_the_accelerator_and_every_figure() {
        let m = |name: &str, base: f64| Metric::new(name, vec![base, base + 2.0, f64::NAN]);
        let r = VmBootResult {
            accelerator: "tcg".into(),
            why_not_kvm: Some("/dev/kvm is provided by kvm_pvm".into()),
            kernel: "6.1.0-57-cloud-amd64".into(),
            initramfs_bytes: 1_270_940,
            guest_mib: 256,
            to_ready: m("to ready", 1500.0),
            agent_start: m("agent start", 900.0),
            port_open: m("port open", 1100.0),
            ping: m("ping", 0.2),
            qemu_rss_kib: Some(225_280),
            virtiofsd_rss_kib: None,
            first_error: Some("boot: the guest's agent was not ready".into()),
        };
        let md = markdown(&r);
        for want in [
            "(3 boots; accelerator tcg, not KVM: /dev/kvm is provided by kvm_pvm; kernel 6.1.0-57-cloud-amd64, initramfs 1270940 bytes, 256 MiB guest",
            "| 1500.0 / 1502.0 | 900.0 / 902.0 | 1100.0 / 1102.0 | 0.2 / 2.2 |",
            "| 1 | 220.0 | - |",
            "first error: boot: the guest's agent was not ready",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
    }
}
