//! `/proc/<pid>/mountinfo` lines, for the cgroup hierarchies (cgroups.rs) and the runtime's
//! overlay rootfs (its lower layers).

use std::path::PathBuf;

/// The fields of one mountinfo line that Airlock reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    /// With mountinfo's octal escapes (`\040` for a space) undone.
    pub mount_point: PathBuf,
    pub fstype: &'a str,
    /// The filesystem's own options (overlay: `lowerdir=...`; cgroup v1: the controllers).
    pub super_options: &'a str,
}

/// The mounts in `text`, in mountinfo's order (a later mount at a path is on top). Lines that
/// do not parse are skipped.
pub fn parse(text: &str) -> impl Iterator<Item = Mount<'_>> {
    text.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let _source = r.next()?;
        Some(Mount {
            mount_point: PathBuf::from(unescape_octal(mount_point)),
            fstype,
            super_options: r.next().unwrap_or(""),
        })
    })
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_escapes() {
        let text = "\
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/sda rw,errors=remount-ro
51 23 0:41 / /b rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w
garbage
";
        let m: Vec<_> = parse(text).collect();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(
            (m[0].fstype, m[0].super_options),
            ("ext4", "rw,errors=remount-ro")
        );
        assert_eq!(m[1].fstype, "overlay");
        assert!(m[1].super_options.contains("lowerdir=/l1:/l2"));
    }
}
