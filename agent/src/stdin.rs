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

enum Item {
    Data(Vec<u8>, Reply),
    /// The end of a terminal's input: its VEOF, twice after a partial line (the first only
    /// ends the line), as the process sandbox's CloseIO does.
    TerminalEnd(u8),
}

/// The writer of one process's stdin; dropping it closes the stdin once what was queued is
/// written.
pub struct Writer {
    tx: mpsc::Sender<Item>,
}

impl Writer {
    /// Writes into `stdin` (a pipe to the process, or its terminal's master).
    pub fn spawn(mut stdin: impl Write + Send + 'static) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Item>();
        std::thread::Builder::new().spawn(move || {
            let mut last = None;
            for item in rx {
                match item {
                    Item::Data(data, reply) => match stdin.write_all(&data) {
                        Ok(()) => {
                            last = data.last().copied().or(last);
                            reply(Response::Ok)
                        }
                        Err(e) => reply(Response::Error {
                            kind: ErrorKind::FailedPrecondition,
                            message: format!("the process's stdin: {e}"),
                        }),
                    },
                    Item::TerminalEnd(eof) => {
                        let partial = last.is_some_and(|b| b != b'\n' && b != b'\r' && b != eof);
                        let bytes = if partial { vec![eof, eof] } else { vec![eof] };
                        let _ = stdin.write_all(&bytes);
                    }
                }
            }
        })?;
        Ok(Writer { tx })
    }

    /// Ends a terminal's input with its end-of-input character `eof`, after what is queued.
    pub fn end_terminal(&self, eof: u8) {
        let _ = self.tx.send(Item::TerminalEnd(eof));
    }

    /// Queues `data`; `reply` is called once it is written.
    pub fn write(&self, data: Vec<u8>, reply: Reply) {
        if let Err(mpsc::SendError(Item::Data(_, reply))) = self.tx.send(Item::Data(data, reply)) {
            reply(Response::Error {
                kind: ErrorKind::FailedPrecondition,
                message: "the process's stdin is closed".into(),
            });
        }
    }
}
