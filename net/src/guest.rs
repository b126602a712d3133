//! In the guest: the pod's addresses, MTU and routes on the NICs that carry its MACs.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::host::{list_links, set_up};
use crate::netlink::Netlink;
use crate::{mac_string, Cidr, Error, PodNetwork, Result};

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn add_address(nl: &mut Netlink, index: u32, cidr: &Cidr) -> Result<()> {
    let mut a = AddressMessage::default();
    a.header.family = family(&cidr.ip);
    a.header.prefix_len = cidr.prefix;
    a.header.index = index;
    match cidr.ip {
        IpAddr::V4(_) => {
            a.attributes.push(AddressAttribute::Local(cidr.ip));
            a.attributes.push(AddressAttribute::Address(cidr.ip));
        }
        IpAddr::V6(_) => {
            // The host already checked the address is unique on its link.
            a.header.flags = AddressHeaderFlags::Nodad;
            a.attributes.push(AddressAttribute::Address(cidr.ip));
        }
    }
    nl.create(
        RouteNetlinkMessage::NewAddress(a),
        &format!("add address {cidr}"),
    )
}

fn add_route(
    nl: &mut Netlink,
    index: u32,
    destination: Option<&Cidr>,
    gateway: Option<IpAddr>,
) -> Result<()> {
    let Some(fam) = destination
        .map(|d| family(&d.ip))
        .or(gateway.map(|g| family(&g)))
    else {
        return Ok(());
    };
    let mut r = RouteMessage::default();
    r.header.address_family = fam;
    r.header.table = RouteHeader::RT_TABLE_MAIN;
    r.header.protocol = RouteProtocol::Static;
    r.header.kind = RouteType::Unicast;
    r.header.scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some(d) = destination {
        r.header.destination_prefix_length = d.prefix;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(d.ip)));
    }
    if let Some(g) = gateway {
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    r.attributes.push(RouteAttribute::Oif(index));
    let what = match (destination, gateway) {
        (Some(d), Some(g)) => format!("add the route to {d} via {g}"),
        (Some(d), None) => format!("add the route to {d}"),
        (None, Some(g)) => format!("add the default route via {g}"),
        (None, None) => unreachable!(),
    };
    nl.create(RouteNetlinkMessage::NewRoute(r), &what)
}

/// Brings loopback up and gives each of the pod's interfaces, found by MAC, its MTU,
/// addresses and routes.
pub fn configure(net: &PodNetwork) -> Result<()> {
    let mut nl = Netlink::open()?;
    let links = list_links(&mut nl, "list the guest's links")?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        set_up(&mut nl, lo.index, None, "bring loopback up")?;
    }
    let mut indexes = Vec::new();
    for i in &net.interfaces {
        let index = links
            .iter()
            .find(|l| l.mac.as_ref() == Some(&i.mac))
            .map(|l| l.index)
            .ok_or_else(|| Error::NoNic(mac_string(&i.mac)))?;
        set_up(&mut nl, index, Some(i.mtu), &format!("bring up {}", i.name))?;
        for a in &i.addresses {
            add_address(&mut nl, index, a)?;
        }
        indexes.push(index);
    }
    for r in &net.routes {
        if let Some(index) = indexes.get(r.interface) {
            add_route(&mut nl, *index, r.destination.as_ref(), r.gateway)?;
        }
    }
    Ok(())
}
