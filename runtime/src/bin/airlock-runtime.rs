//! `airlock-runtime`: a runc-like CLI over the process backend. The shim executes it for
//! every container operation; it is single-threaded on purpose (libcontainer forks).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airlock_contract::cli::{Command, Invocation, LogFormat};
use airlock_runtime::{parse_signal, CreateOptions, ProcessRuntime};
use airlock_state::zygote;
use anyhow::Context;
use clap::Parser;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

/// The command line, defined once for the shim that writes it and this parser
/// (`airlock_contract::cli`).
type Cli = Invocation;

/// `AIRLOCK_LOG` (directives such as `debug` or `off,airlock_runtime=warn`), else `default`.
/// Target/level directives only (`Targets`, not `EnvFilter`, whose regex engine would make up
/// a tenth of this binary, executed three times per container).
fn filter(default: &str) -> Targets {
    std::env::var("AIRLOCK_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().expect("valid default log filter"))
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let (writer, filter, spans) = match &cli.log {
        // stderr is also the container's stderr (inherited by the init): keep it quiet.
        // Only our own warnings, never libcontainer's chatter from the forked processes;
        // AIRLOCK_LOG can widen it for debugging.
        None => (
            BoxMakeWriter::new(std::io::stderr),
            filter("off,airlock_runtime=warn"),
            FmtSpan::NONE,
        ),
        Some(path) => {
            // O_APPEND: the container's intermediate and init processes inherit the subscriber
            // and write to the same file; each event is one write.
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            (
                BoxMakeWriter::new(Arc::new(file)),
                filter(match (cli.log_level, cli.debug) {
                    (Some(level), _) => level.name(),
                    (None, true) => "debug",
                    (None, false) => "info",
                }),
                FmtSpan::CLOSE,
            )
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_span_events(spans);
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .init(),
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = ProcessRuntime::new(&cli.root);
    match cli.command {
        Command::Create {
            bundle,
            pid_file,
            seccomp,
            idmap_rootfs,
            rootfs_overlay,
            console_socket,
            id,
        } => {
            rt.create(CreateOptions {
                id,
                bundle,
                pid_file,
                executor: None,
                seccomp,
                idmap_rootfs,
                rootfs_overlay,
                console_socket,
            })?;
        }
        Command::Start { id } => rt.start(&id)?,
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(&signal)?;
            rt.kill(&id, sig, all)?;
        }
        Command::Delete { force, id } => rt.delete(&id, force)?,
        Command::State { id } => {
            let state = rt.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        Command::Pause { id } => rt.pause(&id)?,
        Command::Resume { id } => rt.resume(&id)?,
        Command::Update { resources, id } => {
            let raw = match resources.as_deref() {
                Some(p) if p != std::path::Path::new("-") => std::fs::read(p)
                    .with_context(|| format!("cannot read resources file {}", p.display()))?,
                _ => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("cannot read resources from stdin")?;
                    buf
                }
            };
            let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&raw)
                .context("resources are not an OCI LinuxResources JSON object")?;
            rt.update(&id, &res)?;
        }
        Command::NetAttach { netns } => {
            let a = airlock_net::host::attach(&netns)?;
            let attachment = airlock_net::handoff::Attachment {
                network: a.network,
                redirected: a.redirected,
            };
            // SAFETY: fd 1 is this process's stdout, open for its lifetime.
            let out = unsafe { BorrowedFd::borrow_raw(1) };
            airlock_net::handoff::send(out, &attachment, &a.taps)
                .context("hand the pod's network over (stdout must be a unix socket)")?;
        }
        Command::NetDetach { netns, index } => airlock_net::host::detach(&netns, &index)?,
        Command::Exec {
            process,
            pid_file,
            console_socket,
            id,
        } => {
            rt.exec(
                &id,
                &process,
                pid_file.as_deref(),
                console_socket.as_deref(),
                None,
            )?;
        }
    }
    Ok(())
}

/// Every path argument, in the order given on the command line's grammar (`-` for update's
/// stdin is not a path).
fn path_args(cli: &mut Cli) -> Vec<&mut PathBuf> {
    let mut paths: Vec<&mut PathBuf> = vec![&mut cli.root];
    paths.extend(cli.log.iter_mut());
    match &mut cli.command {
        Command::Create {
            bundle,
            pid_file,
            seccomp,
            console_socket,
            ..
        } => {
            paths.push(bundle);
            paths.extend(pid_file.iter_mut());
            paths.extend(seccomp.iter_mut());
            paths.extend(console_socket.iter_mut());
        }
        Command::Exec {
            process,
            pid_file,
            console_socket,
            ..
        } => {
            paths.push(process);
            paths.extend(pid_file.iter_mut());
            paths.extend(console_socket.iter_mut());
        }
        Command::Update {
            resources: Some(r), ..
        } if r.as_path() != std::path::Path::new("-") => paths.push(r),
        Command::NetAttach { netns } | Command::NetDetach { netns, .. } => paths.push(netns),
        _ => {}
    }
    paths
}

/// Makes every path argument absolute (against the caller's working directory).
fn absolutize(cli: &mut Cli) -> std::io::Result<()> {
    for p in path_args(cli) {
        *p = std::path::absolute(&*p)?;
    }
    Ok(())
}

/// Runs from `/` with absolute paths. The caller's directory is often one the container's
/// root cannot read (containerd starts the shim, and so this runtime, in the 0700 bundle
/// directory). libcontainer's path resolver (pathrs) probes whether `openat2(2)` works by
/// opening `.`; inside the container's user namespace that open fails with EACCES, and pathrs
/// then takes openat2 for unsupported and resolves every mount destination in userspace, each
/// step checked through /proc: measured ~3,700 syscalls in the init instead of a few hundred.
fn leave_callers_directory(cli: &mut Cli) -> anyhow::Result<()> {
    absolutize(cli).context("cannot make the path arguments absolute")?;
    std::env::set_current_dir("/").context("cannot change to /")
}

/// This process's command line; or, started as a zygote (`airlock-runtime --zygote`, see
/// `airlock_state::zygote`), the one the shim sends when it needs the runtime, with the stdio
/// it sends put at fds 0, 1 and 2. None: a zygote that got no request.
fn command_line() -> Option<Vec<OsString>> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() != 2 || args[1] != zygote::ARG {
        return Some(args);
    }
    // SAFETY: fd 0 of a zygote is its end of the shim's socket pair, open for our lifetime.
    let sock = unsafe { BorrowedFd::borrow_raw(0) };
    let request = match zygote::receive(sock, ZYGOTE_IDLE) {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            // stderr is /dev/null until a request's stdio is in place: the status tells the
            // shim to run the request in a new process.
            eprintln!("airlock-runtime: zygote: {e}");
            return None;
        }
    };
    for (target, fd) in request.stdio.iter().enumerate() {
        // dup2 onto 0 closes the socket, which is no longer needed; the copies are inheritable.
        if let Err(e) = nix::unistd::dup2(fd.as_raw_fd(), target as RawFd) {
            eprintln!("airlock-runtime: zygote: cannot install stdio fd {target}: {e}");
            return None;
        }
    }
    drop(request.stdio);
    Some(
        std::iter::once(args[0].clone())
            .chain(request.args)
            .collect(),
    )
}

/// How long a zygote waits for its request: the shim starts one when a pod's first container
/// is about to come, and another after a pod sandbox's create for the app containers, which
/// follow within milliseconds when their images are on the node.
const ZYGOTE_IDLE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let Some(args) = command_line() else {
        return ExitCode::from(zygote::UNUSED);
    };
    let mut cli = Cli::parse_from(args);
    if let Err(e) = leave_callers_directory(&mut cli) {
        eprintln!("airlock-runtime: {e:#}");
        return ExitCode::FAILURE;
    }
    let log_to_file = cli.log.is_some();
    if let Err(e) = init_logging(&cli) {
        eprintln!("airlock-runtime: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our library errors already carry their causes in one sentence, and their kind
            // leaves as the exit code (`airlock_contract`); other errors get their chain
            // joined.
            let (line, kind) = match e.downcast_ref::<airlock_runtime::RuntimeError>() {
                Some(r) => (r.to_string(), r.kind()),
                None => (format!("{e:#}"), airlock_contract::ErrorKind::Unknown),
            };
            let line = line.replace('\n', " ");
            if log_to_file {
                tracing::error!(error = %line, "command failed");
            }
            eprintln!("airlock-runtime: {line}");
            ExitCode::from(kind.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_against_the_callers_directory() {
        let mut c = Cli::try_parse_from([
            "airlock-runtime",
            "--root",
            "state",
            "--log",
            "log.json",
            "create",
            "--bundle",
            ".",
            "--pid-file",
            "init.pid",
            "--seccomp",
            "f.bpf",
            "--console-socket",
            "/abs/c.sock",
            "c1",
        ])
        .unwrap();
        absolutize(&mut c).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let got: Vec<PathBuf> = path_args(&mut c).into_iter().map(|p| p.clone()).collect();
        // `.` may stay a component: `cwd/.` is the same directory.
        let bundle = std::path::absolute(".").unwrap();
        assert_eq!(
            got,
            [
                cwd.join("state"),
                cwd.join("log.json"),
                bundle,
                cwd.join("init.pid"),
                cwd.join("f.bpf"),
                PathBuf::from("/abs/c.sock"),
            ]
        );
        assert!(got.iter().all(|p| p.is_absolute() && p.starts_with("/")));
        let mut u = Cli::try_parse_from(["airlock-runtime", "update", "-r", "-", "c1"]).unwrap();
        absolutize(&mut u).unwrap();
        assert!(
            matches!(u.command, Command::Update { resources: Some(r), .. } if r.as_os_str() == "-")
        );
    }

    /// runtime/README.md documents every command and every long flag the CLI takes, and the
    /// zygote's own argument.
    #[test]
    fn the_readme_lists_every_command_and_flag() {
        use clap::CommandFactory;
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("runtime/README.md");
        let cli = Cli::command();
        let mut missing = Vec::new();
        let mut flags = |cmd: &clap::Command| {
            for a in cmd.get_arguments() {
                if let Some(long) = a.get_long() {
                    if long != "help" && long != "version" && !readme.contains(&format!("--{long}"))
                    {
                        missing.push(format!("--{long} ({})", cmd.get_name()));
                    }
                }
            }
        };
        flags(&cli);
        for sub in cli.get_subcommands() {
            flags(sub);
        }
        for sub in cli.get_subcommands() {
            if !readme.contains(&format!("  {} ", sub.get_name())) {
                missing.push(format!("command {}", sub.get_name()));
            }
        }
        if !readme.contains(zygote::ARG) {
            missing.push(zygote::ARG.to_owned());
        }
        assert!(missing.is_empty(), "runtime/README.md lacks: {missing:?}");
    }

    #[test]
    fn parses_runc_like_commands() {
        let c = Cli::try_parse_from([
            "airlock-runtime",
            "--root",
            "/run/airlock/k8s.io",
            "--log",
            "/tmp/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--seccomp",
            "/b/f.bpf",
            "--idmap-rootfs",
            "--console-socket",
            "/b/c.sock",
            "c1",
        ])
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/run/airlock/k8s.io"));
        assert_eq!(c.log_format, LogFormat::Json);
        match c.command {
            Command::Create {
                bundle,
                pid_file,
                seccomp,
                idmap_rootfs,
                rootfs_overlay,
                console_socket,
                id,
            } => {
                assert!(idmap_rootfs);
                assert_eq!(rootfs_overlay, None);
                assert_eq!(console_socket, Some(PathBuf::from("/b/c.sock")));
                assert_eq!(bundle, PathBuf::from("/b"));
                assert_eq!(seccomp, vec![PathBuf::from("/b/f.bpf")]);
                assert_eq!(pid_file, Some(PathBuf::from("/p")));
                assert_eq!(id, "c1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let c = Cli::try_parse_from(["airlock-runtime", "kill", "--all", "c1", "KILL"]).unwrap();
        assert_eq!(c.root, PathBuf::from(airlock_contract::cli::DEFAULT_ROOT));
        assert!(
            matches!(c.command, Command::Kill { all: true, ref signal, .. } if signal == "KILL")
        );
        let c = Cli::try_parse_from(["airlock-runtime", "kill", "c1"]).unwrap();
        assert!(matches!(c.command, Command::Kill { ref signal, .. } if signal == "TERM"));
        let c = Cli::try_parse_from(["airlock-runtime", "delete", "--force", "c1"]).unwrap();
        assert!(matches!(c.command, Command::Delete { force: true, .. }));
        // global flags after the subcommand work too (runc accepts them before only, the
        // shim passes them before)
        let c = Cli::try_parse_from(["airlock-runtime", "state", "c1", "--root", "/r"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert!(Cli::try_parse_from(["airlock-runtime", "create", "c1"]).is_err());
    }
}
