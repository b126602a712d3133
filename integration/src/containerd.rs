//! A private containerd: root, state, sockets and config under a temp dir, stopped on drop.

use crate::proc_util::{self, Output, Running};
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Output of a `ctr` invocation.
pub type CtrOutput = Output;

/// Which containerd to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Debian 12's containerd 1.6 (`/usr/bin/containerd`).
    V1_6,
    /// Debian unstable's containerd 2.1, unpacked by `integration/scripts/fetch-containerd2.sh`
    /// into `AIRLOCK_CONTAINERD2_DIR` (default `/var/cache/airlock-test/containerd2`).
    V2_1,
}

/// Default directory where `fetch-containerd2.sh` unpacks containerd 2.1.
pub const DEFAULT_CONTAINERD2_DIR: &str = "/var/cache/airlock-test/containerd2";

/// Where containerd puts shim sockets (hard-coded in containerd 1.6 and 2.x).
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// Airlock's per-container state root.
pub const AIRLOCK_STATE_DIR: &str = "/run/airlock";

/// Prefix of every namespace the harness creates (names are unique per process).
pub const NAMESPACE_PREFIX: &str = "ait";

impl Version {
    pub const ALL: [Version; 2] = [Version::V1_6, Version::V2_1];

    /// Directory holding `containerd`, `ctr` and (for 2.1) `containerd-shim-runc-v2`.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Version::V1_6 => PathBuf::from("/usr/bin"),
            Version::V2_1 => PathBuf::from(
                std::env::var_os("AIRLOCK_CONTAINERD2_DIR")
                    .unwrap_or_else(|| DEFAULT_CONTAINERD2_DIR.into()),
            )
            .join("usr/bin"),
        }
    }

    /// Whether this version's binaries are installed.
    pub fn available(self) -> bool {
        self.bin_dir().join("containerd").is_file()
    }

    pub fn label(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V2_1 => "2.1",
        }
    }
}

/// Builder for [`Containerd`].
#[derive(Debug, Clone)]
pub struct Builder {
    version: Version,
    binary: Option<PathBuf>,
    airlock_bin_dir: Option<PathBuf>,
    cri: bool,
    debug: bool,
    ready_timeout: Duration,
    imports: Vec<PathBuf>,
    edit_config: Option<fn(&str) -> String>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            version: Version::V1_6,
            binary: None,
            airlock_bin_dir: None,
            cri: false,
            debug: false,
            ready_timeout: Duration::from_secs(20),
            imports: Vec::new(),
            edit_config: None,
        }
    }
}

impl Builder {
    /// containerd version (picks the binaries; default 1.6).
    pub fn version(mut self, v: Version) -> Self {
        self.version = v;
        self
    }

    /// Explicit containerd binary (`ctr` is expected next to it).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Directory holding `containerd-shim-airlock-v2` (default: [`crate::airlock_bin_dir`]).
    pub fn airlock_bin_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.airlock_bin_dir = Some(path.into());
        self
    }

    /// Enable the CRI plugin (off by default). containerd then runs in a network namespace of
    /// its own (`unshare --net`) with a CNI bridge config, so pod networks never touch the
    /// host's; the images CRI needs are imported with [`Containerd::import_cri_images`].
    pub fn cri(mut self, on: bool) -> Self {
        self.cri = on;
        self
    }

    /// Add a config file to the `imports` of containerd's config (e.g. a deploy/ drop-in).
    pub fn import(mut self, path: impl Into<PathBuf>) -> Self {
        self.imports.push(path.into());
        self
    }

    /// Rewrite the generated config.toml before containerd starts (e.g. `airlock install`'s
    /// merge of the runtime tables for containerd 1.x).
    pub fn edit_config(mut self, f: fn(&str) -> String) -> Self {
        self.edit_config = Some(f);
        self
    }

    /// containerd log level debug (default info).
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// Start containerd and wait until its socket answers.
    pub fn start(self) -> Result<Containerd> {
        Containerd::start(self)
    }
}

/// A running private containerd. Dropping it removes everything it started.
pub struct Containerd {
    version: Version,
    dir: Option<tempfile::TempDir>,
    bin_dir: PathBuf,
    airlock_bin_dir: PathBuf,
    child: Option<Child>,
    pid: i32,
    /// containerd's binary and the PATH it was started with (see [`Containerd::restart`]).
    launch: (PathBuf, String),
    namespaces: Mutex<BTreeSet<String>>,
    counter: AtomicU32,
    spec_cache: Mutex<Option<serde_json::Value>>,
    cri: bool,
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

impl Containerd {
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn config(b: &Builder, dir: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "version = 2");
        if !b.imports.is_empty() {
            let list: Vec<String> = b.imports.iter().map(|p| toml_str(p)).collect();
            let _ = writeln!(c, "imports = [{}]", list.join(", "));
        }
        let _ = writeln!(c, "root = {}", toml_str(&dir.join("root")));
        let _ = writeln!(c, "state = {}", toml_str(&dir.join("state")));
        let _ = writeln!(c, "oom_score = 0");
        if b.cri {
            let _ = writeln!(c, "disabled_plugins = []");
        } else {
            let _ = writeln!(c, "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]");
        }
        let _ = writeln!(c, "[grpc]\n  address = {}", toml_str(&dir.join("c.sock")));
        let _ = writeln!(
            c,
            "[ttrpc]\n  address = {}",
            toml_str(&dir.join("c.ttrpc.sock"))
        );
        let _ = writeln!(c, "[debug]\n  address = \"\"");
        let _ = writeln!(
            c,
            "  level = \"{}\"",
            if b.debug { "debug" } else { "info" }
        );
        let _ = writeln!(c, "[metrics]\n  address = \"\"");
        if b.version == Version::V1_6 {
            // 1.6's "opt" plugin would otherwise create /opt/containerd.
            let _ = writeln!(
                c,
                "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}",
                toml_str(&dir.join("opt"))
            );
        }
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let _ = writeln!(c, "[{cri}]");
        // Root here lacks CAP_SYS_RESOURCE (see ARCHITECTURE.md).
        let _ = writeln!(c, "  restrict_oom_score_adj = true");
        let _ = writeln!(c, "  sandbox_image = \"{}\"", crate::image::PAUSE_REF);
        // Streaming (exec -it, attach) listens on loopback only, on a free port.
        let _ = writeln!(c, "  stream_server_address = \"127.0.0.1\"");
        let _ = writeln!(c, "  stream_server_port = \"0\"");
        let _ = writeln!(c, "[{cri}.cni]");
        let _ = writeln!(c, "  bin_dir = \"{CNI_BIN_DIR}\"");
        let _ = writeln!(
            c,
            "  conf_dir = {}",
            toml_str(&dir.join("cni").join("net.d"))
        );
        let _ = writeln!(c, "[{cri}.containerd]");
        let _ = writeln!(c, "  snapshotter = \"overlayfs\"");
        let _ = writeln!(c, "  default_runtime_name = \"runc\"");
        for rt in Runtime::ALL {
            let _ = writeln!(c, "[{cri}.containerd.runtimes.{}]", rt.name());
            let _ = writeln!(c, "  runtime_type = \"{}\"", rt.runtime_type());
            match rt {
                Runtime::Runc | Runtime::Crun => {
                    let _ = writeln!(c, "[{cri}.containerd.runtimes.{}.options]", rt.name());
                    let _ = writeln!(c, "  BinaryName = \"{}\"", rt.name());
                    let _ = writeln!(c, "  SystemdCgroup = false");
                }
                Runtime::Airlock => {
                    // What deploy/ registers: pods pick a policy with airlock.dev/policy.
                    let _ = writeln!(c, "  pod_annotations = [\"airlock.dev/*\"]");
                }
            }
        }
        // The microVM mode, with the node config that `vm::cri_node_config` writes.
        let _ = writeln!(c, "[{cri}.containerd.runtimes.{VM_HANDLER}]");
        let _ = writeln!(c, "  runtime_type = \"io.containerd.airlock-vm.v2\"");
        let _ = writeln!(c, "  pod_annotations = [\"airlock.dev/*\"]");
        let _ = writeln!(c, "[{cri}.containerd.runtimes.{VM_HANDLER}.options]");
        let _ = writeln!(
            c,
            "  ConfigPath = {}",
            toml_str(&dir.join("vm").join("config.toml"))
        );
        if which("runsc").is_some() {
            // gVisor has no shim packaged here: runc.v2 with a wrapper as its runtime binary.
            let _ = writeln!(c, "[{cri}.containerd.runtimes.runsc]");
            let _ = writeln!(c, "  runtime_type = \"io.containerd.runc.v2\"");
            let _ = writeln!(c, "[{cri}.containerd.runtimes.runsc.options]");
            let _ = writeln!(
                c,
                "  BinaryName = {}",
                toml_str(&dir.join("bin").join(RUNSC_WRAPPER))
            );
            let _ = writeln!(c, "  SystemdCgroup = false");
        }
        if which("containerd-shim-runc-v2-rs").is_some() {
            // containerd/rust-extensions' runc shim, a benchmark peer (its 0.2 speaks task API
            // v3 only: pods with this handler work on containerd >= 2.0).
            let _ = writeln!(c, "[{cri}.containerd.runtimes.runc-v2-rs]");
            let _ = writeln!(c, "  runtime_type = \"io.containerd.runc.v2-rs\"");
        }
        c
    }

    fn start(b: Builder) -> Result<Self> {
        let (containerd, bin_dir) = match &b.binary {
            Some(p) => (
                p.clone(),
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None => {
                let d = b.version.bin_dir();
                (d.join("containerd"), d)
            }
        };
        if !containerd.is_file() {
            if b.version == Version::V2_1 {
                bail!(
                    "containerd 2.1 not found at {}: run `integration/scripts/fetch-containerd2.sh {}` \
                     first (or set AIRLOCK_CONTAINERD2_DIR)",
                    containerd.display(),
                    bin_dir.parent().and_then(Path::parent).unwrap_or(&bin_dir).display()
                );
            }
            bail!("containerd binary {} not found", containerd.display());
        }
        let airlock_bin_dir = b
            .airlock_bin_dir
            .clone()
            .unwrap_or_else(crate::airlock_bin_dir);
        let dir = tempfile::Builder::new()
            .prefix("airlock-ctd-")
            .tempdir()
            .context("temp dir")?;
        // Like /run/containerd (0711): a user-namespaced container's root (an unprivileged host
        // uid) must be able to traverse the path to its bundle's rootfs.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        }
        let cfg = dir.path().join("config.toml");
        let text = Self::config(&b, dir.path());
        std::fs::write(&cfg, b.edit_config.map(|f| f(&text)).unwrap_or(text))?;
        if b.cri {
            write_cni_config(dir.path())?;
        }
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;

        let shim_bin = dir.path().join("bin");
        std::fs::create_dir_all(&shim_bin)?;
        if b.version == Version::V2_1 && crun_needs_oci_compat() {
            install_crun_compat(&shim_bin)?;
        }
        if let Some(runsc) = which("runsc") {
            install_runsc_wrapper(&shim_bin, &runsc)?;
        }
        let path = format!(
            "{}:{}:{}:{}",
            airlock_bin_dir.display(),
            shim_bin.display(),
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let hybrid = proc_util::is_mount_of_type(Path::new("/sys/fs/cgroup/unified"), "cgroup2");
        // With CRI on, containerd runs in a network namespace of its own: the CNI bridge and
        // the pods' veths live there, never on the host's network. Its loopback is up, as on
        // a node: CRI's streaming server (exec, attach, port-forward) listens on 127.0.0.1.
        let netns: &[&str] = if b.cri { &["--net"] } else { &[] };
        let lo_up = if b.cri { "ip link set lo up && " } else { "" };
        let mut cmd = if hybrid || b.cri {
            // crun refuses the hybrid layout: hide the v2 mount in a private mount namespace.
            let hide = if hybrid {
                "mount -t tmpfs -o size=1m,mode=755 x /sys/fs/cgroup/unified && "
            } else {
                ""
            };
            let mut c = Command::new("unshare");
            c.args(netns);
            if hybrid {
                c.args(["--mount", "--propagation", "private"]);
            }
            c.args(["sh", "-c"])
                .arg(format!("{lo_up}{hide}exec \"$0\" --config \"$1\""))
                .arg(&containerd)
                .arg(&cfg);
            c
        } else {
            let mut c = Command::new(&containerd);
            c.arg("--config").arg(&cfg);
            c
        };
        cmd.env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", containerd.display()))?;
        let pid = child.id() as i32;
        let mut me = Self {
            version: b.version,
            dir: Some(dir),
            bin_dir,
            airlock_bin_dir,
            child: Some(child),
            pid,
            launch: (containerd, path),
            namespaces: Mutex::new(BTreeSet::new()),
            counter: AtomicU32::new(0),
            spec_cache: Mutex::new(None),
            cri: b.cri,
        };
        me.wait_ready(b.ready_timeout)?;
        Ok(me)
    }

    /// Stops containerd with SIGTERM, as `systemctl restart containerd` does (its shims, and
    /// the containers under them, keep running), and starts it again with the same config,
    /// root, state and sockets, in the same mount and network namespaces. Returns once the new
    /// containerd answers; it reconnects to the shims it finds in its state.
    pub fn restart(&mut self) -> Result<()> {
        // Held open so that the namespaces outlive containerd even where no shim holds them.
        let held: Vec<(std::fs::File, &str)> = [("mnt", "--mount"), ("net", "--net")]
            .into_iter()
            .map(|(ns, flag)| {
                std::fs::File::open(format!("/proc/{}/ns/{ns}", self.pid))
                    .map(|f| (f, flag))
                    .with_context(|| format!("open containerd's {ns} namespace"))
            })
            .collect::<Result<_>>()?;
        if let Some(mut child) = self.child.take() {
            proc_util::signal(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    bail!(
                        "containerd {} did not stop within 10 s of SIGTERM",
                        self.pid
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())?;
        let (binary, path) = &self.launch;
        let mut cmd = Command::new("nsenter");
        for (f, flag) in &held {
            use std::os::fd::AsRawFd;
            cmd.arg(format!(
                "{flag}=/proc/{}/fd/{}",
                std::process::id(),
                f.as_raw_fd()
            ));
        }
        cmd.arg(binary)
            .arg("--config")
            .arg(self.dir().join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("spawn nsenter containerd")?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let sock = self.socket();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd exited during startup ({st}); log:\n{}",
                    self.log_tail(40)
                );
            }
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd socket not ready after {timeout:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The socket accepts before all services are registered: ask for the version.
        let out = self.ctr(None, &["version"])?;
        if !out.success() {
            bail!("ctr version failed: {}\n{}", out.stderr, self.log_tail(40));
        }
        Ok(())
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// containerd's pid (after `unshare`/`sh` exec'd into it, the same pid).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    /// gRPC socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("c.sock")
    }

    pub fn ttrpc_socket(&self) -> PathBuf {
        self.dir().join("c.ttrpc.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// The node config of the CRI runtime [`VM_HANDLER`] (written by
    /// [`crate::vm::cri_node_config`]).
    pub fn vm_config(&self) -> PathBuf {
        self.dir().join("vm").join("config.toml")
    }

    /// Whether the CRI plugin is on.
    pub fn cri_enabled(&self) -> bool {
        self.cri
    }

    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("containerd.log")
    }

    /// `ctr` of the same version.
    pub fn ctr_path(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    pub fn airlock_bin_dir(&self) -> &Path {
        &self.airlock_bin_dir
    }

    /// The gVisor wrapper (`runsc --platform=ptrace --network=none "$@"`) to give the runc.v2 shim
    /// as its `BinaryName` (`ctr --runc-binary`), when `runsc` is installed; also registered as
    /// the CRI runtime `runsc`.
    pub fn runsc_wrapper(&self) -> Option<PathBuf> {
        let p = self.dir().join("bin").join(RUNSC_WRAPPER);
        p.is_file().then_some(p)
    }

    /// Last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Asks containerd to write every goroutine's stack into its log (SIGUSR1, which 1.6 and
    /// 2.x both handle without stopping) and returns the log from the dump on: what a test
    /// that ran out of time prints, so a hang inside containerd can be explained.
    pub fn dump_stacks(&self) -> String {
        let before = std::fs::metadata(self.log_path())
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        // containerd also writes the dump to this file (and names it in its log).
        let file = std::env::temp_dir().join(format!("containerd.{}.stacks.log", self.pid));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(500));
        let dump = match std::fs::read_to_string(&file) {
            Ok(s) => {
                let _ = std::fs::remove_file(&file);
                s
            }
            Err(_) => {
                let s = std::fs::read(self.log_path()).unwrap_or_default();
                String::from_utf8_lossy(&s[before.min(s.len())..])
                    .replace("\\n", "\n")
                    .replace("\\t", "\t")
            }
        };
        dump.chars().take(60_000).collect()
    }

    /// Lines of containerd's log mentioning `needle` (e.g. a container id).
    pub fn log_grep(&self, needle: &str) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        s.lines()
            .filter(|l| l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A `ctr` command against this containerd (optionally in namespace `ns`).
    pub fn ctr_command(&self, ns: Option<&str>) -> Command {
        let mut c = Command::new(self.ctr_path());
        c.arg("-a").arg(self.socket());
        if let Some(ns) = ns {
            c.arg("-n").arg(ns);
        }
        c
    }

    /// Runs `ctr ARGS` with a 60 s deadline.
    pub fn ctr(&self, ns: Option<&str>, args: &[&str]) -> Result<CtrOutput> {
        self.ctr_timeout(ns, args, Duration::from_secs(60))
    }

    pub fn ctr_timeout(&self, ns: Option<&str>, args: &[&str], t: Duration) -> Result<CtrOutput> {
        let mut c = self.ctr_command(ns);
        c.args(args);
        proc_util::run(c, t)
    }

    /// Runs `ctr ARGS` and fails unless it exits 0.
    pub fn ctr_ok(&self, ns: Option<&str>, args: &[&str]) -> Result<CtrOutput> {
        let out = self.ctr(ns, args)?;
        if !out.success() {
            bail!(
                "ctr {args:?} failed ({:?}): {}{}",
                out.code,
                out.stderr,
                out.stdout
            );
        }
        Ok(out)
    }

    /// Starts `ctr ARGS` in the background (stdout/stderr collected).
    pub fn ctr_spawn(&self, ns: Option<&str>, args: &[&str]) -> Result<Running> {
        let mut c = self.ctr_command(ns);
        c.args(args);
        Running::spawn(c)
    }

    /// `ctr run --rm <runtime flags> EXTRA.. IMAGE ID ARGS..` with a deadline.
    pub fn ctr_run_with(
        &self,
        ns: &str,
        runtime: Runtime,
        extra: &[&str],
        id: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<CtrOutput> {
        self.ctr_timeout(Some(ns), &self.run_args(runtime, extra, id, args), timeout)
    }

    /// `ctr run --rm` in the background.
    pub fn ctr_run_spawn(
        &self,
        ns: &str,
        runtime: Runtime,
        extra: &[&str],
        id: &str,
        args: &[&str],
    ) -> Result<Running> {
        self.ctr_spawn(Some(ns), &self.run_args(runtime, extra, id, args))
    }

    fn run_args<'a>(
        &self,
        runtime: Runtime,
        extra: &[&'a str],
        id: &'a str,
        args: &[&'a str],
    ) -> Vec<&'a str> {
        let rt: &'static [&'static str] = match runtime {
            Runtime::Runc => &["--runtime", "io.containerd.runc.v2"],
            Runtime::Crun => &[
                "--runtime",
                "io.containerd.runc.v2",
                "--runc-binary",
                "crun",
            ],
            Runtime::Airlock => &["--runtime", "io.containerd.airlock.v2"],
        };
        let mut v: Vec<&str> = vec!["run", "--rm"];
        v.extend_from_slice(rt);
        v.extend_from_slice(extra);
        if !extra.contains(&"--rootfs") {
            v.push(crate::IMAGE_REF);
        }
        v.push(id);
        v.extend_from_slice(args);
        v
    }

    /// `ctr run --rm` with a 60 s deadline.
    pub fn ctr_run(
        &self,
        ns: &str,
        runtime: Runtime,
        id: &str,
        args: &[&str],
    ) -> Result<CtrOutput> {
        self.ctr_run_with(ns, runtime, &[], id, args, Duration::from_secs(60))
    }

    /// Creates a namespace name unique on this host (cgroup and /run/airlock paths are host-wide)
    /// and imports the busybox image into it.
    pub fn new_namespace(&self, label: &str) -> Result<String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let label = label.trim_matches('-');
        let ns = format!(
            "{NAMESPACE_PREFIX}-{}-{}{n}-{label}",
            std::process::id(),
            self.version.label().replace('.', "")
        );
        self.namespaces.lock().unwrap().insert(ns.clone());
        self.import_image(&ns)?;
        Ok(ns)
    }

    /// Imports the busybox and sandbox (pause) images into CRI's namespace, `k8s.io`.
    pub fn import_cri_images(&self) -> Result<()> {
        self.import_image(CRI_NAMESPACE)?;
        self.import_tar(CRI_NAMESPACE, &crate::image::pause_image_tar()?)
    }

    /// Imports (and unpacks for overlayfs) the busybox image into `ns`.
    pub fn import_image(&self, ns: &str) -> Result<()> {
        self.import_tar(ns, &crate::image::busybox_image_tar()?)?;
        let ls = self.ctr_ok(Some(ns), &["images", "ls", "-q"])?;
        if !ls.stdout.lines().any(|l| l.trim() == crate::IMAGE_REF) {
            bail!(
                "image {} missing after import; images: {}",
                crate::IMAGE_REF,
                ls.stdout,
            );
        }
        Ok(())
    }

    fn import_tar(&self, ns: &str, tar: &Path) -> Result<()> {
        let tar_s = tar.to_string_lossy().into_owned();
        let out = self.ctr_timeout(
            Some(ns),
            &["images", "import", "--snapshotter", "overlayfs", &tar_s],
            Duration::from_secs(120),
        )?;
        if !out.success() {
            bail!(
                "ctr images import failed: {}{}\n{}",
                out.stdout,
                out.stderr,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// `ctr oci spec` of this version (the default spec `ctr run` starts from), parsed.
    pub fn default_spec(&self) -> Result<serde_json::Value> {
        let mut cache = self.spec_cache.lock().unwrap();
        if let Some(v) = cache.as_ref() {
            return Ok(v.clone());
        }
        let out = self.ctr_ok(Some("default"), &["oci", "spec"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).context("parse ctr oci spec")?;
        *cache = Some(v.clone());
        Ok(v)
    }

    /// OCI spec bytes running `args` as container `id` in `ns`.
    pub fn spec(&self, ns: &str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        Ok(crate::client::spec_for(&self.default_spec()?, ns, id, args))
    }

    /// Namespaces created through this harness.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.lock().unwrap().iter().cloned().collect()
    }

    /// The path containerd gives the shim socket of (`ns`, `id`) (id = sandbox id when grouped).
    pub fn shim_socket_path(&self, ns: &str, id: &str) -> PathBuf {
        let key = format!("{}/{ns}/{id}", self.socket().display());
        PathBuf::from(SHIM_SOCKET_DIR).join(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Shim processes started by this containerd: (pid, namespace, id).
    pub fn shims(&self) -> Vec<ShimProc> {
        let sock = self.socket().to_string_lossy().into_owned();
        let mut v = Vec::new();
        for pid in proc_util::pids() {
            let args = proc_util::cmdline(pid);
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            };
            if flag("-address").as_deref() == Some(sock.as_str()) {
                v.push(ShimProc {
                    pid,
                    namespace: flag("-namespace").unwrap_or_default(),
                    id: flag("-id").unwrap_or_default(),
                    binary: args.first().cloned().unwrap_or_default(),
                });
            }
        }
        v
    }

    /// gRPC client (async; call within a tokio runtime).
    pub async fn client(&self) -> Result<crate::Client> {
        crate::Client::connect(&self.socket()).await
    }

    /// Whether namespace `ns` was made by this process's harness (a unique name); others,
    /// such as CRI's `k8s.io`, are shared with every containerd on the host.
    fn owns(ns: &str) -> bool {
        ns.starts_with(&format!("{NAMESPACE_PREFIX}-{}-", std::process::id()))
    }

    /// Deletes every task and container left, in every namespace. Returns the (namespace, id)
    /// of those in namespaces this harness does not own: their host-wide leftovers are then
    /// removed by id, never by the namespace's name, which other containerd instances on the
    /// host (another test run's CRI in `k8s.io`) use too.
    fn cleanup_containers(&self) -> Vec<(String, String)> {
        let mut shared = Vec::new();
        let t = Duration::from_secs(15);
        let Ok(nss) = self.ctr_timeout(None, &["namespaces", "ls", "-q"], t) else {
            return shared;
        };
        for ns in nss.stdout.lines().map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(tasks) = self.ctr_timeout(Some(ns), &["tasks", "ls", "-q"], t) {
                for id in tasks
                    .stdout
                    .lines()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let _ = self.ctr_timeout(Some(ns), &["tasks", "delete", "-f", id], t);
                }
            }
            if let Ok(cs) = self.ctr_timeout(Some(ns), &["containers", "ls", "-q"], t) {
                for id in cs.stdout.lines().map(str::trim).filter(|s| !s.is_empty()) {
                    let _ = self.ctr_timeout(Some(ns), &["containers", "rm", id], t);
                    if !Self::owns(ns) {
                        shared.push((ns.to_string(), id.to_string()));
                    }
                }
            }
            if Self::owns(ns) {
                self.namespaces.lock().unwrap().insert(ns.to_string());
            }
        }
        shared
    }

    fn stop(&mut self) {
        // 1. Ask containerd to remove what is left, while it still runs.
        let shared = self.cleanup_containers();
        let shims_before = self.shims();
        let mut victims: Vec<i32> = Vec::new();
        for s in &shims_before {
            victims.extend(proc_util::descendants(s.pid));
            victims.push(s.pid);
        }
        // 2. Stop containerd by pid: SIGTERM, then SIGKILL.
        if let Some(mut child) = self.child.take() {
            proc_util::signal(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // 3. Shims left (and the containers under them).
        for s in self.shims() {
            victims.extend(proc_util::descendants(s.pid));
            victims.push(s.pid);
        }
        // Processes in our namespaces' cgroups (containers whose shim is already gone).
        let namespaces = self.namespaces();
        for pid in proc_util::pids() {
            let cg = proc_util::cgroup(pid);
            if namespaces
                .iter()
                .any(|ns| cg.contains(&format!(":/{ns}/")) || cg.contains(&format!("/{ns}/")))
                || shared
                    .iter()
                    .any(|(ns, id)| cg.contains(&format!("/{ns}/{id}")))
            {
                victims.push(pid);
            }
        }
        victims.sort_unstable();
        victims.dedup();
        victims.retain(|p| *p != std::process::id() as i32);
        for p in &victims {
            proc_util::signal(*p, libc::SIGKILL);
        }
        proc_util::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            victims.iter().all(|p| !proc_util::alive(*p))
        });
        // 4. Host-wide leftovers named after our (unique) namespaces, and after the ids of
        //    our containers in shared ones.
        let ours = namespaces.iter().map(|ns| (ns.as_str(), None)).chain(
            shared
                .iter()
                .map(|(ns, id)| (ns.as_str(), Some(id.as_str()))),
        );
        for (ns, id) in ours {
            for cg in crate::leaks::cgroup_dirs(ns, id) {
                remove_cgroup_tree(&cg);
            }
            let state = Path::new(AIRLOCK_STATE_DIR).join(ns);
            let _ = std::fs::remove_dir_all(id.map(|id| state.join(id)).unwrap_or(state));
            // User namespace ranges of pods whose shims were killed above.
            for f in crate::leaks::userns_ranges_of(ns, id) {
                let _ = std::fs::remove_file(f);
            }
            remove_runc_state(ns, id);
        }
        for s in &shims_before {
            let _ = std::fs::remove_file(self.shim_socket_path(&s.namespace, &s.id));
        }
        // 5. The temp dir (mounts lived in containerd's private mount namespace, now gone).
        if let Some(d) = self.dir.take() {
            if std::env::var_os("AIRLOCK_KEEP_TMP").is_some() {
                let p = d.keep();
                eprintln!("airlock-integration: kept {}", p.display());
            } else if let Err(e) = d.close() {
                eprintln!("airlock-integration: removing temp dir: {e}");
            }
        }
    }
}

/// Path of the real crun on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// crun before 1.9 (Debian 12 has 1.8.1) rejects `ociVersion` other than 1.0.x with "unknown
/// version specified", and containerd 2.1 writes "1.2.1". The newest crun that still refuses it
/// was not measured here; 1.8.x is known to.
pub fn crun_needs_oci_compat() -> bool {
    let Ok(out) = Command::new("crun").arg("--version").output() else {
        return false;
    };
    let s = String::from_utf8_lossy(&out.stdout);
    let Some(v) = s.lines().next().and_then(|l| l.split_whitespace().nth(2)) else {
        return false;
    };
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (maj, min) < (1, 9)
}

/// Writes `crun` into `dir` (first on the shims' PATH): it rewrites the bundle's `ociVersion` to
/// 1.0.2-dev and execs the real crun. Only used with containerd 2.x and an old crun.
fn install_crun_compat(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let real = which("crun").context("crun not found on PATH")?;
    let script = format!(
        r#"#!/bin/sh
# Written by airlock-integration: crun < 1.9 refuses ociVersion 1.2.x, which containerd 2.x writes.
prev=
for a in "$@"; do
    case "$prev" in --bundle|-b) bundle=$a ;; esac
    case "$a" in --bundle=*) bundle=${{a#--bundle=}} ;; esac
    prev=$a
done
if [ -n "${{bundle:-}}" ] && [ -f "$bundle/config.json" ]; then
    sed -i 's/"ociVersion": *"1\.[1-9][^"]*"/"ociVersion":"1.0.2-dev"/' "$bundle/config.json"
fi
exec {} "$@"
"#,
        real.display()
    );
    let p = dir.join("crun");
    std::fs::write(&p, script)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// File name of the gVisor wrapper in the harness's shim bin dir.
pub const RUNSC_WRAPPER: &str = "runsc-ptrace";

/// Debian's runsc (2022) works on this machine only with `--platform=ptrace --network=none|host`
/// (ARCHITECTURE.md, "Facts measured here").
fn install_runsc_wrapper(dir: &Path, runsc: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        "#!/bin/sh\n# Written by airlock-integration: gVisor as an OCI runtime for the runc.v2 shim.\n\
         exec {} --platform=ptrace --network=none \"$@\"\n",
        runsc.display()
    );
    let p = dir.join(RUNSC_WRAPPER);
    std::fs::write(&p, script)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Root the runc.v2 shim gives its OCI runtime, per namespace (`--root`).
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// The OCI runtime's state under [`RUNC_ROOT`] of namespace `ns` (all of it) or of container
/// `id` in it: runc's `<id>/` and runsc's `<id>_sandbox:<sandbox>.{state,lock}`, which a runsc
/// container whose delete failed (its sandbox killed) leaves behind.
fn remove_runc_state(ns: &str, id: Option<&str>) {
    let root = Path::new(RUNC_ROOT).join(ns);
    let Some(id) = id else {
        let _ = std::fs::remove_dir_all(&root);
        return;
    };
    let _ = std::fs::remove_dir_all(root.join(id));
    let runsc = format!("{id}_sandbox:");
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&runsc) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn remove_cgroup_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// A shim process of this containerd.
#[derive(Debug, Clone)]
pub struct ShimProc {
    pub pid: i32,
    pub namespace: String,
    pub id: String,
    pub binary: String,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "airlock-integration: containerd {} log tail:\n{}",
                self.version.label(),
                self.log_tail(30)
            );
        }
        self.stop();
    }
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("version", &self.version)
            .field("pid", &self.pid)
            .field("dir", &self.dir.as_ref().map(|d| d.path().to_path_buf()))
            .finish()
    }
}

/// The CRI runtime handler of the microVM mode.
pub const VM_HANDLER: &str = "airlock-vm";

/// containerd's CRI namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Where Debian's containernetworking-plugins install the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// A bridge network for CRI pods (10.88.0.0/24, default route through the bridge, no NAT): it exists only inside containerd's
/// private network namespace (see `Builder::cri`); IPAM state lives in the temp dir.
fn write_cni_config(dir: &Path) -> Result<()> {
    let net_d = dir.join("cni").join("net.d");
    std::fs::create_dir_all(&net_d)?;
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "airlock-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "airlock0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.88.0.0/24" }]],
                // A default route through the bridge, as a cluster's CNI gives every pod.
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni").join("ipam"),
            }
        }]
    });
    std::fs::write(
        net_d.join("10-airlock-test.conflist"),
        serde_json::to_vec_pretty(&conf)?,
    )?;
    Ok(())
}
