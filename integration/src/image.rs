//! A busybox-static image built locally as an OCI image-layout tarball (no registry involved).

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Local image name; never resolved against a registry (images are imported only).
pub const IMAGE_REF: &str = "airlock.test/busybox:latest";

/// The CRI sandbox ("pause") image: the same busybox layer, a command that waits for a signal.
pub const PAUSE_REF: &str = "airlock.test/pause:latest";
const PAUSE_CMD: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done",
];

/// Host file the image is built from.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into /bin (shell builtins such as `trap` need no link).
pub const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "cat", "sleep", "id", "ls", "kill", "env", "head", "dd", "yes",
    "wc", "grep", "ps", "mount", "touch", "mkdir", "rm", "printf", "test", "[", "stat", "seq",
];

/// Bump when the layout of the produced image changes, to invalidate caches.
const FORMAT: &str = "airlock-busybox-v1";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    // Path is set by the append_* call.
    let _ = path;
    h
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut h = header(path, tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut h = header(path, tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data)?;
    Ok(())
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> Result<()> {
    let mut h = header(path, tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, path, target)?;
    Ok(())
}

/// The rootfs layer as an uncompressed tar.
fn rootfs_tar(busybox: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (d, mode) in [
        ("bin", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("root", 0o700),
    ] {
        add_dir(&mut b, d, mode)?;
    }
    add_file(&mut b, "bin/busybox", 0o755, busybox)?;
    for a in APPLETS {
        add_symlink(&mut b, &format!("bin/{a}"), "busybox")?;
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    add_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    Ok(b.into_inner()?)
}

/// Builds the OCI image-layout tarball of [`IMAGE_REF`] in memory.
pub fn build_oci_tar(busybox: &[u8]) -> Result<Vec<u8>> {
    build_image_tar(busybox, IMAGE_REF, &["sh"])
}

/// Builds an OCI image-layout tarball named `image_ref` whose command is `cmd`.
fn build_image_tar(busybox: &[u8], image_ref: &str, cmd: &[&str]) -> Result<Vec<u8>> {
    let layer = rootfs_tar(busybox)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;
    let layer_digest = sha256_hex(&layer_gz);

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "airlock-integration" }]
    }))?;
    let config_digest = sha256_hex(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len()
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_gz.len()
        }]
    }))?;
    let manifest_digest = sha256_hex(&manifest);

    let (_, tag) = image_ref.rsplit_once(':').expect("ref has a tag");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": image_ref,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    }))?;

    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    add_file(
        &mut b,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    add_file(&mut b, "index.json", 0o644, &index)?;
    add_dir(&mut b, "blobs", 0o755)?;
    add_dir(&mut b, "blobs/sha256", 0o755)?;
    for (d, data) in [
        (&manifest_digest, &manifest),
        (&config_digest, &config),
        (&layer_digest, &layer_gz),
    ] {
        add_file(&mut b, &format!("blobs/sha256/{d}"), 0o644, data)?;
    }
    Ok(b.into_inner()?)
}

/// Path of the cached image tarball, built on first use (keyed by the busybox binary's hash).
pub fn busybox_image_tar() -> Result<PathBuf> {
    busybox_image_tar_in(&crate::target_dir().join("airlock-integration"))
}

/// Like [`busybox_image_tar`] with an explicit cache directory.
pub fn busybox_image_tar_in(cache_dir: &Path) -> Result<PathBuf> {
    cached_image_tar(cache_dir, "busybox", IMAGE_REF, &["sh"])
}

/// Path of the cached CRI sandbox image tarball ([`PAUSE_REF`]).
pub fn pause_image_tar() -> Result<PathBuf> {
    cached_image_tar(
        &crate::target_dir().join("airlock-integration"),
        "pause",
        PAUSE_REF,
        PAUSE_CMD,
    )
}

fn cached_image_tar(
    cache_dir: &Path,
    name: &str,
    image_ref: &str,
    cmd: &[&str],
) -> Result<PathBuf> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("read {BUSYBOX} (apt install busybox-static)"))?;
    let key = sha256_hex(
        &[
            FORMAT.as_bytes(),
            image_ref.as_bytes(),
            cmd.join("\0").as_bytes(),
            &busybox,
        ]
        .concat(),
    );
    let path = cache_dir.join(format!("{name}-{}.oci.tar", &key[..16]));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir)?;
    let data = build_image_tar(&busybox, image_ref, cmd)?;
    // Write then rename, so parallel tests (threads and binaries) never see a partial file;
    // the temp name is unique per writer.
    static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = cache_dir.join(format!(
        ".{name}-{}.{}.{}.tmp",
        &key[..16],
        std::process::id(),
        WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Chain ID of the image's (single) layer: the parent snapshot of every container rootfs.
pub fn busybox_chain_id() -> Result<String> {
    static CHAIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(c) = CHAIN.get() {
        return Ok(c.clone());
    }
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    // For a one-layer image the chain ID is the layer's diff ID.
    let id = format!("sha256:{}", sha256_hex(&rootfs_tar(&busybox)?));
    Ok(CHAIN.get_or_init(|| id).clone())
}

/// Unpacks the image's rootfs (the same layer `busybox_image_tar` holds) into `dir`, for runtimes
/// driven directly on a bundle without containerd.
pub fn unpack_rootfs(dir: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    let layer = rootfs_tar(&busybox)?;
    std::fs::create_dir_all(dir)?;
    tar::Archive::new(layer.as_slice())
        .unpack(dir)
        .with_context(|| format!("unpack rootfs into {}", dir.display()))
}
