//! The pod's network in the microVM mode, as Kata Containers' `tcfilter` model has it.
//!
//! CNI gives the pod a network namespace with one interface (a veth on a bridge, usually
//! `eth0`) that holds the pod's address. On the host side ([`host::attach`]) the shim makes a
//! tap beside each such interface and joins the two with tc `mirred` redirects, ingress to
//! egress both ways: every frame the interface receives leaves through the tap to the VM, and
//! every frame the VM sends leaves through the interface. The VMM gets the tap's file
//! descriptor (the tap is not persistent, so it goes when the VMM does). The guest's NIC
//! takes the interface's MAC address, and on the guest side ([`guest::configure`]) the agent
//! gives it the interface's addresses, MTU and routes, so the pod's address answers from
//! inside the VM and nothing in the namespace changes.
//!
//! | module | job |
//! | --- | --- |
//! | `netlink.rs` | a synchronous rtnetlink socket: requests acknowledged, dumps collected |
//! | `host.rs` | in the pod's namespace: read its interfaces, make the taps, add the redirects |
//! | `guest.rs` | in the guest: find each NIC by MAC, set its MTU and addresses, bring it up, add the routes |
//! | `handoff.rs` | `airlock-runtime net-attach` to the shim: the attachment and the taps over a unix socket |

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod guest;
pub mod handoff;
pub mod host;
mod netlink;

/// An address with its prefix length (`10.88.0.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// One interface of the pod, as the guest's NIC takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Its name in the pod's namespace (`eth0`), for logs.
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<Cidr>,
}

/// A route through one of the pod's interfaces (by its index in [`PodNetwork::interfaces`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// None for the default route.
    pub destination: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    pub interface: usize,
}

/// What the guest must look like for the pod's network to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
}

/// The MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open the pod's network namespace {path}: {source}; the pod's sandbox may be gone"
    )]
    Namespace {
        path: String,
        source: std::io::Error,
    },
    #[error("rtnetlink: {what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "cannot make a tap for {interface} (/dev/net/tun; is the tun module loaded?): {source}"
    )]
    Tap {
        interface: String,
        source: std::io::Error,
    },
    #[error(
        "{0} is the node's own network namespace: a VM never takes over the node's network \
         (give the pod a network namespace of its own)"
    )]
    NodeNamespace(String),
    #[error("the guest has no NIC with MAC {0}: was the VM booted with the pod's network?")]
    NoNic(String),
    #[error("cannot start the thread that enters the pod's network namespace: {0}")]
    Thread(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
