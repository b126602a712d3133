//! A synchronous rtnetlink socket: one request at a time, each acknowledged or dumped.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{Error, Result};

pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn failed(what: &str, source: std::io::Error) -> Error {
    Error::Netlink {
        what: what.to_string(),
        source,
    }
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| failed("open a socket", e))?;
        socket.bind_auto().map_err(|e| failed("bind a socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| failed("connect a socket", e))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<u32> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0; packet.header.length as usize];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(|e| failed(what, e))?;
        Ok(self.seq)
    }

    /// Reads the answers to request `seq` until its end (an ack, an error or a dump's end).
    fn answers(&mut self, seq: u32, what: &str) -> Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| failed(what, e))?;
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| failed(what, std::io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(failed(what, std::io::Error::other("empty netlink message")));
                }
                at += len;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => {
                                Err(failed(what, std::io::Error::from_raw_os_error(-code.get())))
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Asks for every object of a kind (`GetLink`, `GetAddress`, `GetRoute`).
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP, what)?;
        self.answers(seq, what)
    }

    /// Makes something new (`NewAddress`, `NewRoute`, `NewQueueDiscipline`, ...).
    pub fn create(&mut self, msg: RouteNetlinkMessage, what: &str) -> Result<()> {
        let seq = self.send(msg, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, what)?;
        self.answers(seq, what).map(|_| ())
    }

    /// Changes something that exists (`SetLink`).
    pub fn change(&mut self, msg: RouteNetlinkMessage, what: &str) -> Result<()> {
        let seq = self.send(msg, NLM_F_ACK, what)?;
        self.answers(seq, what).map(|_| ())
    }
}
