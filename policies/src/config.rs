//! The node's Airlock configuration, `/etc/airlock/config.toml`.
//!
//! ```toml
//! policies_dir = "/etc/airlock/policies"   # operator policies, NAME.toml each
//! default_handler = "airlock"              # handler assumed when containerd does not name one
//!
//! [handlers.airlock]
//! default_policy = "agent-strict"
//! [handlers.airlock-vm]
//! default_policy = "agent-strict"
//!
//! [vm]                                     # the microVM mode (see `VmConfig`)
//! accelerator = "kvm"
//! ```
//!
//! Every field is optional; a missing file at the default path means these defaults. Unknown
//! fields are errors (a typo must not silently fall back to a default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::vm_config::{AcceleratorChoice, VmConfig, DEFAULT_VM_DIR};
use crate::{locate, Error, PolicySet, Result, DEFAULT_POLICY};

/// Default config file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/airlock/config.toml";
/// Default operator policies directory.
pub const DEFAULT_POLICIES_DIR: &str = "/etc/airlock/policies";
/// The process-sandbox handler (RuntimeClass `airlock`).
pub const HANDLER_PROCESS: &str = "airlock";
/// The microVM handler (RuntimeClass `airlock-vm`).
pub const HANDLER_VM: &str = "airlock-vm";
/// The annotation containerd >= 1.7 puts on CRI sandbox and container specs naming the
/// RuntimeClass handler (containerd 1.6 does not set it: `default_handler` applies there).
pub const RUNTIME_HANDLER_ANNOTATION: &str = "io.containerd.cri.runtime-handler";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_policies_dir")]
    pub policies_dir: PathBuf,
    #[serde(default = "default_handler")]
    pub default_handler: String,
    #[serde(default = "default_handlers")]
    pub handlers: BTreeMap<String, Handler>,
    /// How the microVM mode boots a pod's VM.
    #[serde(default)]
    pub vm: VmConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    /// The policy of a container whose pod has no `airlock.dev/policy` annotation.
    pub default_policy: String,
}

fn default_policies_dir() -> PathBuf {
    PathBuf::from(DEFAULT_POLICIES_DIR)
}

fn default_handler() -> String {
    HANDLER_PROCESS.to_string()
}

fn default_handlers() -> BTreeMap<String, Handler> {
    [HANDLER_PROCESS, HANDLER_VM]
        .iter()
        .map(|h| {
            (
                h.to_string(),
                Handler {
                    default_policy: DEFAULT_POLICY.to_string(),
                },
            )
        })
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policies_dir: default_policies_dir(),
            default_handler: default_handler(),
            handlers: default_handlers(),
            vm: VmConfig::default(),
        }
    }
}

/// A config with the policies it refers to, ready for policy selection.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file it came from; `None` when the defaults were used (no file at the default path).
    pub file: Option<PathBuf>,
    pub config: Config,
    pub policies: PolicySet,
}

impl Config {
    /// Parse `text` (named `file` in errors) without checking policy names.
    pub fn parse(text: &str, file: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if !config.policies_dir.is_absolute() {
            return Err(config_error(
                text,
                file,
                "policies_dir",
                None,
                format!(
                    "policies_dir: {} must be an absolute path",
                    config.policies_dir.display()
                ),
            ));
        }
        if let Err((field, message)) = config.vm.check() {
            return Err(config_error(text, file, field, None, message));
        }
        Ok(config)
    }

    /// The default policy of `handler`, or an error naming the configured handlers.
    pub fn default_policy(&self, handler: &str) -> Result<&str> {
        self.handlers
            .get(handler)
            .map(|h| h.default_policy.as_str())
            .ok_or_else(|| Error::UnknownHandler {
                handler: handler.to_string(),
                known: self.handlers.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Load the operator policies and check that every handler's default policy exists.
    pub fn resolve(self, file: Option<PathBuf>, text: &str) -> Result<Loaded> {
        let name = file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "<default config>".into());
        // The default directory may be absent (no operator policies); one the operator named
        // must exist: a typo there would otherwise drop their policies without a word.
        if self.policies_dir != default_policies_dir() && !self.policies_dir.is_dir() {
            return Err(config_error(
                text,
                &name,
                "policies_dir",
                None,
                format!(
                    "policies_dir: {} does not exist or is not a directory; create it (operator \
                     policies go there as NAME.toml) or remove policies_dir to use {}",
                    self.policies_dir.display(),
                    DEFAULT_POLICIES_DIR
                ),
            ));
        }
        let policies = PolicySet::with_dir(&self.policies_dir)?;
        for (h, cfg) in &self.handlers {
            if policies.get(&cfg.default_policy).is_none() {
                return Err(config_error(
                    text,
                    &name,
                    &format!("handlers.{h}.default_policy"),
                    Some(&cfg.default_policy),
                    format!(
                        "handlers.{h}.default_policy: no policy {:?}; known: {} (operator \
                         policies are read from {})",
                        cfg.default_policy,
                        policies.names().collect::<Vec<_>>().join(", "),
                        self.policies_dir.display()
                    ),
                ));
            }
        }
        Ok(Loaded {
            file,
            config: self,
            policies,
        })
    }
}

fn config_error(text: &str, file: &str, field: &str, value: Option<&str>, msg: String) -> Error {
    let line = locate::line_of(text, field, value);
    Error::Config {
        file: file.to_string(),
        message: match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        },
    }
}

/// Load the config at `path` with its policies. A missing file is the defaults when `path`
/// is the default path ([`DEFAULT_CONFIG_PATH`] or `default_path`), else an error: an
/// explicitly configured path that does not exist is a deployment mistake.
pub fn load(path: &Path, default_path: &Path) -> Result<Loaded> {
    match std::fs::read_to_string(path) {
        Ok(text) => Config::parse(&text, &path.display().to_string())?
            .resolve(Some(path.to_path_buf()), &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == default_path => {
            Config::default().resolve(None, "")
        }
        Err(source) => Err(Error::ConfigRead {
            file: path.display().to_string(),
            source,
        }),
    }
}

impl Loaded {
    /// The handler of a container: containerd's runtime-handler annotation if present, else
    /// the config's `default_handler`.
    pub fn handler<'a>(
        &'a self,
        annotations: Option<&'a std::collections::HashMap<String, String>>,
    ) -> &'a str {
        annotations
            .and_then(|a| a.get(RUNTIME_HANDLER_ANNOTATION))
            .map(String::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.config.default_handler)
    }

    /// Pick the policy for a container with these OCI annotations.
    pub fn select(
        &self,
        annotations: Option<&std::collections::HashMap<String, String>>,
    ) -> Result<&crate::Policy> {
        let default = self.config.default_policy(self.handler(annotations))?;
        self.policies.select(annotations, default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policies_dir_the_operator_named_must_exist() {
        let text = "policies_dir = \"/nonexistent/airlock-policies\"\n";
        let e = Config::parse(text, "c.toml")
            .unwrap()
            .resolve(Some("c.toml".into()), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/airlock-policies does not exist") && e.contains("c.toml"),
            "{e}"
        );
    }
    use std::collections::HashMap;

    #[test]
    fn missing_default_file_is_defaults() {
        let p = Path::new("/nonexistent/airlock/config.toml");
        let l = load(p, p).unwrap();
        assert!(l.file.is_none());
        assert_eq!(l.select(None).unwrap().name, DEFAULT_POLICY);
        assert_eq!(l.config.default_policy(HANDLER_VM).unwrap(), DEFAULT_POLICY);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = load(
            Path::new("/nonexistent/other.toml"),
            Path::new(DEFAULT_CONFIG_PATH),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/other.toml"), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error_with_line() {
        let e = Config::parse(
            "default_handler = \"airlock\"\npolicy_dir = \"/x\"\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("c.toml") && e.contains("line 2") && e.contains("policy_dir"),
            "{e}"
        );
    }

    #[test]
    fn unknown_default_policy_names_line_and_known() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("policies")).unwrap();
        let text = format!(
            "policies_dir = {:?}\n[handlers.airlock]\ndefault_policy = \"nope\"\n",
            d.path().join("policies").display().to_string()
        );
        let f = d.path().join("config.toml");
        std::fs::write(&f, &text).unwrap();
        let e = load(&f, Path::new(DEFAULT_CONFIG_PATH))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("\"nope\"") && e.contains("agent-strict"),
            "{e}"
        );
    }

    #[test]
    fn handler_annotation_and_operator_default() {
        let d = tempfile::tempdir().unwrap();
        let pol = d.path().join("policies");
        std::fs::create_dir(&pol).unwrap();
        std::fs::write(
            pol.join("vm-open.toml"),
            "name = \"vm-open\"\n[process]\nno_new_privileges = true\ncapabilities = [\"CAP_CHOWN\"]\n[filesystem]\nreadonly_rootfs = false\n",
        )
        .unwrap();
        let text = format!(
            "policies_dir = {:?}\n[handlers.airlock]\ndefault_policy = \"agent-strict\"\n[handlers.airlock-vm]\ndefault_policy = \"vm-open\"\n",
            pol.display().to_string()
        );
        let f = d.path().join("config.toml");
        std::fs::write(&f, &text).unwrap();
        let l = load(&f, Path::new(DEFAULT_CONFIG_PATH)).unwrap();
        assert_eq!(l.select(None).unwrap().name, "agent-strict");
        let mut a = HashMap::new();
        a.insert(
            RUNTIME_HANDLER_ANNOTATION.to_string(),
            HANDLER_VM.to_string(),
        );
        assert_eq!(l.select(Some(&a)).unwrap().name, "vm-open");
        a.insert(RUNTIME_HANDLER_ANNOTATION.to_string(), "other".to_string());
        let e = l.select(Some(&a)).unwrap_err().to_string();
        assert!(e.contains("\"other\"") && e.contains("airlock-vm"), "{e}");
    }

    #[test]
    fn relative_dir_is_refused_with_line() {
        let e = Config::parse("policies_dir = \"rel\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_vm_table_defaults_to_hardware_kvm_and_checks_its_values() {
        let c = Config::parse("", "c.toml").unwrap();
        assert_eq!(c.vm.accelerator, AcceleratorChoice::Kvm);
        assert_eq!(c.vm.memory_mib, 256);
        let c = Config::parse("[vm]\naccelerator = \"auto\"\nvcpus = 2\n", "c.toml").unwrap();
        assert_eq!((c.vm.accelerator, c.vm.vcpus), (AcceleratorChoice::Auto, 2));
        for (text, want) in [
            ("[vm]\naccelerator = \"hvf\"\n", "unknown variant `hvf`"),
            (
                "[vm]\nkernel = \"vmlinuz\"\n",
                "line 2: vm.kernel: vmlinuz must be an absolute path",
            ),
            (
                "[vm]\n\nmemory_mib = 16\n",
                "line 3: vm.memory_mib: 16 is not between 64",
            ),
            ("[vm]\nvcpu = 1\n", "unknown field `vcpu`"),
        ] {
            let e = Config::parse(text, "c.toml").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("c.toml"), "{text:?}: {e}");
        }
    }
}
