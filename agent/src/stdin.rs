//! A process's stdin in the guest: the host's [`Request::Input`] chunks, written in order by a
//! thread of the process's own, so a process that does not read its stdin holds up only its
//! own input (each chunk is answered once it is written), never the agent's other calls.
//!
//! [`Request::Input`]: crate::protocol::Request::Input

use std::io::Write;
use std::sync::mpsc;

use airlock_contract::ErrorKind;

use crate::protocol::Response;

/// Called with the answer to one chunk, once it is written (or cannot be).
pub type Reply = Box<dyn FnOnce(Response) + Send>;

/// The writer of one process's stdin; dropping it closes the stdin once what was queued is
/// written.
pub struct Writer {
    tx: mpsc::Sender<(Vec<u8>, Reply)>,
}

impl Writer {
    /// Writes into `stdin` (a pipe to the process, or its terminal's master).
    pub fn spawn(mut stdin: impl Write + Send + 'static) -> Writer {
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Reply)>();
        std::thread::spawn(move || {
            for (data, reply) in rx {
                match stdin.write_all(&data) {
                    Ok(()) => reply(Response::Ok),
                    Err(e) => reply(Response::Error {
                        kind: ErrorKind::FailedPrecondition,
                        message: format!("the process's stdin: {e}"),
                    }),
                }
            }
        });
        Writer { tx }
    }

    /// Queues `data`; `reply` is called once it is written.
    pub fn write(&self, data: Vec<u8>, reply: Reply) {
        if let Err(mpsc::SendError((_, reply))) = self.tx.send((data, reply)) {
            reply(Response::Error {
                kind: ErrorKind::FailedPrecondition,
                message: "the process's stdin is closed".into(),
            });
        }
    }
}
