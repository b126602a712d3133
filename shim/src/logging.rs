//! `tracing` for the shim: into the bundle's `log` FIFO when serving (containerd copies
//! it into its own log), to stderr for the short-lived `start`/`delete` actions.
//! The `containerd-shim` crate logs through `log`; those records are bridged in.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

fn level(debug: bool) -> LevelFilter {
    match std::env::var("AIRLOCK_LOG").ok().as_deref() {
        Some("trace") => LevelFilter::TRACE,
        Some("debug") => LevelFilter::DEBUG,
        Some("warn") => LevelFilter::WARN,
        Some("error") => LevelFilter::ERROR,
        _ if debug => LevelFilter::DEBUG,
        _ => LevelFilter::INFO,
    }
}

/// Serve mode: write to the `log` FIFO in the working directory (the bundle).
pub fn init_fifo(debug: bool) {
    let writer = OpenOptions::new().write(true).open("log");
    let builder = tracing_subscriber::fmt()
        .with_max_level(level(debug))
        .with_ansi(false)
        .with_target(false);
    let _ = match writer {
        Ok(f) => builder.with_writer(Mutex::new(f)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// `start` / `delete`: stderr, which containerd captures.
pub fn init_stderr(debug: bool) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level(debug))
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
