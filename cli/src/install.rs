//! `airlock install`: binaries, `/etc/airlock`, the containerd drop-in and its `imports` line.
//!
//! `--prefix DIR` is a staging root (like `DESTDIR`): every file goes under DIR, while the
//! files' contents name the final paths (`/etc/airlock/config.toml`, ...). So a test, or a
//! package build, installs into a temp dir without touching the machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use airlock_policies::config::{
    DEFAULT_CONFIG_PATH, DEFAULT_POLICIES_DIR, DEFAULT_VM_DIR, HANDLER_PROCESS as HANDLER,
    HANDLER_VM,
};
use toml_edit::{Array, DocumentMut, Item, Value};

use crate::dropin::{self, ConfigVersion, ContainerdVersion};
use crate::Error;

/// Binaries installed into `BIN_DIR`.
pub const BINARIES: &[&str] = &[
    "containerd-shim-airlock-v2",
    "airlock-runtime",
    "airlock",
    "airlock-agent",
];
/// The shim's second name, which selects the microVM mode.
pub const VM_SHIM_BINARY: &str = "containerd-shim-airlock-vm-v2";
/// Where binaries go (on containerd's PATH on Debian and most distributions).
pub const BIN_DIR: &str = "/usr/local/bin";
/// containerd's default config file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Where the drop-in goes.
pub const DROPIN_PATH: &str = "/etc/containerd/conf.d/airlock.toml";
/// The `imports` entry added when containerd's config has none covering the drop-in.
pub const IMPORTS_GLOB: &str = "/etc/containerd/conf.d/*.toml";
/// The node label the RuntimeClasses select.
pub const NODE_LABEL: &str = "airlock.dev/runtime=true";

/// `/etc/airlock/config.toml` as installed (also `deploy/airlock-config.toml`).
pub fn config_template() -> String {
    format!(
        r#"# Airlock node configuration. The shim (containerd-shim-airlock-v2) reads it at the first
# container of each pod and keeps it for the pod's lifetime: changes apply to new pods.
# Its path is the containerd runtime option ConfigPath (default {DEFAULT_CONFIG_PATH}).
# Check it with `airlock doctor`; list policies with `airlock policy list`.

# Operator policies: one NAME.toml per policy (`airlock policy lint FILE` checks one).
# A file may not reuse a built-in name (agent-strict, agent-default, baseline).
policies_dir = "{DEFAULT_POLICIES_DIR}"

# The handler assumed when containerd does not name one (containerd 1.6 never does;
# >= 1.7 sets io.containerd.cri.runtime-handler).
default_handler = "airlock"

# The policy of a pod without the airlock.dev/policy annotation, per RuntimeClass handler.
[handlers.airlock]
default_policy = "agent-strict"

[handlers.airlock-vm]
default_policy = "agent-strict"
"#
    )
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Staging root; `/` installs for real.
    pub prefix: PathBuf,
    /// containerd's config, as a final path (placed under `prefix`).
    pub containerd_config: PathBuf,
    /// Where the binaries are copied from (default: next to the running `airlock`).
    pub source_dir: PathBuf,
    /// The containerd release to configure for (detected from `containerd --version`).
    pub containerd: ContainerdVersion,
    pub dry_run: bool,
    /// Where the microVM guest's kernel is looked for (Debian's cloud kernel, `/boot`) and
    /// the kernels' modules (`/lib/modules`).
    pub kernels: PathBuf,
    pub modules: PathBuf,
}

/// What install did (or would do), one line each.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    /// Steps the operator must do by hand.
    pub todo: Vec<String>,
}

impl Report {
    fn did(&mut self, dry: bool, what: impl AsRef<str>) {
        let verb = if dry { "would" } else { "did:" };
        self.lines.push(format!("{verb} {}", what.as_ref()));
    }
}

fn staged(prefix: &Path, p: &Path) -> PathBuf {
    prefix.join(p.strip_prefix("/").unwrap_or(p))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, text: impl AsRef<[u8]>, mode: u32, dry: bool) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    if dry {
        return Ok(());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    // Write beside and rename: a running containerd or shim never reads half a file, and a
    // busy binary (ETXTBSY) is replaced rather than overwritten.
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".airlock-tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    std::io::Write::write_all(&mut tmp, text.as_ref()).map_err(io(dir))?;
    // Exactly `mode`, whatever the umask took off at creation.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(dir))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// Run the install.
pub fn install(o: &Options) -> Result<Report, Error> {
    let mut r = Report::default();
    let dry = o.dry_run;

    for b in BINARIES {
        let src = o.source_dir.join(b);
        let dst = staged(&o.prefix, &Path::new(BIN_DIR).join(b));
        if !src.is_file() {
            return Err(Error::MissingBinary {
                path: src.display().to_string(),
            });
        }
        write(&dst, std::fs::read(&src).map_err(io(&src))?, 0o755, dry)?;
        r.did(
            dry,
            format!("install {} -> {}", src.display(), dst.display()),
        );
    }

    // The microVM mode is the same shim under a second name (the name selects the mode).
    let shim = staged(&o.prefix, &Path::new(BIN_DIR).join(BINARIES[0]));
    let vm_shim = staged(&o.prefix, &Path::new(BIN_DIR).join(VM_SHIM_BINARY));
    if !dry {
        let _ = std::fs::remove_file(&vm_shim);
        std::fs::hard_link(&shim, &vm_shim).map_err(io(&vm_shim))?;
    }
    r.did(
        dry,
        format!("link {} -> {}", vm_shim.display(), shim.display()),
    );

    let cfg = staged(&o.prefix, Path::new(DEFAULT_CONFIG_PATH));
    if cfg.exists() {
        r.lines
            .push(format!("kept {} (exists; not overwritten)", cfg.display()));
    } else {
        write(&cfg, config_template(), 0o644, dry)?;
        r.did(dry, format!("write {}", cfg.display()));
    }
    let pol = staged(&o.prefix, Path::new(DEFAULT_POLICIES_DIR));
    if !dry {
        std::fs::create_dir_all(&pol).map_err(io(&pol))?;
    }
    r.did(
        dry,
        format!("create {} (operator policies, NAME.toml)", pol.display()),
    );

    let version = ConfigVersion::for_containerd(o.containerd);
    match version {
        // containerd 1.6/1.7 replace a whole plugin section with an imported file's: a drop-in
        // would wipe the node's CRI settings (sandbox image, runc, ...). Merge into config.toml.
        ConfigVersion::V2 => merge_into_main(o, &mut r)?,
        ConfigVersion::V3 => {
            let dropin = staged(&o.prefix, Path::new(DROPIN_PATH));
            write(
                &dropin,
                dropin::render(version, DEFAULT_CONFIG_PATH),
                0o644,
                dry,
            )?;
            r.did(
                dry,
                format!(
                    "write {} (containerd {}: config version 3, {})",
                    dropin.display(),
                    o.containerd,
                    version.cri_plugin()
                ),
            );
            ensure_imports(o, version, &mut r)?;
        }
    }

    install_vm_guest(o, &mut r)?;

    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "NODE".into());
    r.todo.push(format!(
        "label the node for the RuntimeClasses: kubectl label node {node} {NODE_LABEL}"
    ));
    if o.prefix == Path::new("/") && !dry {
        r.todo
            .push("restart containerd to load the drop-in: systemctl restart containerd".into());
    }
    Ok(r)
}

/// The microVM guest (`[vm] kernel` and `initramfs` at their defaults): Debian's cloud kernel,
/// copied so that it stays with the modules its initramfs holds, and the initramfs built for
/// it with the agent. A node without that kernel gets a line saying what to install.
fn install_vm_guest(o: &Options, r: &mut Report) -> Result<(), Error> {
    let Some(kernel) = airlock_vm::locate::cloud_kernel(&o.kernels) else {
        r.lines.push(format!(
            "skipped the microVM guest: no {}/vmlinuz-*-cloud-amd64 (apt install \
             linux-image-cloud-amd64, then install again)",
            o.kernels.display()
        ));
        return Ok(());
    };
    let dir = staged(&o.prefix, Path::new(DEFAULT_VM_DIR));
    let (vmlinuz, initramfs) = (dir.join("vmlinuz"), dir.join("initramfs.cpio"));
    let agent = o.source_dir.join("airlock-agent");
    if !o.dry_run {
        write(
            &vmlinuz,
            std::fs::read(&kernel).map_err(io(&kernel))?,
            0o644,
            false,
        )?;
        let built = airlock_vm::initramfs::build(&vmlinuz, &o.modules, &agent, &initramfs)
            .map_err(|e| Error::VmGuest(e.to_string()))?;
        r.did(
            false,
            format!(
                "build the microVM guest: {} (kernel {}) and {} ({} bytes: the agent and {} \
                 modules)",
                vmlinuz.display(),
                built.release,
                initramfs.display(),
                built.bytes,
                built.modules.len()
            ),
        );
    } else {
        r.did(
            true,
            format!(
                "copy {} to {} and build {} for it",
                kernel.display(),
                vmlinuz.display(),
                initramfs.display()
            ),
        );
    }
    Ok(())
}

/// containerd 1.x: put the runtime's tables into containerd's own config (version 2), keeping
/// the file's other content and formatting; a missing config gets a minimal one.
fn merge_into_main(o: &Options, r: &mut Report) -> Result<(), Error> {
    let path = staged(&o.prefix, &o.containerd_config);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&path)(e)),
    };
    let (merged, todo) = merge_runtime(text.as_deref().unwrap_or(""), &path)?;
    r.todo.extend(todo);
    if text.as_deref() == Some(merged.as_str()) {
        r.lines.push(format!(
            "kept {} (already registers airlock)",
            path.display()
        ));
        return Ok(());
    }
    if let Some(t) = &text {
        let backup = path.with_extension("toml.airlock-bak");
        if !o.dry_run {
            std::fs::write(&backup, t).map_err(io(&backup))?;
        }
    }
    write(&path, merged, 0o644, o.dry_run)?;
    r.did(
        o.dry_run,
        format!(
            "register runtime airlock in {} (containerd {}: config version 2, {}; not a drop-in: \
             containerd 1.x replaces whole plugin sections on import)",
            path.display(),
            o.containerd,
            ConfigVersion::V2.cri_plugin()
        ),
    );
    Ok(())
}

/// `text` (containerd 1.x config.toml) with Airlock's runtime tables (those of
/// `deploy/containerd-airlock.toml`) set, and what the operator must check by hand.
pub fn merge_runtime(text: &str, path: &Path) -> Result<(String, Vec<String>), Error> {
    let bad = |e: toml_edit::TomlError| Error::ContainerdConfig {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut doc: DocumentMut = text.parse().map_err(bad)?;
    let mut todo = Vec::new();
    if doc.get("version").and_then(Item::as_integer).is_none() {
        if text.trim().is_empty() {
            doc.insert("version", toml_edit::value(2));
        } else {
            todo.push(format!(
                "{} has no `version` line: containerd reads it as config version 1 and ignores \
                 the airlock runtime; add `version = 2` (after checking the file is a version 2 config)",
                path.display()
            ));
        }
    }
    let snippet: DocumentMut = dropin::render(ConfigVersion::V2, DEFAULT_CONFIG_PATH)
        .parse()
        .expect("the shipped drop-in parses");
    let cri = ConfigVersion::V2.cri_plugin();
    let mut t = doc.as_table_mut();
    for k in ["plugins", cri, "containerd", "runtimes"] {
        if !t.contains_key(k) {
            let mut n = toml_edit::Table::new();
            n.set_implicit(true);
            t.insert(k, Item::Table(n));
        }
        t = t[k].as_table_mut().ok_or_else(|| Error::ContainerdConfig {
            path: path.display().to_string(),
            message: format!("`{k}` is not a table"),
        })?;
    }
    for (i, handler) in [HANDLER, HANDLER_VM].into_iter().enumerate() {
        let mut runtime = snippet["plugins"][cri]["containerd"]["runtimes"][handler].clone();
        // Keep the snippet's order but after everything already in the file.
        if let Some(rt) = runtime.as_table_mut() {
            let at = 1_000_000 + 2 * i;
            rt.set_position(at);
            if let Some(opts) = rt.get_mut("options").and_then(Item::as_table_mut) {
                opts.set_position(at + 1);
            }
        }
        t.insert(handler, runtime);
    }
    Ok((doc.to_string(), todo))
}

/// Make containerd's config import the drop-in: add `imports` (or an entry to it) when nothing
/// covers the drop-in, keeping the file's formatting; a missing config gets a minimal one.
fn ensure_imports(o: &Options, version: ConfigVersion, r: &mut Report) -> Result<(), Error> {
    let dry = o.dry_run;
    let path = staged(&o.prefix, &o.containerd_config);
    let n = if version == ConfigVersion::V2 { 2 } else { 3 };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write(
                &path,
                format!(
                    "# Written by `airlock install`: containerd's defaults plus the drop-ins.\nversion = {n}\nimports = [\"{IMPORTS_GLOB}\"]\n"
                ),
                0o644,
                dry,
            )?;
            r.did(
                dry,
                format!(
                    "write {} (version {n}, imports {IMPORTS_GLOB})",
                    path.display()
                ),
            );
            return Ok(());
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let mut doc: DocumentMut = text.parse().map_err(|e| Error::ContainerdConfig {
        path: path.display().to_string(),
        message: format!("{e}"),
    })?;
    if doc.get("version").and_then(Item::as_integer).is_none() {
        r.todo.push(format!(
            "{} has no `version` line: containerd reads it as config version 1 and ignores the \
             drop-in; add `version = {n}` (after checking the file is a version {n} config)",
            path.display()
        ));
    }
    let covered = doc
        .get("imports")
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|i| i == DROPIN_PATH || i == IMPORTS_GLOB)
        })
        .unwrap_or(false);
    if covered {
        r.lines.push(format!(
            "kept {} (already imports the drop-in)",
            path.display()
        ));
        return Ok(());
    }
    match doc.get_mut("imports") {
        None => {
            let mut a = Array::new();
            a.push(IMPORTS_GLOB);
            doc.insert("imports", Item::Value(Value::Array(a)));
        }
        Some(item) => match item.as_array_mut() {
            Some(a) => a.push(IMPORTS_GLOB),
            None => {
                r.todo.push(format!(
                    "{}: `imports` is not an array; add \"{IMPORTS_GLOB}\" to it",
                    path.display()
                ));
                return Ok(());
            }
        },
    }
    let backup = path.with_extension("toml.airlock-bak");
    if !dry {
        std::fs::write(&backup, &text).map_err(io(&backup))?;
    }
    write(&path, doc.to_string(), 0o644, dry)?;
    r.did(
        dry,
        format!(
            "add \"{IMPORTS_GLOB}\" to imports in {} (backup {})",
            path.display(),
            backup.display()
        ),
    );
    Ok(())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        for t in &self.todo {
            let _ = writeln!(s, "todo: {t}");
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(containerd: ContainerdVersion) -> (tempfile::TempDir, Options) {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for b in BINARIES {
            std::fs::write(src.join(b), b"#!/bin/sh\n").unwrap();
        }
        let o = Options {
            prefix: d.path().join("root"),
            containerd_config: PathBuf::from(CONTAINERD_CONFIG),
            source_dir: src,
            containerd,
            dry_run: false,
            kernels: d.path().join("boot"),
            modules: d.path().join("modules"),
        };
        (d, o)
    }

    const V16: ContainerdVersion = ContainerdVersion { major: 1, minor: 6 };
    const V21: ContainerdVersion = ContainerdVersion { major: 2, minor: 1 };

    #[test]
    fn installs_into_prefix_for_containerd_1_6() {
        let (_d, o) = setup(V16);
        let r = install(&o).unwrap();
        let root = &o.prefix;
        for b in BINARIES {
            assert!(root.join("usr/local/bin").join(b).is_file(), "{b}");
        }
        let bin = root.join("usr/local/bin");
        assert_eq!(
            std::fs::read(bin.join(VM_SHIM_BINARY)).unwrap(),
            std::fs::read(bin.join(BINARIES[0])).unwrap(),
            "the microVM shim is the shim under a second name"
        );
        let cfg = std::fs::read_to_string(root.join("etc/airlock/config.toml")).unwrap();
        assert_eq!(cfg, config_template());
        // 1.x: no drop-in (an import would replace the whole CRI section), the main config.
        assert!(!root.join("etc/containerd/conf.d/airlock.toml").exists());
        let main = std::fs::read_to_string(root.join("etc/containerd/config.toml")).unwrap();
        let doc: toml::Table = toml::from_str(&main).unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2), "{main}");
        let rt = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["airlock"];
        assert_eq!(
            rt["runtime_type"].as_str(),
            Some("io.containerd.airlock.v2"),
            "{main}"
        );
        assert_eq!(
            rt["options"]["ConfigPath"].as_str(),
            Some(DEFAULT_CONFIG_PATH),
            "{main}"
        );
        let vm = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][HANDLER_VM];
        assert_eq!(
            vm["runtime_type"].as_str(),
            Some("io.containerd.airlock-vm.v2"),
            "{main}"
        );
        let text = r.to_string();
        assert!(
            text.contains("kubectl label node") && text.contains(NODE_LABEL),
            "{text}"
        );
        // Second run keeps the operator's config and the imports.
        std::fs::write(
            root.join("etc/airlock/config.toml"),
            "default_handler = \"airlock\"\n",
        )
        .unwrap();
        let text = install(&o).unwrap().to_string();
        assert!(
            text.contains("kept") && text.contains("already registers"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/airlock/config.toml")).unwrap(),
            "default_handler = \"airlock\"\n"
        );
    }

    #[test]
    fn containerd_2_gets_v3_and_an_imports_entry_keeping_the_file() {
        let (_d, o) = setup(V21);
        let main = o.prefix.join("etc/containerd/config.toml");
        std::fs::create_dir_all(main.parent().unwrap()).unwrap();
        let original = "version = 3\n# my comment\nimports = []\n\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_selinux = false\n";
        std::fs::write(&main, original).unwrap();
        install(&o).unwrap();
        let dropin =
            std::fs::read_to_string(o.prefix.join("etc/containerd/conf.d/airlock.toml")).unwrap();
        assert!(dropin.contains("io.containerd.cri.v1.runtime") && dropin.contains("version = 3"));
        let new = std::fs::read_to_string(&main).unwrap();
        assert!(
            new.contains("# my comment") && new.contains("enable_selinux = false"),
            "{new}"
        );
        let doc: toml::Table = toml::from_str(&new).unwrap();
        assert_eq!(doc["imports"][0].as_str(), Some(IMPORTS_GLOB));
        assert_eq!(
            std::fs::read_to_string(main.with_extension("toml.airlock-bak")).unwrap(),
            original
        );
    }

    #[test]
    fn merge_keeps_the_nodes_cri_settings() {
        let main = "version = 2\n# mine\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"mine:1\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let (out, todo) = merge_runtime(main, Path::new("c.toml")).unwrap();
        assert!(todo.is_empty());
        assert!(out.starts_with(main), "appends, keeps the rest:\n{out}");
        let doc: toml::Table = toml::from_str(&out).unwrap();
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("mine:1"));
        assert!(cri["containerd"]["runtimes"].get("runc").is_some());
        assert_eq!(
            cri["containerd"]["runtimes"]["airlock"]["pod_annotations"][0].as_str(),
            Some("airlock.dev/*")
        );
        let (again, _) = merge_runtime(&out, Path::new("c.toml")).unwrap();
        assert_eq!(again, out, "idempotent");
    }

    #[test]
    fn versionless_config_is_reported() {
        let (_d, o) = setup(V16);
        let main = o.prefix.join("etc/containerd/config.toml");
        std::fs::create_dir_all(main.parent().unwrap()).unwrap();
        std::fs::write(&main, "[grpc]\n  address = \"/x\"\n").unwrap();
        let r = install(&o).unwrap();
        assert!(r.todo.iter().any(|t| t.contains("version = 2")), "{r}");
    }

    #[test]
    fn dry_run_writes_nothing() {
        let (_d, mut o) = setup(V16);
        o.dry_run = true;
        let r = install(&o).unwrap();
        assert!(!o.prefix.exists());
        assert!(
            r.lines.iter().all(|l| l.starts_with("would ")
                || l.starts_with("kept")
                || l.starts_with("skipped")),
            "{r}"
        );
    }

    #[test]
    fn a_node_without_the_cloud_kernel_is_told_what_to_install() {
        let (_d, o) = setup(V16);
        let r = install(&o).unwrap();
        assert!(
            r.lines
                .iter()
                .any(|l| l.starts_with("skipped the microVM guest")
                    && l.contains("apt install linux-image-cloud-amd64")),
            "{r}"
        );
        assert!(!o.prefix.join("var/lib/airlock/vm").exists());
    }

    #[test]
    fn missing_binary_is_named() {
        let (_d, o) = setup(V16);
        std::fs::remove_file(o.source_dir.join("airlock-runtime")).unwrap();
        let e = install(&o).unwrap_err().to_string();
        assert!(
            e.contains("airlock-runtime") && e.contains("cargo build --release"),
            "{e}"
        );
    }

    #[test]
    fn deploy_config_is_the_template() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/airlock-config.toml");
        if std::env::var_os("AIRLOCK_REGENERATE").is_some() {
            std::fs::write(&p, config_template()).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&p).unwrap_or_default(),
            config_template()
        );
        let c = airlock_policies::Config::parse(&config_template(), "template").unwrap();
        assert_eq!(c, airlock_policies::Config::default());
    }
}
