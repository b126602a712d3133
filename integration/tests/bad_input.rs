//! Bad input, tried as a careless operator or client would: each is refused at create with an
//! error that names the input and says what to do, and a container that was already running
//! (the bystander) keeps running through all of them. The table of what was tried and what
//! Airlock answered is printed (`--nocapture`) and written to `target/bad-input.md`.

use std::path::{Path, PathBuf};

use airlock_integration::containerd::Version;
use airlock_integration::taskapi::{Case, IDLE};
use airlock_integration::{proc_util, Runtime};

/// One bad input: what it is, the `ctr run` options (before the image) and the words the
/// error must contain.
struct Try {
    what: &'static str,
    args: Vec<String>,
    expect: Vec<String>,
}

fn policy(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), body).unwrap();
}

const POLICY_HEAD: &str =
    "[process]\nno_new_privileges = true\ncapabilities = []\n[filesystem]\nreadonly_rootfs = true\n";

fn config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, body).unwrap();
    f
}

/// The state root of a containerd namespace fills up: the create fails naming the directory,
/// and what was created for it is gone again.
fn full_state_root(c: &mut Case, rows: &mut Vec<(String, String)>) {
    let root = Path::new("/run/airlock").join(&c.ns);
    std::fs::create_dir_all(&root).unwrap();
    // containerd (and so the shim) runs in a mount namespace of its own: mount it there.
    let ctd_pid = c.ctd.pid().to_string();
    let in_ns = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .args(["-t", &ctd_pid, "-m", "--"])
            .args(args)
            .status()
            .unwrap()
            .success()
    };
    let r = root.to_str().unwrap();
    assert!(
        in_ns(&["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", r]),
        "mount a small tmpfs at {r}"
    );
    // Fill it.
    let filler = format!("{r}/filler");
    in_ns(&[
        "sh",
        "-c",
        &format!("cat /dev/zero > {filler} 2>/dev/null; true"),
    ]);
    let id = c.id("full");
    let mut args = vec!["run", "--rm"];
    args.extend(c.runtime_args());
    args.extend([airlock_integration::IMAGE_REF, &id, "true"]);
    let out = c.ctr(&args);
    let msg = format!("{}{}", out.stdout, out.stderr);
    let _ = c.ctr(&["containers", "rm", &id]);
    let listing = std::process::Command::new("nsenter")
        .args(["-t", &ctd_pid, "-m", "--", "ls", "-A", r])
        .output()
        .unwrap();
    let mut left: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .split_whitespace()
        .filter(|n| *n != "filler")
        .map(String::from)
        .collect();
    // The create locks' directory is part of the root's layout; a lock file in it is not.
    let locks = std::process::Command::new("nsenter")
        .args(["-t", &ctd_pid, "-m", "--", "ls", "-A"])
        .arg(root.join(airlock_state::create_lock::DIR))
        .output()
        .unwrap();
    if locks.status.success() {
        left.retain(|n| n != airlock_state::create_lock::DIR);
        left.extend(
            String::from_utf8_lossy(&locks.stdout)
                .split_whitespace()
                .map(|n| format!("{}/{n}", airlock_state::create_lock::DIR)),
        );
    }
    in_ns(&["umount", r]);
    assert!(!out.success(), "a create with a full state root: {out:?}");
    assert!(
        msg.contains("No space left on device")
            && msg.contains(&format!("the state root {} is full", root.display()))
            && msg.contains("free space"),
        "a full state root is not named: {msg}"
    );
    assert!(
        left.iter().all(|n| n.starts_with("cgroup-parents")),
        "left in the state root: {left:?}"
    );
    rows.push((
        format!("state root {} full", root.display()),
        first_line(&msg),
    ));
}

fn first_line(msg: &str) -> String {
    msg.lines()
        .find(|l| l.contains("ctr:"))
        .unwrap_or(msg)
        .trim()
        .replace('|', "\\|")
}

#[test]
fn bad_input_is_refused_by_name_and_loses_nothing() {
    let mut c = Case::new(Runtime::Airlock, Version::V1_6, "badinput");
    let bystander = c.id("bystander");
    let pid = c.run_detached(&bystander, IDLE);

    let d = tempfile::tempdir().unwrap();
    let pol = d.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    policy(
        &pol,
        "bad-cap",
        &format!("name = \"bad-cap\"\n{POLICY_HEAD}")
            .replace("capabilities = []", "capabilities = [\"CAP_FLY\"]"),
    );
    let bad_policy_cfg = config(
        d.path(),
        "bad-policy.toml",
        &format!("policies_dir = {:?}\n", pol.display().to_string()),
    );
    let syntax = config(d.path(), "syntax.toml", "[handlers.airlock\n");
    let unknown_field = config(d.path(), "field.toml", "policy_dir = \"/etc/airlock\"\n");
    let no_dir = config(
        d.path(),
        "nodir.toml",
        "policies_dir = \"/nonexistent/airlock-policies\"\n",
    );
    let s = |v: &str| v.to_string();
    let path = |p: &Path| p.display().to_string();
    let tries = vec![
        Try {
            what: "config.toml with a TOML syntax error",
            args: vec![s("--runtime-config-path"), path(&syntax)],
            expect: vec![path(&syntax), s("line 1")],
        },
        Try {
            what: "config.toml with an unknown field",
            args: vec![s("--runtime-config-path"), path(&unknown_field)],
            expect: vec![path(&unknown_field), s("policy_dir")],
        },
        Try {
            what: "config.toml naming a policies_dir that does not exist",
            args: vec![s("--runtime-config-path"), path(&no_dir)],
            expect: vec![s("/nonexistent/airlock-policies")],
        },
        Try {
            what: "a policy file with an unknown capability",
            args: vec![s("--runtime-config-path"), path(&bad_policy_cfg)],
            expect: vec![s("bad-cap"), s("CAP_FLY")],
        },
        Try {
            what: "airlock.dev/policy naming no policy",
            args: vec![s("--annotation"), s("airlock.dev/policy=no-such-policy")],
            expect: vec![s("no-such-policy"), s("agent-strict")],
        },
        Try {
            what: "airlock.dev/policy naming a policy that is not selectable",
            args: vec![s("--annotation"), s("airlock.dev/policy=baseline")],
            expect: vec![s("baseline"), s("selectable")],
        },
        Try {
            what: "linux.cgroupsPath naming a running container's cgroup",
            args: vec![s("--cgroup"), format!("/{}/{bystander}", c.ns)],
            expect: vec![s("linux.cgroupsPath"), s("holds processes")],
        },
        Try {
            what: "a capability beyond the policy (CAP_SYS_ADMIN)",
            args: vec![s("--cap-add"), s("CAP_SYS_ADMIN")],
            expect: vec![s("process.capabilities"), s("SYS_ADMIN")],
        },
        Try {
            what: "the host's network namespace under agent-strict",
            args: vec![s("--net-host")],
            expect: vec![s("network namespace"), s("agent-strict")],
        },
        Try {
            what: "a uid mapping onto the node's users (0:1:65536)",
            args: vec![s("--uidmap"), s("0:1:65536"), s("--gidmap"), s("0:1:65536")],
            expect: vec![s("linux.uidMappings"), s("below 65536")],
        },
    ];
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for t in &tries {
        let id = c.id("bad");
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(c.runtime_args());
        args.extend(t.args.iter().map(String::as_str));
        args.extend([airlock_integration::IMAGE_REF, &id, "true"]);
        let out = c.ctr(&args);
        let msg = format!("{}{}", out.stdout, out.stderr);
        let _ = c.ctr(&["containers", "rm", &id]);
        if out.success() {
            failures.push(format!("{}: accepted", t.what));
        } else if let Some(missing) = t.expect.iter().find(|e| !msg.contains(e.as_str())) {
            failures.push(format!("{}: the error lacks {missing:?}: {msg}", t.what));
        }
        rows.push((t.what.to_string(), first_line(&msg)));
        assert!(
            proc_util::alive(pid) && c.status(&bystander) == "RUNNING",
            "the bystander died after: {}",
            t.what
        );
    }
    full_state_root(&mut c, &mut rows);
    assert!(
        proc_util::alive(pid),
        "the bystander died after a full state root"
    );

    let mut md =
        String::from("| bad input | what Airlock answered (ctr's last line) |\n|---|---|\n");
    for (what, answer) in &rows {
        md.push_str(&format!("| {what} | {answer} |\n"));
    }
    println!("{md}");
    let _ = std::fs::write(airlock_integration::target_dir().join("bad-input.md"), &md);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    c.remove(&bystander);
    c.assert_no_leaks();
}
