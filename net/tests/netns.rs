//! Both sides against real network namespaces (made with `ip netns`, removed at the end):
//! a CNI-like namespace with a veth eth0 (as CNI's bridge plugin makes), its address and default route; `attach` reads
//! them and adds the tap and both redirects; `configure` gives them to a NIC found by MAC.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use airlock_net::{guest, host, Cidr, PodNetwork};

/// A network namespace that `ip netns del` removes when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("airlock-net-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns(name)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend(args);
        ip(&all)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(o.status.success(), "ip {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tc(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["-n", ns.0.as_str()];
    all.extend(args);
    let o = Command::new("tc")
        .args(&all)
        .output()
        .expect("tc (iproute2)");
    assert!(o.status.success(), "tc {all:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const MAC: &str = "0a:58:0a:58:00:07";

#[test]
fn attach_reads_the_pods_interface_and_redirects_it_to_a_tap() {
    let ns = Netns::new("pod");
    ns.ip(&[
        "link", "add", "eth0", "address", MAC, "mtu", "1400", "type", "veth", "peer", "veth-br",
    ]);
    ns.ip(&["addr", "add", "10.88.0.7/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["route", "add", "default", "via", "10.88.0.1"]);

    let attached = host::attach(Path::new(&ns.path())).expect("attach");
    let net = &attached.network;
    assert_eq!(net.interfaces.len(), 1, "{net:?}");
    let eth0 = &net.interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!(airlock_net::mac_string(&eth0.mac), MAC);
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(
        eth0.addresses,
        [Cidr {
            ip: "10.88.0.7".parse().unwrap(),
            prefix: 24
        }]
    );
    // The subnet's route is the kernel's (it comes back with the address); the default stays.
    assert_eq!(net.routes.len(), 1, "{net:?}");
    assert_eq!(net.routes[0].destination, None);
    assert_eq!(net.routes[0].gateway, Some("10.88.0.1".parse().unwrap()));
    assert_eq!(attached.taps.len(), 1);
    assert!(attached.taps[0].as_raw_fd() > 2);

    let links = ns.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("al0tap") && links.contains("mtu 1400"),
        "{links}"
    );
    for dev in ["eth0", "al0tap"] {
        let f = tc(&ns, &["filter", "show", "dev", dev, "ingress"]);
        let other = if dev == "eth0" { "al0tap" } else { "eth0" };
        assert!(
            f.contains("u32") && f.contains(&format!("Redirect to device {other}")),
            "{dev}: {f}"
        );
    }
    // The tap is not persistent: it goes with its last file descriptor; detaching removes
    // the redirect from eth0, so the namespace can be attached again.
    let host::Attached {
        taps, redirected, ..
    } = attached;
    drop(taps);
    let links = ns.ip(&["-o", "link", "show"]);
    assert!(!links.contains("al0tap"), "{links}");
    host::detach(Path::new(&ns.path()), &redirected).expect("detach");
    let f = tc(&ns, &["filter", "show", "dev", "eth0", "ingress"]);
    assert!(!f.contains("u32"), "{f}");
    let again = host::attach(Path::new(&ns.path())).expect("attach again");
    assert_eq!(again.taps.len(), 1);
    // A namespace whose interface is gone by then (CNI's teardown) detaches without error.
    ns.ip(&["link", "del", "eth0"]);
    host::detach(Path::new(&ns.path()), &again.redirected).expect("detach after the veth went");
    host::detach(Path::new("/run/netns/airlock-no-such-netns"), &[3]).expect("a namespace gone");
}

#[test]
fn the_nodes_own_namespace_is_never_attached() {
    let e = host::attach(Path::new("/proc/self/ns/net"))
        .err()
        .expect("the node's namespace is refused");
    assert!(
        e.to_string().contains("node's own network namespace"),
        "{e}"
    );
    // init's: refused as the node's own, or not even opened where this process may not.
    assert!(host::attach(Path::new("/proc/1/ns/net")).is_err());
}

#[test]
fn a_link_route_to_the_gateway_comes_before_the_default_route() {
    // Calico's and Cilium's shape: a /32 address, the gateway reached by a link route.
    let pod = Netns::new("p32");
    pod.ip(&[
        "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "veth-br",
    ]);
    pod.ip(&["addr", "add", "10.244.1.5/32", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    let net = host::attach(Path::new(&pod.path()))
        .expect("attach")
        .network;
    assert_eq!(net.routes.len(), 2, "{net:?}");
    assert_eq!(net.routes[0].gateway, None, "{net:?}");
    let vm = Netns::new("g32");
    vm.ip(&[
        "link", "add", "enp0", "address", MAC, "type", "veth", "peer", "other",
    ]);
    configure_in(&vm, net).expect("configure");
    let routes = vm.ip(&["route"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev enp0"),
        "{routes}"
    );
}

#[test]
fn a_namespace_with_only_loopback_gives_no_interface() {
    let ns = Netns::new("lo");
    let attached = host::attach(Path::new(&ns.path())).expect("attach");
    assert_eq!(attached.network, PodNetwork::default());
    assert!(attached.taps.is_empty());
}

#[test]
fn a_missing_namespace_is_named_in_the_error() {
    let e = host::attach(Path::new("/run/netns/airlock-no-such-netns"))
        .err()
        .expect("no namespace");
    assert!(e.to_string().contains("airlock-no-such-netns"), "{e}");
}

/// [`guest::configure`] on a thread in `ns`, as the agent does in the guest's namespace.
fn configure_in(ns: &Netns, net: PodNetwork) -> airlock_net::Result<()> {
    let path = ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: setns on this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        guest::configure(&net)
    })
    .join()
    .unwrap()
}

#[test]
fn configure_gives_the_pods_addresses_and_routes_to_the_nic_with_its_mac() {
    let pod = Netns::new("src");
    pod.ip(&[
        "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "veth-br",
    ]);
    pod.ip(&["addr", "add", "10.88.0.9/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.88.0.1"]);
    pod.ip(&["route", "add", "192.168.7.0/24", "via", "10.88.0.254"]);
    let net = host::attach(Path::new(&pod.path()))
        .expect("attach")
        .network;

    let vm = Netns::new("guest");
    vm.ip(&[
        "link", "add", "enp0", "address", MAC, "type", "veth", "peer", "other",
    ]);
    configure_in(&vm, net.clone()).expect("configure");
    let addr = vm.ip(&["-o", "addr", "show", "dev", "enp0"]);
    assert!(addr.contains("10.88.0.9/24"), "{addr}");
    let lo = vm.ip(&["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    let routes = vm.ip(&["route"]);
    assert!(
        routes.contains("default via 10.88.0.1 dev enp0"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.7.0/24 via 10.88.0.254 dev enp0"),
        "{routes}"
    );

    let other = PodNetwork {
        interfaces: vec![airlock_net::Interface {
            mac: [2, 0, 0, 0, 0, 1],
            ..net.interfaces[0].clone()
        }],
        routes: vec![],
    };
    let e = configure_in(&vm, other).expect_err("no such NIC");
    assert!(e.to_string().contains("02:00:00:00:00:01"), "{e}");
}
