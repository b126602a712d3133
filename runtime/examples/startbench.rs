//! Throwaway micro-benchmark (not part of the product): create + start + wait + delete of one
//! bundle with several OCI runtimes, interleaved, as a subreaper like the shim.
//!
//! usage: startbench <bundle> <runs> name=/path/to/runtime[,bundle=DIR][,seccomp=FILE][,idmap] ...
//! The bundle's config.json should run /bin/true with terminal false. `bundle=` gives one
//! runtime its own bundle (e.g. a policy-lowered config.json); `seccomp=` passes
//! `--seccomp FILE` to its create (airlock-runtime only): variants of one runtime can be
//! compared interleaved; `arg=X` passes X to create as is. `idmap` passes `--idmap-rootfs`
//! (airlock-runtime only; the bundle's config.json needs a user namespace with uid/gid
//! mappings). `overlay` mounts a fresh overlay of `<bundle>/lower` on `<bundle>/rootfs` before
//! each create and unmounts it after delete, both untimed, as the shim does with containerd's
//! snapshot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

fn run(bin: &str, root: &str, args: &[&str]) {
    let st = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("spawn runtime");
    assert!(st.success(), "{bin} {args:?} failed");
}

/// A fresh overlay of `<bundle>/lower` (new upper and work dirs) on `rootfs`.
fn mount_overlay(bundle: &Path, rootfs: &Path) {
    let (upper, work) = (bundle.join("upper"), bundle.join("work"));
    for d in [&upper, &work] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        bundle.join("lower").display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap();
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bundle = &args[1];
    let runs: usize = args[2].parse().unwrap();
    // (name, binary, bundle, extra create args, overlay)
    let rts: Vec<(String, String, String, Vec<String>, bool)> = args[3..]
        .iter()
        .map(|a| {
            let (n, rest) = a.split_once('=').unwrap();
            let mut parts = rest.split(',');
            let bin = parts.next().unwrap().to_owned();
            let (mut b, mut extra, mut overlay) = (bundle.clone(), Vec::new(), false);
            for opt in parts {
                match opt.split_once('=') {
                    Some(("bundle", d)) => b = d.to_owned(),
                    Some(("seccomp", f)) => extra.extend(["--seccomp".to_owned(), f.to_owned()]),
                    Some(("arg", x)) => extra.push(x.to_owned()),
                    None if opt == "idmap" => extra.push("--idmap-rootfs".to_owned()),
                    None if opt == "overlay" => overlay = true,
                    _ => panic!("unknown option {opt:?} in {a:?}"),
                }
            }
            (n.to_owned(), bin, b, extra, overlay)
        })
        .collect();
    // SAFETY: plain prctl.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let tmp = tempfile::tempdir().unwrap();
    // phases: create, start, wait, delete, total
    let mut samples: Vec<Vec<[Duration; 5]>> = vec![Vec::new(); rts.len()];
    for i in 0..runs + 2 {
        for k in 0..rts.len() {
            // rotate the order each round so no runtime always goes first
            let j = (k + i) % rts.len();
            let (name, bin, bundle, extra, overlay) = &rts[j];
            let rootfs = Path::new(bundle).join("rootfs");
            if *overlay {
                mount_overlay(Path::new(bundle), &rootfs);
            }
            let root = tmp.path().join(format!("root-{name}"));
            let root = root.to_str().unwrap();
            let id = format!("bench-{name}-{i}");
            let pid_file = tmp.path().join(format!("{id}.pid"));
            let t0 = Instant::now();
            let mut create = vec!["create", "--bundle", bundle.as_str()];
            create.extend(extra.iter().map(String::as_str));
            create.extend(["--pid-file", pid_file.to_str().unwrap(), &id]);
            run(bin, root, &create);
            let t1 = Instant::now();
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            run(bin, root, &["start", &id]);
            let t2 = Instant::now();
            let st = waitpid(Pid::from_raw(pid), None).unwrap();
            assert!(matches!(st, WaitStatus::Exited(_, 0)), "{name}: {st:?}");
            let t3 = Instant::now();
            run(bin, root, &["delete", &id]);
            let t4 = Instant::now();
            if *overlay {
                // The idmapped overlay sits on the plain one: unmount all stacked there.
                while nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
            }
            assert!(!Path::new(root).join(&id).exists());
            if i >= 2 {
                // first two rounds are warm-up
                samples[j].push([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]);
            }
        }
    }
    println!("runs={runs} (interleaved, 2 warm-up rounds dropped), milliseconds p50 / p95");
    println!(
        "{:<16} {:>15} {:>15} {:>15} {:>15} {:>15}",
        "runtime", "create", "start", "wait", "delete", "total"
    );
    for (j, (name, ..)) in rts.iter().enumerate() {
        let mut line = format!("{name:<16}");
        for ph in 0..5 {
            let mut v: Vec<Duration> = samples[j].iter().map(|s| s[ph]).collect();
            let p50 = pct(&mut v, 0.5);
            let p95 = pct(&mut v, 0.95);
            line.push_str(&format!(" {:>6.2} / {:>6.2}", p50, p95));
        }
        println!("{line}");
    }
}
