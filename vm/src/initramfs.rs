//! The guest's initramfs: the static `airlock-agent` as `/init` and the kernel modules it
//! needs, nothing else (no shell, no busybox, no modprobe).
//!
//! The archive is an uncompressed newc cpio (an uncompressed one reached agent-ready about
//! 0.19 s sooner than a gzipped one under emulation here: the kernel's inflate is slower than
//! reading the larger file). The modules come from `/lib/modules/<release>` of the kernel
//! image's own release (read from the image's header), uncompressed where Debian ships them
//! compressed, with a `modules.dep` trimmed to them and written in load order.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use airlock_agent::modules::{self, ModuleDep, GUEST_MODULES};
use cpio::newc::{self, ModeFileType};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing the initramfs {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a bzImage kernel with a version string (its release names the modules \
         directory); pass the kernel image itself, e.g. /boot/vmlinuz-<release>"
    )]
    NotAKernel { path: PathBuf },
    #[error("{0} (modules directory {1})")]
    Modules(modules::Error, PathBuf),
    #[error(
        "kernel module {path} is compressed, and the guest kernel loads only uncompressed \
         modules from this initramfs; use a kernel whose modules are installed uncompressed \
         (Debian's cloud kernel)"
    )]
    Compressed { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What an initramfs holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub bytes: u64,
    pub release: String,
    /// Module files, in load order.
    pub modules: Vec<String>,
}

/// The kernel release a bzImage was built as (`uname -r` in its guest), from the version
/// string its setup header points at.
pub fn kernel_release(image: &Path) -> Result<String> {
    let read = |source| Error::Read {
        path: image.to_path_buf(),
        source,
    };
    let mut head = vec![0u8; 64 * 1024];
    let n = File::open(image)
        .and_then(|mut f| f.read(&mut head))
        .map_err(read)?;
    head.truncate(n);
    let not_kernel = || Error::NotAKernel {
        path: image.to_path_buf(),
    };
    // Boot protocol: "HdrS" at 0x202; kernel_version (u16 at 0x20e) + 0x200 is the offset
    // of a NUL-terminated "release (builder) #..." string.
    if head.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(not_kernel());
    }
    let at = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let text = head.get(at..).ok_or_else(not_kernel)?;
    let end = text.iter().position(|&b| b == 0).ok_or_else(not_kernel)?;
    let release = std::str::from_utf8(&text[..end])
        .ok()
        .and_then(|s| s.split_whitespace().next())
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(not_kernel)?;
    Ok(release.to_string())
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return Ok(raw);
    }
    Err(Error::Compressed {
        path: path.to_path_buf(),
    })
}

struct Archive<W: Write> {
    out: W,
    ino: u32,
    dirs: Vec<String>,
}

impl<W: Write> Archive<W> {
    fn entry(&mut self, name: &str, kind: ModeFileType, perm: u32, data: &[u8]) -> io::Result<()> {
        self.node(name, kind, perm, data, (0, 0))
    }

    fn node(
        &mut self,
        name: &str,
        kind: ModeFileType,
        perm: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        self.ino += 1;
        let nlink = if matches!(kind, ModeFileType::Directory) {
            2
        } else {
            1
        };
        let mut w = newc::Builder::new(name)
            .ino(self.ino)
            .mode(perm)
            .set_mode_file_type(kind)
            .nlink(nlink)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.out, data.len() as u32);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    /// A file under directories made as needed.
    fn file_in_dirs(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            prefix = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}/{part}")
            };
            if !self.dirs.contains(&prefix) {
                self.entry(&prefix, ModeFileType::Directory, 0o755, &[])?;
                self.dirs.push(prefix.clone());
            }
        }
        self.entry(name, ModeFileType::Regular, 0o644, data)
    }
}

/// Writes the initramfs for `kernel` (its modules from `modules_root/<release>`) with `agent`
/// as `/init`, to `out` (atomically: a reader never sees half an archive).
pub fn build(kernel: &Path, modules_root: &Path, agent: &Path, out: &Path) -> Result<Summary> {
    let release = kernel_release(kernel)?;
    let dir = modules_root.join(&release);
    let read_text = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|source| Error::Read {
            path: dir.join(name),
            source,
        })
    };
    let dep = ModuleDep::parse(
        &read_text("modules.dep")?,
        &read_text("modules.builtin").unwrap_or_default(),
    );
    let order = dep
        .load_order(GUEST_MODULES)
        .map_err(|e| Error::Modules(e, dir.clone()))?;
    let mut agent_bytes = Vec::new();
    File::open(agent)
        .and_then(|mut f| f.read_to_end(&mut agent_bytes))
        .map_err(|source| Error::Read {
            path: agent.to_path_buf(),
            source,
        })?;
    let parent = out.parent().unwrap_or(Path::new("."));
    let write_err = |source| Error::Write {
        path: out.to_path_buf(),
        source,
    };
    let modules: Vec<(String, Vec<u8>)> = order
        .iter()
        .map(|f| Ok((format!("lib/modules/{f}"), read_module(&dir.join(f))?)))
        .collect::<Result<_>>()?;
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(write_err)?;
    let mut archive = Archive {
        out: BufWriter::new(tmp.as_file()),
        ino: 0,
        dirs: Vec::new(),
    };
    let mut fill = || -> io::Result<()> {
        for d in ["dev", "proc", "sys", "run"] {
            archive.entry(d, ModeFileType::Directory, 0o755, &[])?;
        }
        // The kernel opens /dev/console for PID 1 before anything is mounted, and Rust's
        // runtime needs /dev/null when fds 0-2 are closed.
        archive.node("dev/console", ModeFileType::Char, 0o600, &[], (5, 1))?;
        archive.node("dev/null", ModeFileType::Char, 0o666, &[], (1, 3))?;
        archive.entry("init", ModeFileType::Regular, 0o755, &agent_bytes)?;
        for (name, data) in &modules {
            archive.file_in_dirs(name, data)?;
        }
        archive.file_in_dirs("lib/modules/modules.dep", dep.render(&order).as_bytes())?;
        newc::trailer(&mut archive.out)?;
        archive.out.flush()
    };
    fill().map_err(write_err)?;
    drop(archive);
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    let bytes = tmp.as_file().metadata().map_err(write_err)?.len();
    tmp.persist(out).map_err(|e| write_err(e.error))?;
    Ok(Summary {
        bytes,
        release,
        modules: order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with a bzImage setup header whose version string says `release`.
    fn fake_kernel(path: &Path, release: &str) {
        let mut img = vec![0u8; 0x4000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        let at: u16 = 0x3000 - 0x200;
        img[0x20e..0x210].copy_from_slice(&at.to_le_bytes());
        let v = format!("{release} (debian-kernel@lists.debian.org) #1 SMP\0");
        img[0x3000..0x3000 + v.len()].copy_from_slice(v.as_bytes());
        std::fs::write(path, img).unwrap();
    }

    fn fake_modules(root: &Path, release: &str) {
        let dir = root.join(release);
        for (file, needs) in [
            ("kernel/drivers/virtio/virtio_ring.ko", ""),
            ("kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"),
            ("kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
            ("kernel/drivers/char/virtio_console.ko", "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
            ("kernel/fs/fuse/fuse.ko", ""),
            ("kernel/fs/fuse/virtiofs.ko", "kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
            ("kernel/net/core/failover.ko", ""),
            ("kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko"),
            ("kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
            ("kernel/drivers/virtio/virtio_balloon.ko", "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
        ] {
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(dir.join(file), format!("ELF {file}")).unwrap();
            let line = format!("{file}: {needs}\n");
            let mut dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
            dep.push_str(&line);
            std::fs::write(dir.join("modules.dep"), dep).unwrap();
        }
    }

    fn entries(archive: &Path) -> Vec<(String, u32, Vec<u8>)> {
        let mut f = File::open(archive).unwrap();
        let mut out = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(f).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            out.push((name, mode, data));
            f = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn the_archive_holds_the_agent_the_modules_in_load_order_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        fake_kernel(&d.path().join("vmlinuz"), "6.1.0-test-cloud-amd64");
        fake_modules(&d.path().join("modules"), "6.1.0-test-cloud-amd64");
        std::fs::write(d.path().join("agent"), b"static agent").unwrap();
        let out = d.path().join("initramfs.cpio");
        let s = build(
            &d.path().join("vmlinuz"),
            &d.path().join("modules"),
            &d.path().join("agent"),
            &out,
        )
        .unwrap();
        assert_eq!(s.release, "6.1.0-test-cloud-amd64");
        assert_eq!(s.bytes, std::fs::metadata(&out).unwrap().len());
        let e = entries(&out);
        let init = e.iter().find(|(n, _, _)| n == "init").unwrap();
        assert_eq!(
            (init.1, init.2.as_slice()),
            (0o100755, b"static agent".as_slice())
        );
        let console = e.iter().find(|(n, _, _)| n == "dev/console").unwrap();
        assert_eq!(console.1, 0o020600);
        let dep = e
            .iter()
            .find(|(n, _, _)| n == "lib/modules/modules.dep")
            .unwrap();
        let loaded: Vec<String> = String::from_utf8(dep.2.clone())
            .unwrap()
            .lines()
            .map(|l| modules::name_of(l.split(':').next().unwrap()))
            .collect();
        assert_eq!(
            loaded,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_console",
                "fuse",
                "virtiofs",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_balloon"
            ]
        );
        let files = e
            .iter()
            .filter(|(_, m, _)| m & 0o170000 == 0o100000)
            .count();
        assert_eq!(files, 1 + 10 + 1, "init, ten modules, modules.dep: {e:?}");
    }

    #[test]
    fn a_file_that_is_no_kernel_or_a_missing_module_is_named_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), b"hello").unwrap();
        let out = d.path().join("initramfs.cpio");
        let e = build(&d.path().join("notes.txt"), d.path(), d.path(), &out).unwrap_err();
        assert!(e.to_string().contains("is not a bzImage kernel"), "{e}");
        fake_kernel(&d.path().join("vmlinuz"), "6.1.0-bare");
        std::fs::create_dir_all(d.path().join("6.1.0-bare")).unwrap();
        std::fs::write(d.path().join("6.1.0-bare/modules.dep"), "").unwrap();
        let e = build(&d.path().join("vmlinuz"), d.path(), d.path(), &out).unwrap_err();
        assert!(e.to_string().contains("kernel module virtio_mmio"), "{e}");
        assert!(!out.exists());
    }
}
