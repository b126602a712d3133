//! The node config (`/etc/airlock/config.toml`, or the runtime options' `ConfigPath`) as the
//! shim uses it: read at the first create of the pod and cached for the shim's lifetime (one
//! shim per pod), so an operator's change applies to pods started after it.
//!
//! containerd passes the runtime's TOML `options` table to the shim as Task.Create `options`:
//! for a runtime type other than runc, CRI encodes it as `runtimeoptions.v1.Options`
//! (`type_url = 1`, `config_path = 2`), and so does `ctr run --runtime-config-path`.
//! `containerd-shim-protos` 0.11 has no Rust type for that message, so it is decoded here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use airlock_policies::config::{self, Loaded, DEFAULT_CONFIG_PATH};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use crate::error::{Error, Result};

/// Type URL suffix of containerd's `runtimeoptions.v1.Options`.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The `config_path` of Task.Create `options`, if they are `runtimeoptions.v1.Options` with one.
pub fn config_path_from_options(options: Option<&Any>) -> Result<Option<PathBuf>> {
    let Some(any) = options else { return Ok(None) };
    if !any.type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
        return Ok(None);
    }
    Ok(string_field(any, 2)?.map(PathBuf::from))
}

/// Type URL suffixes of the options messages that carry a shim cgroup, with its field number:
/// runc's `containerd.runc.v1.Options` (`shim_cgroup = 3`), and the older
/// `containerd.linux.runc.CreateOptions` (`shim_cgroup = 9`) that containerd's Go client sends
/// (`containerd.WithShimCgroup`) to any runtime whose name does not start with
/// `io.containerd.runc`.
const SHIM_CGROUP_FIELDS: &[(&str, u32)] = &[
    ("containerd.runc.v1.Options", 3),
    ("containerd.linux.runc.CreateOptions", 9),
];

/// The shim cgroup the runtime options name (what containerd writes to `shim start`'s stdin),
/// decoded by the options' type URL; `None` for any other options type.
pub fn shim_cgroup_from_options(any: &Any) -> Result<Option<String>> {
    match SHIM_CGROUP_FIELDS
        .iter()
        .find(|(t, _)| any.type_url.ends_with(t))
    {
        Some(&(_, field)) => string_field(any, field),
        None => Ok(None),
    }
}

/// The last value of string field `field` of the message in `any` (protobuf's rule for a
/// repeated scalar), `None` when absent or empty; every other field is skipped.
fn string_field(any: &Any, field: u32) -> Result<Option<String>> {
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        Error::InvalidArgument(format!(
            "cannot decode the runtime options ({}): {e}",
            any.type_url
        ))
    };
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut value = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (field << 3) | 2 {
            value = Some(input.read_string().map_err(bad)?);
        } else {
            let wire =
                containerd_shim::protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "malformed runtime options ({}): wire type {}",
                        any.type_url,
                        tag & 7
                    ))
                })?;
            input.skip_field(wire).map_err(bad)?;
        }
    }
    Ok(value.filter(|v| !v.is_empty()))
}

/// A container whose runtime handler is `airlock-vm` (containerd >= 1.7 names it) that reached
/// the process sandbox's shim (a node that maps the handler to `io.containerd.airlock.v2`)
/// must not start outside a VM (fail closed).
pub fn check_handler(handler: &str) -> Result<()> {
    if handler == airlock_policies::config::HANDLER_VM {
        return Err(Error::FailedPrecondition(format!(
            "runtime handler {handler:?} needs the microVM mode, and this is the process \
             sandbox's shim; map the handler to runtime_type io.containerd.airlock-vm.v2 \
             (binary containerd-shim-airlock-vm-v2) in containerd's config. The container is \
             not started outside a VM"
        )));
    }
    Ok(())
}

/// The config of this shim's pod, loaded once.
#[derive(Default)]
pub struct ConfigCache {
    cached: Mutex<Option<(PathBuf, Arc<Loaded>)>>,
}

impl ConfigCache {
    /// The config at `path` (default path if `None`). A failed load is not cached, so a fixed
    /// file is picked up by the pod's next create.
    pub fn get(&self, path: Option<&Path>) -> Result<Arc<Loaded>> {
        let path = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
        let mut cached = self.cached.lock().expect("config cache lock");
        if let Some((p, l)) = cached.as_ref() {
            if p == path {
                return Ok(l.clone());
            }
        }
        let loaded = Arc::new(config::load(path, Path::new(DEFAULT_CONFIG_PATH))?);
        *cached = Some((path.to_path_buf(), loaded.clone()));
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf message of string fields, encoded by hand: `(field, value)`, plus a varint
    /// field 1 = 1 first, so decoding must skip fields it does not want.
    fn message(fields: &[(u32, &str)]) -> Vec<u8> {
        let mut out = vec![1 << 3, 1];
        for (f, v) in fields {
            out.push(((f << 3) | 2) as u8);
            out.push(v.len() as u8);
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    #[test]
    fn the_shim_cgroup_is_read_by_type_url() {
        let runc = any(
            "containerd.runc.v1.Options",
            message(&[(3, "/shims/a"), (6, "crun")]),
        );
        assert_eq!(
            shim_cgroup_from_options(&runc).unwrap().as_deref(),
            Some("/shims/a")
        );
        // The Go client's WithShimCgroup to a runtime not named io.containerd.runc*.
        let create = any(
            "type.googleapis.com/containerd.linux.runc.CreateOptions",
            message(&[(3, "/not/this"), (9, "/shims/b")]),
        );
        assert_eq!(
            shim_cgroup_from_options(&create).unwrap().as_deref(),
            Some("/shims/b")
        );
        let other = any(RUNTIME_OPTIONS_TYPE, message(&[(2, "/etc/x.toml")]));
        assert_eq!(shim_cgroup_from_options(&other).unwrap(), None);
        let empty = any("containerd.runc.v1.Options", Vec::new());
        assert_eq!(shim_cgroup_from_options(&empty).unwrap(), None);
        let e = shim_cgroup_from_options(&any("containerd.runc.v1.Options", vec![0x1f]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("containerd.runc.v1.Options"), "{e}");
    }

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/a.toml" (field 2), unknown varint 7 = 1.
        let mut v = vec![0x0a, 1, b'x', 0x12, 11];
        v.extend_from_slice(b"/etc/a.toml");
        v.extend_from_slice(&[0x38, 1]);
        let a = any("runtimeoptions.v1.Options", v);
        assert_eq!(
            config_path_from_options(Some(&a)).unwrap(),
            Some(PathBuf::from("/etc/a.toml"))
        );
        assert_eq!(config_path_from_options(None).unwrap(), None);
        let runc = any("containerd.runc.v1.Options", vec![0x12, 1, b'x']);
        assert_eq!(config_path_from_options(Some(&runc)).unwrap(), None);
        let truncated = any("runtimeoptions.v1.Options", vec![0x12, 20, b'x']);
        assert!(config_path_from_options(Some(&truncated)).is_err());
    }

    #[test]
    fn vm_handler_fails_closed() {
        assert!(check_handler("airlock").is_ok());
        let e = check_handler("airlock-vm").unwrap_err().to_string();
        assert!(e.contains("microVM"), "{e}");
    }

    #[test]
    fn cache_reuses_and_does_not_cache_errors() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.toml");
        std::fs::write(&f, "bogus = 1\n").unwrap();
        let cache = ConfigCache::default();
        assert!(cache.get(Some(&f)).is_err());
        std::fs::create_dir(d.path().join("p")).unwrap();
        std::fs::write(
            &f,
            format!(
                "policies_dir = {:?}\n",
                d.path().join("p").display().to_string()
            ),
        )
        .unwrap();
        let a = cache.get(Some(&f)).unwrap();
        std::fs::write(&f, "bogus = 1\n").unwrap();
        let b = cache.get(Some(&f)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached for the pod's lifetime");
    }
}
