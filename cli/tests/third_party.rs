//! Each tree under third_party/ is the crate published on crates.io plus the patch files in
//! third_party/patches/<crate>/ (third_party/README.md, "How the trees are made").
//!
//! For each tree: the published `.crate` is unpacked from cargo's registry cache (put there by
//! `scripts/setup.sh`), its patches are applied in name order with `patch -p1 -F0` (no fuzz,
//! and no hunk may land at an offset), and the result is compared with the tree byte for byte,
//! both ways. Every patch carries `Kind:` (one of the README's kinds) and `Test:` in its header,
//! and third_party/README.md names every patch file on a table row with the same kind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kinds of change that third_party/README.md's table uses.
const KINDS: &[&str] = &["upstream bug", "speed", "size", "feature"];

/// Left out of the comparison, at a crate's root on both sides: what building or testing the
/// crate in place writes there (the workspace's .gitignore ignores both).
const BUILD_OUTPUTS: &[&str] = &["Cargo.lock", "target"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the workspace root")
        .to_path_buf()
}

/// One patched crate: its directory under third_party/ and its `[package]` name and version.
struct Tree {
    dir: PathBuf,
    name: String,
    version: String,
}

impl Tree {
    /// The directory's name, which is also that of its patch directory.
    fn short(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }
}

/// Every directory of third_party/ that holds a Cargo.toml.
fn trees(root: &Path) -> Vec<Tree> {
    let mut trees = Vec::new();
    for entry in fs::read_dir(root.join("third_party")).expect("third_party/ is readable") {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = fs::read_to_string(&manifest).unwrap();
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let field = |key: &str| {
            table["package"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no package.{key}", manifest.display()))
                .to_string()
        };
        trees.push(Tree {
            name: field("name"),
            version: field("version"),
            dir,
        });
    }
    trees.sort_by(|a, b| a.dir.cmp(&b.dir));
    trees
}

/// `NAME-VERSION.crate` in cargo's registry cache (`$CARGO_HOME/registry/cache/*/`).
fn published_crate(name: &str, version: &str) -> Result<PathBuf, String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let cache = home.join("registry").join("cache");
    let file = format!("{name}-{version}.crate");
    if let Ok(registries) = fs::read_dir(&cache) {
        for registry in registries.flatten() {
            let candidate = registry.path().join(&file);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "{file} is not in cargo's registry cache ({}/*/): run scripts/setup.sh, which fetches \
         the published crates that third_party/ patches",
        cache.display()
    ))
}

/// The patch files of a tree, in the order they apply (by name).
fn patches(root: &Path, short: &str) -> Vec<PathBuf> {
    let dir = root.join("third_party").join("patches").join(short);
    let mut patches: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    patches.sort();
    patches
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}):\n{text}", out.status))
    }
}

/// Unpacks a `.crate` (a gzip tarball whose top directory is NAME-VERSION/) into `into`.
fn unpack(crate_file: &Path, name: &str, version: &str, into: &Path) -> Result<PathBuf, String> {
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(crate_file)
            .arg("-C")
            .arg(into),
        &format!("tar -xzf {}", crate_file.display()),
    )?;
    Ok(into.join(format!("{name}-{version}")))
}

/// Applies one patch exactly: no fuzz, no offset, not already applied.
fn apply(tree: &Path, patch: &Path) -> Result<(), String> {
    let name = patch.file_name().unwrap().to_string_lossy();
    let out = run(
        Command::new("patch")
            .args(["-p1", "--forward", "--no-backup-if-mismatch", "-F0", "-i"])
            .arg(patch)
            .current_dir(tree),
        &format!("patch -p1 -F0 -i {name}"),
    )?;
    let inexact: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("patching file "))
        .collect();
    if inexact.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{name} does not apply exactly:\n{}",
            inexact.join("\n")
        ))
    }
}

/// The published crate with every patch of the tree applied, built under `into`.
fn rebuilt(root: &Path, tree: &Tree, into: &Path) -> Result<PathBuf, String> {
    let crate_file = published_crate(&tree.name, &tree.version)?;
    let dir = unpack(&crate_file, &tree.name, &tree.version, into)?;
    for patch in patches(root, &tree.short()) {
        apply(&dir, &patch)?;
    }
    Ok(dir)
}

/// Every file under `root` (relative path to content; a symlink to its target), leaving out
/// `BUILD_OUTPUTS` at the top.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if dir == root && BUILD_OUTPUTS.iter().any(|b| rel == Path::new(b)) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                let mut content = b"symlink to ".to_vec();
                content.extend_from_slice(target.as_os_str().as_encoded_bytes());
                out.insert(rel, content);
            } else if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What differs between the rebuilt crate and the tree, one line per file.
fn differences(rebuilt: &Path, tree: &Path) -> Vec<String> {
    let (want, have) = (files(rebuilt), files(tree));
    let mut found = Vec::new();
    for (path, content) in &want {
        match have.get(path) {
            None => found.push(format!(
                "{}: missing from the tree (the published crate plus patches has it)",
                path.display()
            )),
            Some(c) if c != content => {
                let at = c
                    .iter()
                    .zip(content)
                    .position(|(a, b)| a != b)
                    .unwrap_or(c.len().min(content.len()));
                found.push(format!(
                    "{}: differs from the published crate plus patches at byte {at}",
                    path.display()
                ));
            }
            Some(_) => {}
        }
    }
    for path in have.keys().filter(|p| !want.contains_key(*p)) {
        found.push(format!(
            "{}: in the tree, not in the published crate plus patches",
            path.display()
        ));
    }
    found
}

#[test]
fn every_tree_is_the_published_crate_plus_its_patches() {
    let root = workspace();
    let trees = trees(&root);
    assert!(!trees.is_empty(), "no crate under third_party/");
    let missing: Vec<String> = trees
        .iter()
        .filter_map(|t| published_crate(&t.name, &t.version).err())
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let mut problems = Vec::new();
    for tree in &trees {
        let short = tree.short();
        let tmp = tempfile::tempdir().unwrap();
        match rebuilt(&root, tree, tmp.path()) {
            Err(e) => problems.push(format!("third_party/{short}: {e}")),
            Ok(dir) => {
                for d in differences(&dir, &tree.dir) {
                    problems.push(format!("third_party/{short}/{d}"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "third_party/ is not the published crates plus third_party/patches (a change to a tree \
         belongs in a patch file: third_party/README.md, \"How the trees are made\"):\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_patch_has_its_kind_and_test_and_a_row_in_the_readme() {
    let root = workspace();
    let readme = fs::read_to_string(root.join("third_party/README.md")).unwrap();
    let trees = trees(&root);
    let mut problems = Vec::new();
    let patch_root = root.join("third_party/patches");
    for entry in fs::read_dir(&patch_root).unwrap() {
        let path = entry.unwrap().path();
        let short = path.file_name().unwrap().to_string_lossy().into_owned();
        if !path.is_dir() || !trees.iter().any(|t| t.short() == short) {
            problems.push(format!(
                "third_party/patches/{short}: not the patch directory of a crate in third_party/"
            ));
        }
    }
    for tree in &trees {
        let short = tree.short();
        for (i, patch) in patches(&root, &short).iter().enumerate() {
            let file = patch.file_name().unwrap().to_string_lossy().into_owned();
            let shown = format!("{short}/{file}");
            let number = format!("{:04}-", i + 1);
            if !file.starts_with(&number) || !file.ends_with(".patch") {
                problems.push(format!("{shown}: not named {number}<short-name>.patch"));
            }
            let text = fs::read_to_string(patch).unwrap();
            let header: Vec<&str> = text.lines().take_while(|l| *l != "---").collect();
            let value = |key: &str| {
                header
                    .iter()
                    .find_map(|l| l.strip_prefix(key))
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
            };
            if header.len() == text.lines().count() {
                problems.push(format!("{shown}: no \"---\" line between header and diff"));
            }
            for key in ["From: ", "Subject: [PATCH] ", "Test: "] {
                if value(key).is_none() {
                    problems.push(format!("{shown}: no \"{key}\" line in the header"));
                }
            }
            let kind = value("Kind: ");
            match kind {
                Some(k) if KINDS.contains(&k) => {}
                other => problems.push(format!("{shown}: Kind {other:?} is not one of {KINDS:?}")),
            }
            match readme.lines().find(|l| l.contains(&shown)) {
                None => problems.push(format!("{shown}: not named in third_party/README.md")),
                Some(row) => {
                    if let Some(k) = kind {
                        if !row.starts_with('|') || !row.contains(&format!("| {k} |")) {
                            problems.push(format!(
                                "{shown}: its README line is not a table row of kind {k}"
                            ));
                        }
                    }
                }
            }
        }
    }
    // And the README names no patch that is not there.
    for word in readme.split(|c: char| c.is_whitespace() || "`|,()[]".contains(c)) {
        let of_a_tree = word
            .split_once('/')
            .is_some_and(|(dir, _)| trees.iter().any(|t| t.short() == dir));
        if of_a_tree && word.ends_with(".patch") && !patch_root.join(word).is_file() {
            problems.push(format!(
                "third_party/README.md names {word}, which is not in third_party/patches/"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check itself: on a copy of a rebuilt crate, a changed byte, a removed file and an added
/// file are each reported, and a patch whose hunk would land at an offset is refused.
#[test]
fn the_check_finds_a_changed_byte_a_missing_file_an_extra_file_and_an_offset() {
    let root = workspace();
    let tree = trees(&root)
        .into_iter()
        .next()
        .expect("a crate under third_party/");
    let tmp = tempfile::tempdir().unwrap();
    let rebuilt_dir =
        rebuilt(&root, &tree, &mkdir(tmp.path().join("rebuilt"))).unwrap_or_else(|e| panic!("{e}"));

    // A copy of the rebuilt crate with one byte changed, one file removed and one added.
    let copy = tmp.path().join("copy");
    for (rel, content) in files(&rebuilt_dir) {
        let to = copy.join(&rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::write(to, content).unwrap();
    }
    let edited = PathBuf::from("Cargo.toml");
    let mut bytes = fs::read(copy.join(&edited)).unwrap();
    bytes[0] ^= 1;
    fs::write(copy.join(&edited), bytes).unwrap();
    let removed = PathBuf::from("README.md");
    fs::remove_file(copy.join(&removed)).unwrap();
    fs::write(copy.join("extra.rs"), "").unwrap();
    let found = differences(&rebuilt_dir, &copy).join("\n");
    for (path, what) in [
        ("Cargo.toml: differs", "the changed byte"),
        ("README.md: missing", "the removed file"),
        ("extra.rs: in the tree, not", "the added file"),
    ] {
        assert!(found.contains(path), "{what} not reported:\n{found}");
    }
    assert_eq!(found.lines().count(), 3, "{found}");

    // The first patch on a published crate with one line added at the top of each file it
    // patches: its hunks would apply at an offset.
    let first = patches(&root, &tree.short())
        .into_iter()
        .next()
        .expect("a patch");
    let crate_file = published_crate(&tree.name, &tree.version).unwrap();
    let shifted = unpack(
        &crate_file,
        &tree.name,
        &tree.version,
        &mkdir(tmp.path().join("shifted")),
    )
    .unwrap();
    let text = fs::read_to_string(&first).unwrap();
    for target in text.lines().filter_map(|l| l.strip_prefix("+++ b/")) {
        let path = shifted.join(target);
        let old = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("// shifted\n{old}")).unwrap();
    }
    let err = apply(&shifted, &first).expect_err("a shifted patch applied as exact");
    assert!(err.contains("offset"), "{err}");
}

/// `dir`, created.
fn mkdir(dir: PathBuf) -> PathBuf {
    fs::create_dir_all(&dir).unwrap();
    dir
}
