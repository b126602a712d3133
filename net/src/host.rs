//! In the pod's network namespace: its interfaces, a tap beside each, tc redirects between.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::Netlink;
use crate::{Cidr, Error, Interface, PodNetwork, Result, Route};

/// The pod's network as the guest must take it over, a tap per interface for the VMM (each
/// the `fd` of a `-netdev tap`, in the order of `network.interfaces`), and the interfaces
/// (indexes in the namespace) whose redirects [`detach`] removes.
pub struct Attached {
    pub network: PodNetwork,
    pub taps: Vec<OwnedFd>,
    pub redirected: Vec<u32>,
}

/// Removes the ingress qdiscs (and so the redirects) that [`attach`] added to interfaces
/// `indexes` of namespace `netns`; the taps go by themselves with their last descriptor. A
/// namespace or interface already gone (CNI's teardown) leaves nothing to remove.
pub fn detach(netns: &Path, indexes: &[u32]) -> Result<()> {
    let path = netns.display().to_string();
    let ns = match File::open(netns) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::Namespace { path, source }),
    };
    if indexes.is_empty() || is_node_namespace(&ns) {
        return Ok(());
    }
    let indexes = indexes.to_vec();
    in_namespace(ns, path, move || {
        let mut nl = Netlink::open()?;
        remove_ingress(&mut nl, &indexes)
    })
}

fn remove_ingress(nl: &mut Netlink, indexes: &[u32]) -> Result<()> {
    let mut first_error = None;
    for index in indexes {
        let mut qdisc = TcMessage::with_index(*index as i32);
        qdisc.header.handle = INGRESS_HANDLE;
        qdisc.header.parent = TcHandle::INGRESS;
        match nl.change(
            RouteNetlinkMessage::DelQueueDiscipline(qdisc),
            "remove the ingress redirect",
        ) {
            // The interface went first (CNI's teardown deletes the pod's veth).
            Err(Error::Netlink { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
            Ok(()) => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether `ns` (an open namespace file) is the node's own network namespace: the one of
/// init or of this process.
fn is_node_namespace(ns: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = ns.metadata() else {
        return true;
    };
    ["/proc/1/ns/net", "/proc/self/ns/net"].iter().any(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    })
}

/// Runs `f` on a thread of its own that entered `ns` (a thread's network namespace is its
/// own; the thread ends with `f`).
fn in_namespace<T: Send + 'static>(
    ns: File,
    path: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::Builder::new()
        .name("pod-netns".into())
        .spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Namespace {
                    path,
                    source: std::io::Error::last_os_error(),
                });
            }
            f()
        })
        .map_err(Error::Thread)?
        .join()
        .unwrap_or_else(|_| Err(Error::Thread(std::io::Error::other("it panicked"))))
}

/// Reads the interfaces of network namespace `netns` and makes their taps and redirects.
/// A namespace with nothing but loopback gives an empty [`Attached`]. The node's own network
/// namespace is refused, whatever the caller's policy: its interfaces would be redirected
/// into the VM. The namespace is opened once and checked and entered through that one file.
pub fn attach(netns: &Path) -> Result<Attached> {
    let path = netns.display().to_string();
    let ns = File::open(netns).map_err(|source| Error::Namespace {
        path: path.clone(),
        source,
    })?;
    if is_node_namespace(&ns) {
        return Err(Error::NodeNamespace(path));
    }
    let (network, taps, redirected) = in_namespace(ns, path, attach_here)?;
    Ok(Attached {
        network,
        taps,
        redirected,
    })
}

/// A link of the namespace that CNI set up: Ethernet, not loopback, not one of our taps.
struct Link {
    index: u32,
    interface: Interface,
}

/// What the rest needs of a link.
pub(crate) struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub ether: bool,
}

pub(crate) fn list_links(nl: &mut Netlink, what: &str) -> Result<Vec<LinkInfo>> {
    let all = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), what)?;
    Ok(all
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .map(|l| {
            let mut info = LinkInfo {
                index: l.header.index,
                name: String::new(),
                mac: None,
                mtu: 1500,
                ether: l.header.link_layer_type == LinkLayerType::Ether,
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => info.name = n.clone(),
                    LinkAttribute::Address(a) if a.len() == 6 => {
                        info.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
                    }
                    LinkAttribute::Mtu(m) => info.mtu = *m,
                    _ => {}
                }
            }
            info
        })
        .collect())
}

fn links(nl: &mut Netlink) -> Result<Vec<Link>> {
    Ok(list_links(nl, "list the pod's interfaces")?
        .into_iter()
        .filter(|l| l.ether && !is_our_tap(&l.name))
        .filter_map(|l| {
            Some(Link {
                index: l.index,
                interface: Interface {
                    mac: l.mac?,
                    name: l.name,
                    mtu: l.mtu,
                    addresses: Vec::new(),
                },
            })
        })
        .collect())
}

fn addresses(nl: &mut Netlink, links: &mut [Link]) -> Result<()> {
    let all = nl.dump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        "list the pod's addresses",
    )?;
    for msg in all {
        let RouteNetlinkMessage::NewAddress(a) = msg else {
            continue;
        };
        // Link-local addresses are the guest kernel's own to make.
        if a.header.scope != AddressScope::Universe {
            continue;
        }
        let Some(link) = links.iter_mut().find(|l| l.index == a.header.index) else {
            continue;
        };
        if let Some(ip) = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        }) {
            link.interface.addresses.push(Cidr {
                ip,
                prefix: a.header.prefix_len,
            });
        }
    }
    Ok(())
}

fn ip_of(a: &RouteAddress) -> Option<std::net::IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

fn routes(nl: &mut Netlink, links: &[Link]) -> Result<Vec<Route>> {
    let all = nl.dump(
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        "list the pod's routes",
    )?;
    let mut out = Vec::new();
    for msg in all {
        let RouteNetlinkMessage::NewRoute(r) = msg else {
            continue;
        };
        // The routes the kernel made for an address come back by themselves in the guest.
        if r.header.table != RouteHeader::RT_TABLE_MAIN
            || r.header.kind != RouteType::Unicast
            || r.header.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let mut oif = None;
        let mut gateway = None;
        let mut destination = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(g) => gateway = ip_of(g),
                RouteAttribute::Destination(d) => {
                    destination = ip_of(d).map(|ip| Cidr {
                        ip,
                        prefix: r.header.destination_prefix_length,
                    })
                }
                _ => {}
            }
        }
        let Some(interface) = oif.and_then(|i| links.iter().position(|l| l.index == i)) else {
            continue;
        };
        out.push(Route {
            destination,
            gateway,
            interface,
        });
    }
    // Routes on the link first: a gateway must be reachable when its route is added (a
    // /32 pod address with a link route to its gateway, as Calico and Cilium give).
    out.sort_by_key(|r| r.gateway.is_some());
    Ok(out)
}

/// Taps are named `alNtap`: short of IFNAMSIZ, and told apart from CNI's interfaces.
const TAP_PREFIX: &str = "al";

fn is_our_tap(name: &str) -> bool {
    name.strip_prefix(TAP_PREFIX)
        .and_then(|n| n.strip_suffix("tap"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// A tap named `name` in this thread's namespace; it lives as long as its file descriptors.
fn make_tap(name: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated path; the fd is owned from here on.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: the name, then the flags (a short), padded to 40 bytes.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which ifr is the size of.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn index_of(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Sets link `index`'s MTU and brings it up.
pub(crate) fn set_up(nl: &mut Netlink, index: u32, mtu: Option<u32>, what: &str) -> Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    if let Some(mtu) = mtu {
        link.attributes.push(LinkAttribute::Mtu(mtu));
    }
    nl.change(RouteNetlinkMessage::SetLink(link), what)
}

/// `tc qdisc add dev FROM ingress; tc filter add dev FROM parent ffff: protocol all u32
/// match u8 0 0 action mirred egress redirect dev TO`.
fn redirect(nl: &mut Netlink, from: u32, to: u32, what: &str) -> Result<()> {
    let mut qdisc = TcMessage::with_index(from as i32);
    qdisc.header.handle = INGRESS_HANDLE;
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
    nl.create(RouteNetlinkMessage::NewQueueDiscipline(qdisc), what)?;

    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let mut filter = TcMessage::with_index(from as i32);
    filter.header.parent = INGRESS_HANDLE;
    // Priority chosen by the kernel; every protocol (ETH_P_ALL, in network byte order).
    filter.header.info = u32::from((libc::ETH_P_ALL as u16).to_be());
    // u32 with one key that matches every frame (mask 0): kernels built without the
    // matchall classifier have u32.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    filter.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    nl.create(RouteNetlinkMessage::NewTrafficFilter(filter), what)
}

type Made = (PodNetwork, Vec<OwnedFd>, Vec<u32>);

fn attach_here() -> Result<Made> {
    let mut nl = Netlink::open()?;
    let mut links = links(&mut nl)?;
    addresses(&mut nl, &mut links)?;
    links.retain(|l| !l.interface.addresses.is_empty());
    let routes = routes(&mut nl, &links)?;
    let mut taps = Vec::new();
    // The interfaces given an ingress qdisc: undone if a later step fails.
    let mut redirected = Vec::new();
    let made = (|| {
        for (i, link) in links.iter().enumerate() {
            let name = format!("{TAP_PREFIX}{i}tap");
            let tap = make_tap(&name).map_err(|source| Error::Tap {
                interface: link.interface.name.clone(),
                source,
            })?;
            let tap_index = index_of(&name).map_err(|source| Error::Tap {
                interface: link.interface.name.clone(),
                source,
            })?;
            taps.push(tap);
            set_up(
                &mut nl,
                tap_index,
                Some(link.interface.mtu),
                "bring the tap up",
            )?;
            let what = format!(
                "redirect {} to its tap (does it have an ingress qdisc already?)",
                link.interface.name
            );
            redirect(&mut nl, link.index, tap_index, &what)?;
            redirected.push(link.index);
            let what = format!("redirect the tap to {}", link.interface.name);
            redirect(&mut nl, tap_index, link.index, &what)?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        let _ = remove_ingress(&mut nl, &redirected);
        return Err(e);
    }
    Ok((
        PodNetwork {
            interfaces: links.into_iter().map(|l| l.interface).collect(),
            routes,
        },
        taps,
        redirected,
    ))
}
