//! docs/SPECIFICATION.md names, for each guarantee, the tests that enforce it, as
//! `` `file` `name` ``. Every test named there must exist as a function `name` in the file
//! named, so that a guarantee cannot lose its test silently.

use std::path::Path;

/// The (file, test) pairs cited in `text`: a code span ending in `.rs`, then whitespace only,
/// then a code span that is a Rust identifier.
fn citations(text: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = text.split('`').collect();
    let mut found = Vec::new();
    // Code spans are the odd parts; part i + 1 lies between span i and span i + 2.
    let mut i = 1;
    while i + 2 < parts.len() {
        let (file, between, name) = (parts[i], parts[i + 1], parts[i + 2]);
        let ident = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if file.ends_with(".rs") && between.trim().is_empty() && ident {
            found.push((file.to_owned(), name.to_owned()));
        }
        i += 2;
    }
    found
}

/// Whether `source` defines a function `name`.
fn defines(source: &str, name: &str) -> bool {
    ["(", "<"]
        .iter()
        .any(|open| source.contains(&format!("fn {name}{open}")))
}

#[test]
fn citations_are_read_as_written() {
    let text = "1. **X.** `a/b.rs` `one`, `c.rs`\n   `two_2`; `not a file` `x`; `d.rs` `Not`.";
    assert_eq!(
        citations(text),
        vec![
            ("a/b.rs".to_owned(), "one".to_owned()),
            ("c.rs".to_owned(), "two_2".to_owned())
        ]
    );
    assert!(defines("pub fn one(v: u8) {}", "one"));
    assert!(!defines("fn one_more() {}", "one"));
}

#[test]
fn every_guarantee_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the workspace root");
    let spec = root.join("docs/SPECIFICATION.md");
    let text = std::fs::read_to_string(&spec)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", spec.display()));
    let cited = citations(&text);
    assert!(
        cited.len() >= 30,
        "only {} tests cited in {}",
        cited.len(),
        spec.display()
    );
    let missing: Vec<String> = cited
        .iter()
        .filter(|(file, name)| {
            std::fs::read_to_string(root.join(file)).map_or(true, |src| !defines(&src, name))
        })
        .map(|(file, name)| format!("{file}: {name}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/SPECIFICATION.md names tests that do not exist (rename the citation with the \
         test, or keep the test):\n{}",
        missing.join("\n")
    );
}
