//! The microVM mode through containerd's CRI plugin (containerd 1.6 and 2.1), runtime
//! handler `airlock-vm`: one VM per pod, every container of the pod inside it, and the pod's
//! network (CNI's namespace, on the test bridge) reaching the guest, so one pod talks to
//! another pod's address. The handler's node config allows emulation (this node has no
//! hardware KVM).

use std::sync::Arc;
use std::time::Duration;

use airlock_integration::containerd::{Containerd, Version, CRI_NAMESPACE, VM_HANDLER};
use airlock_integration::cri::Cri;
use airlock_integration::proc_util;
use airlock_integration::shared::shared_cri;
use k8s_cri::v1::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(
        proc_util::wait_until(timeout, Duration::from_millis(100), f),
        "timed out waiting for {what}"
    );
}

fn vm_shims(ctd: &Containerd) -> usize {
    ctd.shims()
        .into_iter()
        .filter(|s| s.namespace == CRI_NAMESPACE && s.binary.contains("airlock"))
        .count()
}

/// The VMMs and virtiofsds of pod `pod` (their VM directory is named after its first id).
fn vm_processes_of(pod: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("/run/airlock/vm/") && cmd.contains(&pod[..12]) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

async fn exec(cri: &mut Cri, ctd: &Containerd, id: &str, cmd: &[&str]) -> String {
    let r = cri
        .exec_sync(id, cmd)
        .await
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}\n{}", ctd.log_tail(30)));
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.exit_code,
        0,
        "{cmd:?}: {out} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

async fn pod_ip(cri: &mut Cri, pod: &str) -> String {
    cri.client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default()
}

// The image has busybox's `sh` only; its applets run through it.
const SERVER: &[&str] = &["sh", "-c", "exec nc -ll -p 8080 -e echo pod-a-says-hi"];
const IDLE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 0.2; done",
];
const BOOT_ID: &[&str] = &["sh", "-c", "cat /proc/sys/kernel/random/boot_id"];

fn pods_in_vms_talk_over_the_pod_network(v: Version) {
    let ctd: Arc<Containerd> = shared_cri(v).expect("containerd with CRI");
    // This node has no hardware KVM: the handler's node config allows emulation.
    airlock_integration::vm::cri_node_config(&ctd, "tcg").expect("node config");
    rt().block_on(async {
        let mut cri = Cri::connect(&ctd).await.expect("connect");
        let before = vm_shims(&ctd);

        // Pod A: a server and a second container, both in the pod's one VM.
        let pc_a = cri.pod_config("vm-a", &[], NamespaceMode::Pod);
        let pod_a = cri
            .run_pod(&pc_a, VM_HANDLER)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log_tail(40)));
        let web = cri
            .start_container(&pod_a, &pc_a, cri.container_config("web", SERVER))
            .await
            .unwrap_or_else(|e| panic!("web: {e}\n{}", ctd.log_tail(40)));
        let side = cri
            .start_container(&pod_a, &pc_a, cri.container_config("side", IDLE))
            .await
            .unwrap_or_else(|e| panic!("side: {e}\n{}", ctd.log_tail(40)));
        assert_eq!(vm_shims(&ctd), before + 1, "one shim for the pod");
        let vmms = vm_processes_of(&pod_a);
        assert_eq!(vmms.len(), 2, "one QEMU and one virtiofsd: {vmms:?}");
        let boot_web = exec(&mut cri, &ctd, &web, BOOT_ID).await;
        let boot_side = exec(&mut cri, &ctd, &side, BOOT_ID).await;
        assert_eq!(
            boot_web, boot_side,
            "both containers run on the pod's one kernel"
        );

        // The pod's address is on the guest's NIC, and its containers share the network.
        let ip_a = pod_ip(&mut cri, &pod_a).await;
        assert!(ip_a.starts_with("10.88.0."), "pod ip {ip_a:?}");
        let addrs = exec(&mut cri, &ctd, &side, &["sh", "-c", "ip -o addr"]).await;
        assert!(addrs.contains(&format!("inet {ip_a}/24")), "{addrs}");
        let routes = exec(&mut cri, &ctd, &side, &["sh", "-c", "ip route"]).await;
        assert!(routes.contains("default via 10.88.0.1"), "{routes}");
        let local = exec(&mut cri, &ctd, &side, &["sh", "-c", "nc 127.0.0.1 8080"]).await;
        assert_eq!(local.trim(), "pod-a-says-hi");
        // CRI's bind mounts (files of the pod's sandbox directory on the host) reach the
        // container through the share.
        let files = exec(
            &mut cri,
            &ctd,
            &side,
            &[
                "sh",
                "-c",
                "cat /etc/hostname; grep -c localhost /etc/hosts; test -f /etc/resolv.conf && echo resolv",
            ],
        )
        .await;
        let lines: Vec<&str> = files.lines().collect();
        assert_eq!(lines.first(), Some(&"vm-a"), "{files}");
        assert!(lines.get(1).is_some_and(|n| *n != "0"), "{files}");
        assert_eq!(lines.get(2), Some(&"resolv"), "{files}");

        // Pod B, in a VM of its own, reaches pod A's address over the test bridge.
        let pc_b = cri.pod_config("vm-b", &[], NamespaceMode::Pod);
        let pod_b = cri
            .run_pod(&pc_b, VM_HANDLER)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox B: {e}\n{}", ctd.log_tail(40)));
        let client = cri
            .start_container(&pod_b, &pc_b, cri.container_config("client", IDLE))
            .await
            .unwrap_or_else(|e| panic!("client: {e}\n{}", ctd.log_tail(40)));
        let boot_b = exec(&mut cri, &ctd, &client, BOOT_ID).await;
        assert_ne!(boot_b, boot_web, "another pod, another VM");
        let ip_b = pod_ip(&mut cri, &pod_b).await;
        assert!(
            ip_b.starts_with("10.88.0.") && ip_b != ip_a,
            "{ip_a} {ip_b}"
        );
        let answer = exec(
            &mut cri,
            &ctd,
            &client,
            &["sh", "-c", &format!("nc -w 10 {ip_a} 8080")],
        )
        .await;
        assert_eq!(answer.trim(), "pod-a-says-hi");

        cri.teardown(&pod_b, std::slice::from_ref(&client))
            .await
            .expect("teardown B");
        cri.teardown(&pod_a, &[web, side])
            .await
            .expect("teardown A");
        wait_for("the pods' shims to exit", Duration::from_secs(30), || {
            vm_shims(&ctd) == before
        });
        for pod in [&pod_a, &pod_b] {
            wait_for("the pods' VMs to end", Duration::from_secs(10), || {
                vm_processes_of(pod).is_empty()
            });
        }
    });
}

/// One version at a time: each runs two VMs on a 2-core node.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn pods_in_vms_talk_over_the_pod_network_v1_6() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    pods_in_vms_talk_over_the_pod_network(Version::V1_6);
}

#[test]
fn pods_in_vms_talk_over_the_pod_network_v2_1() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    pods_in_vms_talk_over_the_pod_network(Version::V2_1);
}
