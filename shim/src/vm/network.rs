//! The pod's network for its VM, through `airlock-runtime`: `net-attach` makes the taps and
//! redirects in the pod's network namespace and hands the taps over; `net-detach` removes the
//! redirects after the VM. The rtnetlink work (`airlock-net`'s host side) runs in the runtime,
//! so the shim, resident once per pod, carries none of its code.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use airlock_contract::cli::Command;
use airlock_net::PodNetwork;
use tracing::warn;

use crate::error::{Error, Result};
use crate::process::runtime::Runtime;

/// An attached pod network: what the guest takes over, and a tap per interface for the VMM.
pub struct Attached {
    pub network: PodNetwork,
    pub taps: Vec<OwnedFd>,
    pub detach: Detach,
}

/// What removes the redirects.
pub struct Detach {
    runtime: Runtime,
    netns: PathBuf,
    redirected: Vec<u32>,
}

impl Detach {
    /// Removes the redirects (blocking).
    pub fn run(self) {
        if self.redirected.is_empty() {
            return;
        }
        let out = self
            .runtime
            .blocking_command(Command::NetDetach {
                netns: self.netns.clone(),
                index: self.redirected,
            })
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => warn!(
                "remove the redirects from the pod's network namespace: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => warn!("remove the redirects from the pod's network namespace: {e}"),
        }
    }
}

/// Attaches network namespace `netns` (blocking): `airlock-runtime net-attach`.
pub fn attach(runtime: &Runtime, netns: &Path) -> Result<Attached> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::io("make the network handoff socket", e))?;
    let mut cmd = runtime.blocking_command(Command::NetAttach {
        netns: netns.to_path_buf(),
    });
    cmd.stdout(Stdio::from(OwnedFd::from(theirs)));
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("run airlock-runtime net-attach", e))?;
    // Our copy of the child's end goes with `cmd`: the read below ends when the child does.
    drop(cmd);
    let handed = airlock_net::handoff::receive(ours.as_fd());
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("wait for airlock-runtime net-attach", e))?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match handed {
        Ok((a, taps)) if out.status.success() => Ok(Attached {
            network: a.network,
            taps,
            detach: Detach {
                runtime: runtime.clone(),
                netns: netns.to_path_buf(),
                redirected: a.redirected,
            },
        }),
        Ok(_) | Err(_) if !said.is_empty() => Err(Error::FailedPrecondition(format!(
            "the pod's network: {said}"
        ))),
        Ok(_) => Err(Error::FailedPrecondition(format!(
            "the pod's network: airlock-runtime net-attach ended with {}",
            out.status
        ))),
        Err(e) => Err(Error::FailedPrecondition(format!(
            "the pod's network: airlock-runtime net-attach handed nothing over: {e}"
        ))),
    }
}
