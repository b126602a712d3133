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
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        Error::InvalidArgument(format!(
            "cannot decode the runtime options ({}): {e}",
            any.type_url
        ))
    };
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3) | 2 {
            path = Some(input.read_string().map_err(bad)?);
        } else {
            let wire = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7)
                .ok_or_else(|| Error::InvalidArgument("malformed runtime options".into()))?;
            input.skip_field(wire).map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// The microVM mode is not in this build: a container whose runtime handler is `airlock-vm`
/// (containerd >= 1.7 names it) must not start as a process sandbox instead (fail closed).
pub fn check_handler(handler: &str) -> Result<()> {
    if handler == airlock_policies::config::HANDLER_VM {
        return Err(Error::FailedPrecondition(format!(
            "runtime handler {handler:?} needs the microVM mode, which this Airlock build does \
             not have; the container is not started outside a VM (use RuntimeClass airlock)"
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
