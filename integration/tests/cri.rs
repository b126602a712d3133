//! Airlock through containerd's CRI plugin, the API the kubelet uses (`k8s-cri` client), on
//! containerd 1.6 and 2.1: pods with runtime handler `airlock`, their containers, exec, logs in
//! the CRI format, policy selection and refusal, host-network and bridge-network pods.
//!
//! containerd runs with CRI on in a network namespace of its own (the harness's `cri(true)`),
//! with a CNI bridge config; the busybox and pause images are imported into `k8s.io`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_integration::containerd::{Containerd, Version, CRI_NAMESPACE};
use airlock_integration::cri::{self, Cri};
use airlock_integration::portforward;
use airlock_integration::shared::shared_cri;
use k8s_cri::v1::*;

/// The CRI-enabled containerd of `v`; tests of one version take turns (they share `k8s.io`
/// and count its shims).
fn cri_containerd(v: Version) -> (Arc<Containerd>, std::sync::MutexGuard<'static, ()>) {
    static TURN_16: Mutex<()> = Mutex::new(());
    static TURN_21: Mutex<()> = Mutex::new(());
    let turn = match v {
        Version::V1_6 => &TURN_16,
        Version::V2_1 => &TURN_21,
    };
    let guard = turn.lock().unwrap_or_else(|p| p.into_inner());
    (shared_cri(v).expect("containerd with CRI"), guard)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(ctd: &Containerd) -> Cri {
    Cri::connect(ctd).await.expect("connect")
}

const LOOP: &[&str] = &[
    "sh",
    "-c",
    "echo hello; echo oops >&2; trap 'exit 0' TERM; while :; do sleep 0.1; done",
];

fn airlock_shims(ctd: &Containerd) -> usize {
    ctd.shims()
        .into_iter()
        .filter(|s| s.namespace == CRI_NAMESPACE && s.binary.contains("airlock"))
        .count()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const AIRLOCK: &str = "airlock";

/// The whole kubelet sequence for one pod with one container.
fn pod_lifecycle(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config("life", &[], NamespaceMode::Pod);
        let pod = cri
            .run_pod(&pc, AIRLOCK)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log_tail(30)));
        let cfg = cri.container_config("app", LOOP);
        let app = cri
            .start_container(&pod, &pc, cfg)
            .await
            .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", ctd.log_tail(30)));
        assert_eq!(
            cri.status(&app).await.expect("ContainerStatus").state,
            ContainerState::ContainerRunning as i32
        );
        assert_eq!(airlock_shims(&ctd), 1, "sandbox and app share one shim");

        // ExecSync runs under the container's policy: agent-strict has no capabilities.
        let r = cri
            .exec_sync(
                &app,
                &["sh", "-c", "grep CapEff /proc/self/status; echo exec-ok"],
            )
            .await
            .expect("ExecSync");
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.exit_code, 0, "{out}");
        assert!(out.contains("exec-ok"), "{out}");
        assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
        let r = cri
            .exec_sync(&app, &["sh", "-c", "exit 3"])
            .await
            .expect("ExecSync");
        assert_eq!(r.exit_code, 3);

        // Logs in the CRI format: "<RFC3339Nano> <stream> <P|F> <line>".
        let read_log = || std::fs::read_to_string(cri::log_file(&pc, "app")).unwrap_or_default();
        wait_for("container logs", Duration::from_secs(10), || {
            let l = read_log();
            cri::log_has_line(&l, "stdout", "hello") && cri::log_has_line(&l, "stderr", "oops")
        });
        let first = read_log();
        let ts = first.split_whitespace().next().unwrap_or_default();
        assert!(
            ts.contains('T') && ts.ends_with('Z'),
            "timestamp {ts:?} in {first:?}"
        );

        // The pod's network: its own namespace on the CNI bridge, with an address from it.
        let st = cri
            .client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let ip = st.network.map(|n| n.ip).unwrap_or_default();
        assert!(ip.starts_with("10.88.0."), "pod ip {ip:?}");
        let r = cri
            .exec_sync(&app, &["ls", "/sys/class/net"])
            .await
            .expect("ExecSync");
        let nics = String::from_utf8_lossy(&r.stdout).to_string();
        assert!(nics.contains("eth0") && nics.contains("lo"), "{nics}");

        cri.teardown(&pod, std::slice::from_ref(&app))
            .await
            .expect("teardown");
        wait_for("the pod's shim to exit", Duration::from_secs(10), || {
            airlock_shims(&ctd) == 0
        });
    });
}

/// A container with `tty: true` (kubectl run -t): its stdio is a terminal, stderr merged into
/// it, and the CRI log has its output as the stdout stream.
fn tty_container(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config("tty", &[], NamespaceMode::Pod);
        let pod = cri.run_pod(&pc, AIRLOCK).await.expect("RunPodSandbox");
        let mut cfg = cri.container_config(
            "app",
            &[
                "sh",
                "-c",
                "tty; echo oops >&2; trap 'exit 0' TERM; while :; do sleep 0.1; done",
            ],
        );
        cfg.tty = true;
        let app = cri
            .start_container(&pod, &pc, cfg)
            .await
            .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", ctd.log_tail(30)));
        wait_for(
            "terminal output in the log",
            Duration::from_secs(10),
            || {
                let l = std::fs::read_to_string(cri::log_file(&pc, "app")).unwrap_or_default();
                l.contains(" stdout F /dev/pts/") && cri::log_has_line(&l, "stdout", "oops")
            },
        );
        cri.teardown(&pod, std::slice::from_ref(&app))
            .await
            .expect("teardown");
    });
}

/// Two app containers and the sandbox: one shim; the policy annotation picks agent-default
/// for all of them.
fn two_containers_with_policy_annotation(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config(
            "two",
            &[("airlock.dev/policy", "agent-default")],
            NamespaceMode::Pod,
        );
        let pod = cri.run_pod(&pc, AIRLOCK).await.expect("RunPodSandbox");
        let mut ids = Vec::new();
        for name in ["one", "two"] {
            let cfg = cri.container_config(name, LOOP);
            ids.push(cri.start_container(&pod, &pc, cfg).await.expect("start"));
        }
        assert_eq!(airlock_shims(&ctd), 1, "one shim serves the whole pod");
        for id in &ids {
            let r = cri
                .exec_sync(id, &["sh", "-c", "grep CapEff /proc/self/status"])
                .await
                .expect("ExecSync");
            let out = String::from_utf8_lossy(&r.stdout).to_string();
            // agent-default keeps CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID.
            assert!(
                out.contains("CapEff:") && !out.contains("CapEff:\t0000000000000000"),
                "agent-default not applied: {out}"
            );
        }
        cri.teardown(&pod, &ids).await.expect("teardown");
    });
}

/// A pod under agent-strict (no capabilities): one container serves HTTP on port 80, and
/// another container of the pod fetches from it over the pod's loopback, and a port-forward
/// (as `kubectl port-forward` asks CRI for one) reaches it. The sandbox's network
/// namespace lets any port bind without CAP_NET_BIND_SERVICE.
fn port_80_in_a_pod(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config("web", &[], NamespaceMode::Pod);
        let pod = cri.run_pod(&pc, AIRLOCK).await.expect("RunPodSandbox");
        let server = cri.container_config(
            "server",
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/www && echo served-on-80 > /tmp/www/index.html && \
                 httpd -f -p 80 -h /tmp/www",
            ],
        );
        let server = cri
            .start_container(&pod, &pc, server)
            .await
            .expect("server");
        let client = cri.container_config("client", LOOP);
        let client = cri
            .start_container(&pod, &pc, client)
            .await
            .expect("client");
        let mut out = String::new();
        for _ in 0..50 {
            let r = cri
                .exec_sync(
                    &client,
                    &[
                        "sh",
                        "-c",
                        "wget -O /tmp/got http://127.0.0.1:80/index.html && cat /tmp/got",
                    ],
                )
                .await
                .expect("ExecSync");
            out = format!(
                "{}{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
            if r.exit_code == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(out.contains("served-on-80"), "fetch from port 80: {out}");
        // kubectl port-forward: CRI's streaming server connects to port 80 in the pod's
        // network namespace.
        let url = cri
            .client
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![80],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url;
        let netns_pid = ctd.pid();
        let got = tokio::task::spawn_blocking(move || {
            portforward::exchange(netns_pid, &url, 80, b"GET /index.html HTTP/1.0\r\n\r\n")
        })
        .await
        .unwrap()
        .expect("port-forward to port 80");
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.") && got.contains("served-on-80"),
            "through port-forward: {got}"
        );
        assert_eq!(
            cri.status(&server).await.expect("status").state,
            ContainerState::ContainerRunning as i32,
            "the server still serves"
        );
        cri.teardown(&pod, &[server, client])
            .await
            .expect("teardown");
    });
}

/// A container asking for a capability beyond its policy is refused, with a message naming
/// the field and the policy, and nothing of it keeps running.
fn more_than_policy_is_refused(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config("refuse", &[], NamespaceMode::Pod);
        let pod = cri.run_pod(&pc, AIRLOCK).await.expect("RunPodSandbox");
        let mut cfg = cri.container_config("greedy", LOOP);
        cfg.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = cri
            .start_container(&pod, &pc, cfg)
            .await
            .expect_err("SYS_ADMIN must be refused");
        let msg = err.message();
        assert!(
            msg.contains("process.capabilities")
                && msg.contains("agent-strict")
                && msg.contains("SYS_ADMIN"),
            "unclear refusal: {msg}"
        );
        cri.teardown(&pod, &[]).await.expect("teardown");
    });
}

/// agent-strict refuses a pod in the host's network namespace at RunPodSandbox, naming why.
fn host_network_pod_is_refused(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config("hostnet", &[], NamespaceMode::Node);
        let err = cri
            .run_pod(&pc, AIRLOCK)
            .await
            .expect_err("host network must be refused by agent-strict");
        let msg = err.message();
        assert!(
            msg.contains("host network namespace") && msg.contains("agent-strict"),
            "unclear refusal: {msg}"
        );
        wait_for("no shim left", Duration::from_secs(10), || {
            airlock_shims(&ctd) == 0
        });
    });
}

/// `hostUsers: false` (containerd >= 2.0): the kubelet's mapping reaches the pod's containers,
/// which run in the pod's user namespace, and the policy keeps it (it maps no host id 0).
fn host_users_false(v: Version) {
    let (_ctd, _turn) = cri_containerd(v);
    // Above the shim's own ranges (2^30 .. 2^31), as a kubelet given its own subuid range would.
    let host: u32 = (1 << 31) + 7 * 65536;
    rt().block_on(async {
        let mut cri = connect(&_ctd).await;
        let mut pc = cri.pod_config("userns", &[], NamespaceMode::Pod);
        let map = IdMapping {
            host_id: host,
            container_id: 0,
            length: 65536,
        };
        let userns = UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: vec![map],
            gids: vec![map],
        };
        let ns_options = pc
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap();
        ns_options.userns_options = Some(userns);
        let ns_options = ns_options.clone();
        let pod = cri.run_pod(&pc, AIRLOCK).await.expect("RunPodSandbox");
        let mut cfg = cri.container_config("app", LOOP);
        // The kubelet repeats the pod's namespace options for each container.
        cfg.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
            namespace_options: Some(ns_options),
            ..Default::default()
        });
        let app = cri.start_container(&pod, &pc, cfg).await.expect("start");
        let r = cri
            .exec_sync(&app, &["cat", "/proc/self/uid_map"])
            .await
            .expect("ExecSync");
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f, ["0", &host.to_string(), "65536"], "{out}");
        // The rootfs (idmapped layers) and containerd's idmapped bind mounts belong to root.
        let r = cri
            .exec_sync(
                &app,
                &["stat", "-c", "%u", "/bin/busybox", "/etc/hosts", "/"],
            )
            .await
            .expect("ExecSync");
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["0", "0", "0"],
            "{out}"
        );
        cri.teardown(&pod, std::slice::from_ref(&app))
            .await
            .expect("teardown");
    });
}

/// A pod that asks for nothing (no `hostUsers: false`) still runs in a user namespace of its
/// own under agent-strict: the sandbox gets the pod's host range (joining CNI's network
/// namespace first), its app containers join the sandbox's user namespace, and the network
/// namespace, made outside it, still works: sysfs shows the pod's interfaces and the pod's
/// `net.*` sysctls are set (by the shim) where containerd asks for them.
fn pod_user_namespace_without_host_users(v: Version) {
    let (ctd, _turn) = cri_containerd(v);
    rt().block_on(async {
        let mut cri = connect(&ctd).await;
        let pc = cri.pod_config("podns", &[], NamespaceMode::Pod);
        let pod = cri
            .run_pod(&pc, AIRLOCK)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log_tail(30)));
        let mut ids = Vec::new();
        for name in ["one", "two"] {
            let cfg = cri.container_config(name, LOOP);
            ids.push(cri.start_container(&pod, &pc, cfg).await.expect("start"));
        }
        let mut userns = Vec::new();
        for id in &ids {
            let r = cri
                .exec_sync(
                    id,
                    &[
                        "sh",
                        "-c",
                        "cat /proc/self/uid_map; readlink /proc/self/ns/user",
                    ],
                )
                .await
                .expect("ExecSync");
            let out = String::from_utf8_lossy(&r.stdout).to_string();
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 2, "{out}");
            let f: Vec<u64> = lines[0]
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert_eq!((f[0], f[2]), (0, 65536), "{out}");
            assert!(f[1] >= 1 << 30, "root is an unprivileged host range: {out}");
            userns.push(lines[1].to_string());
        }
        assert_eq!(userns[0], userns[1], "a pod shares one user namespace");
        // ... the sandbox's own (its pid from the verbose status).
        let st = cri
            .client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value =
            serde_json::from_str(st.info.get("info").expect("verbose info")).unwrap();
        let pid = info["pid"].as_u64().expect("sandbox pid");
        let sandbox_userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        assert_eq!(sandbox_userns.to_string_lossy(), userns[0]);

        // sysfs is the pod network's: its eth0 has the MAC that netlink reports in the pod.
        let r = cri
            .exec_sync(
                &ids[0],
                &[
                    "sh",
                    "-c",
                    "ls /sys/class/net | tr '\\n' ' '; echo; cat /sys/class/net/eth0/address; \
                     ip link show eth0 | sed -n 's/.*ether \\([^ ]*\\).*/\\1/p'; \
                     touch /sys/x 2>/dev/null && echo writable",
                ],
            )
            .await
            .expect("ExecSync");
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let mut nics: Vec<&str> = lines[0].split_whitespace().collect();
        nics.sort();
        assert_eq!(nics, ["eth0", "lo"], "{out}");
        assert_eq!(lines[1], lines[2], "sysfs and netlink disagree: {out}");
        // containerd >= 2.0 asks for unprivileged ports from 0 in every pod.
        if v == Version::V2_1 {
            let r = cri
                .exec_sync(
                    &ids[0],
                    &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                )
                .await
                .expect("ExecSync");
            assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "0");
        }
        cri.teardown(&pod, &ids).await.expect("teardown");
        wait_for("the pod's shim to exit", Duration::from_secs(10), || {
            airlock_shims(&ctd) == 0
        });
    });
}

macro_rules! per_version {
    ($($m:ident => $v:expr),*) => {$(
        mod $m {
            use super::*;
            fn v() -> Version { $v }
            #[test] fn pod_lifecycle() { super::pod_lifecycle(v()) }
            #[test] fn two_containers_with_policy_annotation() { super::two_containers_with_policy_annotation(v()) }
            #[test] fn more_than_policy_is_refused() { super::more_than_policy_is_refused(v()) }
            #[test] fn host_network_pod_is_refused() { super::host_network_pod_is_refused(v()) }
            #[test] fn pod_user_namespace_without_host_users() { super::pod_user_namespace_without_host_users(v()) }
            #[test] fn tty_container() { super::tty_container(v()) }
            #[test] fn port_80_in_a_pod() { super::port_80_in_a_pod(v()) }
        }
    )*};
}

per_version!(cri_v1_6 => Version::V1_6, cri_v2_1 => Version::V2_1);

/// containerd 1.6's CRI has no user namespace support.
#[test]
fn cri_v2_1_host_users_false() {
    host_users_false(Version::V2_1)
}
