//! CRI port-forward as `kubectl port-forward` uses it: PortForward returns a URL on
//! containerd's streaming server; the client opens it as a websocket with the
//! `v4.channel.k8s.io` protocol. Each forwarded port has two channels, data (`2n`) and errors
//! (`2n + 1`); every binary message starts with its channel's number, and each channel first
//! sends its port as two little-endian bytes.
//!
//! The harness's CRI containerd runs in a network namespace of its own (see
//! [`crate::containerd::Builder::cri`]), so the connection to its streaming server (on
//! 127.0.0.1 there) is made from a thread that enters that namespace.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// The websocket subprotocol of CRI's streaming server for port-forward.
const PROTOCOL: &str = "v4.channel.k8s.io";
const DATA: u8 = 0;
const ERROR: u8 = 1;

/// Connects to `host:port` from inside the network namespace of process `pid`.
fn connect_in_netns(pid: i32, host: String) -> Result<TcpStream> {
    std::thread::spawn(move || -> Result<TcpStream> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .with_context(|| format!("open the network namespace of {pid}"))?;
        // This thread alone moves; the socket keeps its namespace wherever it is used.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into containerd's network namespace")?;
        TcpStream::connect(&host).with_context(|| format!("connect to {host}"))
    })
    .join()
    .map_err(|_| anyhow!("the connecting thread panicked"))?
}

/// Sends `request` to the forwarded port behind `url` (the PortForward response of a request
/// for that one port) and returns what the pod's server answered, read until it closes the
/// connection. `netns_pid` is a process in the streaming server's network namespace.
pub fn exchange(netns_pid: i32, url: &str, port: u16, request: &[u8]) -> Result<Vec<u8>> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let authority = ws_url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| anyhow!("unexpected port-forward URL {url}"))?
        .to_owned();
    let stream = connect_in_netns(netns_pid, authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{ws_url}?port={port}").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", PROTOCOL.parse()?);
    let (mut ws, resp) =
        tungstenite::client(req, stream).map_err(|e| anyhow!("websocket upgrade of {url}: {e}"))?;
    let agreed = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(PROTOCOL) {
        bail!("the streaming server agreed to protocol {agreed:?}, not {PROTOCOL}");
    }
    let mut body = Vec::new();
    let mut errors = Vec::new();
    let mut first = [true, true];
    let mut sent = false;
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(anyhow!("port-forward stream: {e}")),
        };
        let data = match msg {
            Message::Binary(d) => d,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, rest)) = data.split_first() else {
            continue;
        };
        if channel > ERROR {
            bail!("message on channel {channel}: one port has channels 0 and 1");
        }
        let c = usize::from(channel);
        if first[c] {
            // Each channel opens with its port.
            first[c] = false;
            if rest != port.to_le_bytes() {
                bail!("channel {channel} opened with {rest:?}, not port {port}");
            }
            if !first[0] && !first[1] && !sent {
                let mut out = vec![DATA];
                out.extend_from_slice(request);
                ws.send(Message::Binary(out.into()))?;
                sent = true;
            }
            continue;
        }
        match channel {
            DATA => body.extend_from_slice(rest),
            _ => errors.extend_from_slice(rest),
        }
    }
    if !errors.is_empty() {
        bail!("port-forward error: {}", String::from_utf8_lossy(&errors));
    }
    Ok(body)
}
