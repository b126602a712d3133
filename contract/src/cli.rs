//! The command line of `airlock-runtime`, defined once: the shim builds it with
//! [`Invocation::to_args`], the runtime parses it with clap (feature `clap`, derived from these
//! same types). A test parses what `to_args` writes for every command and compares.

use std::ffi::OsString;
use std::path::PathBuf;

/// The state root of a runtime run without `--root`.
pub const DEFAULT_ROOT: &str = "/run/airlock/default";

/// One run of `airlock-runtime`: the global flags and a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Parser))]
#[cfg_attr(
    feature = "clap",
    command(
        name = "airlock-runtime",
        version,
        about = "Airlock's OCI runtime (process backend)"
    )
)]
pub struct Invocation {
    /// State root; container state lives in <root>/<id>/.
    #[cfg_attr(feature = "clap", arg(long, global = true, default_value = DEFAULT_ROOT))]
    pub root: PathBuf,
    /// Log file (appended). Default: stderr, which is also the container's stderr, so there
    /// only airlock warnings and the final error line are written.
    #[cfg_attr(feature = "clap", arg(long, global = true))]
    pub log: Option<PathBuf>,
    #[cfg_attr(
        feature = "clap",
        arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)
    )]
    pub log_format: LogFormat,
    /// Log at debug level (per-phase timings of create). AIRLOCK_LOG overrides the filter.
    #[cfg_attr(feature = "clap", arg(long, global = true))]
    pub debug: bool,
    /// Level of the --log file (default: info, or debug with --debug). The shim asks for
    /// `error` unless it logs at debug itself: it reads the file only for the error of a
    /// failed step, and writing the phase timings of every create costs time on the start
    /// path. AIRLOCK_LOG overrides it.
    #[cfg_attr(feature = "clap", arg(long = "log-level", global = true, value_enum))]
    pub log_level: Option<LogLevel>,
    #[cfg_attr(feature = "clap", command(subcommand))]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Its name on the command line, and as a tracing directive.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Subcommand))]
pub enum Command {
    /// Create a container paused before exec; its stdio are this process's fds 0/1/2.
    Create {
        #[cfg_attr(feature = "clap", arg(long, short))]
        bundle: PathBuf,
        #[cfg_attr(feature = "clap", arg(long = "pid-file"))]
        pid_file: Option<PathBuf>,
        /// A seccomp program (array of struct sock_filter, host byte order) installed just
        /// before the workload's exec, and kept for exec processes. Repeatable: all are
        /// installed, in order.
        #[cfg_attr(feature = "clap", arg(long))]
        seccomp: Vec<PathBuf>,
        /// Idmap the rootfs to the container's new user namespace (linux.uidMappings and
        /// gidMappings), so its files belong to the container's root without a chown.
        #[cfg_attr(feature = "clap", arg(long = "idmap-rootfs"))]
        idmap_rootfs: bool,
        /// The rootfs is not mounted yet: mount this overlay at it (its mount options, as
        /// containerd gives them: lowerdir=...,upperdir=...,workdir=...), over idmapped clones
        /// of its lower layers. One overlay instead of a plain one with the idmapped one on
        /// top. Needs --idmap-rootfs.
        #[cfg_attr(
            feature = "clap",
            arg(long = "rootfs-overlay", requires = "idmap_rootfs")
        )]
        rootfs_overlay: Option<String>,
        /// A listening unix socket; required exactly when process.terminal is true. The init's
        /// stdio becomes a new pty's slave (its controlling terminal) and the pty's master is
        /// sent over the socket (SCM_RIGHTS), as runc does.
        #[cfg_attr(feature = "clap", arg(long = "console-socket"))]
        console_socket: Option<PathBuf>,
        id: String,
    },
    /// Let the container's init exec the workload.
    Start { id: String },
    /// Send a signal (number or name, default TERM) to the init, or with --all to every
    /// process in the container's cgroup.
    Kill {
        #[cfg_attr(feature = "clap", arg(long, short))]
        all: bool,
        id: String,
        #[cfg_attr(feature = "clap", arg(default_value = "TERM"))]
        signal: String,
    },
    /// Remove the container's state, cgroup and created cgroup parents.
    Delete {
        #[cfg_attr(feature = "clap", arg(long, short))]
        force: bool,
        id: String,
    },
    /// Print the OCI state JSON.
    State { id: String },
    /// Freeze every process of the container (cgroup freezer).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change the resource limits of a container: an OCI LinuxResources JSON read from
    /// --resources FILE, or from stdin when FILE is `-` or missing.
    Update {
        #[cfg_attr(feature = "clap", arg(long, short))]
        resources: Option<PathBuf>,
        id: String,
    },
    /// In network namespace NETNS (a microVM pod's, made by CNI): make a tap beside each of
    /// its interfaces and redirect the two into each other. Stdout must be a unix socket: the
    /// pod's network (JSON) goes over it with the taps' descriptors (SCM_RIGHTS).
    NetAttach {
        #[cfg_attr(feature = "clap", arg(long))]
        netns: PathBuf,
    },
    /// Remove the redirects that net-attach added to interfaces INDEX of NETNS.
    NetDetach {
        #[cfg_attr(feature = "clap", arg(long))]
        netns: PathBuf,
        #[cfg_attr(feature = "clap", arg(long))]
        index: Vec<u32>,
    },
    /// Run an extra process (an OCI Process JSON) in the running container, detached.
    Exec {
        #[cfg_attr(feature = "clap", arg(long, short))]
        process: PathBuf,
        #[cfg_attr(feature = "clap", arg(long = "pid-file"))]
        pid_file: Option<PathBuf>,
        /// As for create: required exactly when the process has terminal: true.
        #[cfg_attr(feature = "clap", arg(long = "console-socket"))]
        console_socket: Option<PathBuf>,
        id: String,
    },
}

impl Invocation {
    /// A run of `command` with the default global flags under state root `root`.
    pub fn new(root: impl Into<PathBuf>, command: Command) -> Invocation {
        Invocation {
            root: root.into(),
            log: None,
            log_format: LogFormat::Text,
            debug: false,
            log_level: None,
            command,
        }
    }

    /// The arguments (without the program name) that the runtime parses back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.flag_value("--root", &self.root);
        if let Some(log) = &self.log {
            a.flag_value("--log", log);
        }
        if self.log_format != LogFormat::Text {
            a.flag_value("--log-format", self.log_format.name());
        }
        a.flag("--debug", self.debug);
        if let Some(level) = self.log_level {
            a.flag_value("--log-level", level.name());
        }
        match &self.command {
            Command::Create {
                bundle,
                pid_file,
                seccomp,
                idmap_rootfs,
                rootfs_overlay,
                console_socket,
                id,
            } => {
                a.word("create");
                a.flag_value("--bundle", bundle);
                a.opt("--pid-file", pid_file);
                for program in seccomp {
                    a.flag_value("--seccomp", program);
                }
                a.flag("--idmap-rootfs", *idmap_rootfs);
                a.opt("--rootfs-overlay", rootfs_overlay);
                a.opt("--console-socket", console_socket);
                a.id(id);
            }
            Command::Start { id } => {
                a.word("start");
                a.id(id);
            }
            Command::Kill { all, id, signal } => {
                a.word("kill");
                a.flag("--all", *all);
                a.id(id);
                a.word(signal);
            }
            Command::Delete { force, id } => {
                a.word("delete");
                a.flag("--force", *force);
                a.id(id);
            }
            Command::State { id } => {
                a.word("state");
                a.id(id);
            }
            Command::Pause { id } => {
                a.word("pause");
                a.id(id);
            }
            Command::Resume { id } => {
                a.word("resume");
                a.id(id);
            }
            Command::Update { resources, id } => {
                a.word("update");
                a.opt("--resources", resources);
                a.id(id);
            }
            Command::NetAttach { netns } => {
                a.word("net-attach");
                a.flag_value("--netns", netns);
            }
            Command::NetDetach { netns, index } => {
                a.word("net-detach");
                a.flag_value("--netns", netns);
                for i in index {
                    a.flag_value("--index", i.to_string());
                }
            }
            Command::Exec {
                process,
                pid_file,
                console_socket,
                id,
            } => {
                a.word("exec");
                a.flag_value("--process", process);
                a.opt("--pid-file", pid_file);
                a.opt("--console-socket", console_socket);
                a.id(id);
            }
        }
        a.0
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn word(&mut self, w: impl Into<OsString>) {
        self.0.push(w.into());
    }

    fn flag(&mut self, name: &str, on: bool) {
        if on {
            self.word(name);
        }
    }

    fn flag_value(&mut self, name: &str, value: impl Into<OsString>) {
        self.word(name);
        self.word(value);
    }

    fn opt<V: Clone + Into<OsString>>(&mut self, name: &str, value: &Option<V>) {
        if let Some(v) = value {
            self.flag_value(name, v.clone());
        }
    }

    /// The id, after `--`: an id may start with `-`, which the parser must not take for a
    /// flag. What follows it is positional too.
    fn id(&mut self, id: &str) {
        self.word("--");
        self.word(id);
    }
}

#[cfg(all(test, feature = "clap"))]
mod tests {
    use super::*;
    use clap::Parser;

    fn every_command() -> Vec<Command> {
        let p = |s: &str| PathBuf::from(s);
        vec![
            Command::Create {
                bundle: p("/b"),
                pid_file: Some(p("/b/init.pid")),
                seccomp: vec![p("/s/1.bpf"), p("/s/2.bpf")],
                idmap_rootfs: true,
                rootfs_overlay: Some("lowerdir=/l1:/l2,upperdir=/u,workdir=/w".into()),
                console_socket: Some(p("/b/c.sock")),
                id: "c1".into(),
            },
            Command::Create {
                bundle: p("/b"),
                pid_file: None,
                seccomp: vec![],
                idmap_rootfs: false,
                rootfs_overlay: None,
                console_socket: None,
                id: "c1".into(),
            },
            Command::Start { id: "c1".into() },
            Command::Kill {
                all: true,
                id: "c1".into(),
                signal: "9".into(),
            },
            Command::Kill {
                all: false,
                id: "c1".into(),
                signal: "TERM".into(),
            },
            Command::Delete {
                force: true,
                id: "-c1".into(),
            },
            Command::State { id: "c1".into() },
            Command::Pause { id: "c1".into() },
            Command::Resume { id: "c1".into() },
            Command::Update {
                resources: Some(p("/b/r.json")),
                id: "c1".into(),
            },
            Command::Exec {
                process: p("/b/exec-e1.json"),
                pid_file: Some(p("/b/exec-e1.pid")),
                console_socket: None,
                id: "c1".into(),
            },
            Command::NetAttach {
                netns: p("/var/run/netns/cni-1"),
            },
            Command::NetDetach {
                netns: p("/var/run/netns/cni-1"),
                index: vec![2, 7],
            },
        ]
    }

    #[test]
    fn what_the_shim_writes_the_runtime_parses_back() {
        for command in every_command() {
            let mut inv = Invocation::new("/run/airlock/k8s.io", command);
            for (log, format, debug, level) in [
                (None, LogFormat::Text, false, None),
                (
                    Some(PathBuf::from("/b/log.json")),
                    LogFormat::Json,
                    true,
                    Some(LogLevel::Error),
                ),
            ] {
                inv.log = log;
                inv.log_format = format;
                inv.debug = debug;
                inv.log_level = level;
                let args = std::iter::once(OsString::from("airlock-runtime")).chain(inv.to_args());
                let parsed = Invocation::try_parse_from(args)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", inv.to_args()));
                assert_eq!(parsed, inv);
            }
        }
    }

    #[test]
    fn the_runtimes_defaults() {
        let c = Invocation::try_parse_from(["airlock-runtime", "kill", "c1"]).unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(
            c.command,
            Command::Kill {
                all: false,
                id: "c1".into(),
                signal: "TERM".into()
            }
        );
        // Global flags after the command work too.
        let c =
            Invocation::try_parse_from(["airlock-runtime", "state", "c1", "--root", "/r"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert!(Invocation::try_parse_from(["airlock-runtime", "create", "c1"]).is_err());
        assert!(Invocation::try_parse_from([
            "airlock-runtime",
            "create",
            "--bundle",
            "/b",
            "--rootfs-overlay",
            "x",
            "c1"
        ])
        .is_err());
    }
}
