//! `airlock`: Airlock's operator CLI. Logic lives in the `airlock_cli` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_cli::dropin::ContainerdVersion;
use airlock_cli::{doctor, install, policy};
use airlock_policies::config::{self, DEFAULT_CONFIG_PATH};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Airlock operator CLI: policies, node checks, install"
)]
struct Cli {
    /// Airlock config (its policies_dir holds the operator policies).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lint, explain, compare and list policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Check that this node can run Airlock.
    Doctor {
        /// containerd's config file.
        #[arg(long, default_value = install::CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
    },
    /// The microVM mode's guest (handler airlock-vm).
    #[command(subcommand)]
    Vm(VmCmd),
    /// Install binaries, /etc/airlock and the containerd drop-in, then run doctor.
    Install {
        /// Staging root (like DESTDIR): files go under it, contents name the final paths.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// containerd's config file (final path).
        #[arg(long, default_value = install::CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
        /// Directory of the binaries to install (default: the one holding this `airlock`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// containerd version to configure for (default: `containerd --version`).
        #[arg(long)]
        containerd_version: Option<String>,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Build the guest's initramfs: the static airlock-agent and the kernel modules it needs.
    Build {
        /// The guest kernel image (default: `[vm] kernel` of the config).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The kernel modules' root; the kernel's release names the directory under it.
        #[arg(long, default_value = "/lib/modules")]
        modules: PathBuf,
        /// The static airlock-agent (default: the one beside this airlock).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// The initramfs to write (default: `[vm] initramfs` of the config).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Check policy files (exit 1 on the first error, naming file, line and field).
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what a policy (name or file) enforces.
    Explain { policy: String },
    /// Compare two policies (names or files) field by field.
    Diff { a: String, b: String },
    /// List built-in and operator policies.
    List,
}

/// The node's policies; a missing default config means built-ins plus the default dir.
fn policies(config_path: &Path) -> Result<airlock_policies::PolicySet> {
    Ok(config::load(config_path, Path::new(DEFAULT_CONFIG_PATH))?.policies)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Policy(PolicyCmd::Lint { files }) => {
            let set = policies(&cli.config)?;
            let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            let (out, ok) = policy::lint(&refs, &set);
            print!("{out}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Policy(PolicyCmd::Explain { policy: p }) => {
            print!("{}", policy::explain(&p, &policies(&cli.config)?)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Diff { a, b }) => {
            print!("{}", policy::diff(&a, &b, &policies(&cli.config)?)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::List) => {
            print!("{}", policy::list(&policies(&cli.config)?));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor { containerd_config } => {
            let probe = doctor::Probe::host(containerd_config, cli.config);
            Ok(report_doctor(&probe))
        }
        Cmd::Vm(VmCmd::Build {
            kernel,
            modules,
            agent,
            out,
        }) => {
            let vm = config::load(&cli.config, Path::new(DEFAULT_CONFIG_PATH))?
                .config
                .vm;
            let kernel = kernel.unwrap_or(vm.kernel);
            let out = out.unwrap_or(vm.initramfs);
            let agent = match agent {
                Some(a) => a,
                None => beside_this_binary()?.join("airlock-agent"),
            };
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let s = airlock_vm::initramfs::build(&kernel, &modules, &agent, &out)?;
            println!(
                "initramfs {}: {} bytes for kernel {}; modules in load order: {}",
                out.display(),
                s.bytes,
                s.release,
                s.modules.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Install {
            prefix,
            containerd_config,
            from,
            containerd_version,
            dry_run,
        } => {
            let source_dir = match from {
                Some(d) => d,
                None => beside_this_binary()?,
            };
            let probe = doctor::Probe::host(containerd_config.clone(), cli.config.clone());
            let containerd = match containerd_version {
                Some(v) => ContainerdVersion::parse(&format!("containerd x {v}"))
                    .ok_or_else(|| airlock_cli::Error::ContainerdVersion(v.clone()))?,
                None => detect_containerd(probe.containerd.as_deref())?,
            };
            let opts = install::Options {
                prefix: prefix.clone(),
                containerd_config: containerd_config.clone(),
                source_dir,
                containerd,
                dry_run,
                kernels: PathBuf::from("/boot"),
                modules: PathBuf::from("/lib/modules"),
            };
            let report = install::install(&opts)?;
            print!("{report}");
            println!("\nairlock doctor:");
            let staged = |p: &Path| prefix.join(p.strip_prefix("/").unwrap_or(p));
            let mut probe = probe;
            probe.path.insert(0, staged(Path::new(install::BIN_DIR)));
            probe.containerd_config = staged(&containerd_config);
            probe.airlock_config = staged(Path::new(DEFAULT_CONFIG_PATH));
            Ok(report_doctor(&probe))
        }
    }
}

/// The directory of this `airlock` binary (the other binaries ship beside it).
fn beside_this_binary() -> Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("locate the airlock binary")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

fn detect_containerd(bin: Option<&Path>) -> Result<ContainerdVersion> {
    let bin = bin.ok_or_else(|| {
        airlock_cli::Error::ContainerdVersion("containerd not found on PATH".into())
    })?;
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    Ok(ContainerdVersion::parse(&text).ok_or(airlock_cli::Error::ContainerdVersion(text))?)
}

fn report_doctor(probe: &doctor::Probe) -> ExitCode {
    let checks = doctor::run(probe);
    for c in &checks {
        println!("{c}");
    }
    ExitCode::from(doctor::exit_code(&checks) as u8)
}
