//! The product's documents describe the product as it is: no narration of the project's own
//! history (numbered work sessions, before/after deltas). History belongs in git log; a
//! document keeps the figures that still hold, stated as current facts.
//!
//! Scans README.md, every Markdown file under docs/, runtime/README.md and
//! third_party/README.md, and fails with `file:line` for each phrase found. A phrase may be
//! split across two lines of a paragraph.

use std::fs;
use std::path::{Path, PathBuf};

/// Phrases that narrate history, in lower case, as their two halves (kept apart so that this
/// file does not read as narration itself).
const PHRASES: &[[&str; 2]] = &[["went", "from"], ["until", "session"], ["used to", "be"]];

fn phrase(p: &[&str; 2]) -> String {
    format!("{} {}", p[0], p[1])
}

/// The documents this check owns, those that exist.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "runtime/README.md", "third_party/README.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    markdown_under(&root.join("docs"), &mut files);
    files.sort();
    files
}

fn markdown_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            markdown_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// One line, lower case, with each run of whitespace made one space.
fn normalise(line: &str) -> String {
    line.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

/// "session" (or "sessions") followed by a space and a digit, starting at byte `at`.
fn session_number_at(text: &str, at: usize) -> bool {
    let rest = &text[at..];
    let Some(after) = rest.strip_prefix("session") else {
        return false;
    };
    let after = after.strip_prefix('s').unwrap_or(after);
    let mut chars = after.chars();
    chars.next() == Some(' ') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

/// The history phrases in `text`, as (1-based line, phrase). A phrase that starts on one line
/// and ends on the next is reported at the line where it starts.
fn narration(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<String> = text.lines().map(normalise).collect();
    let phrases: Vec<String> = PHRASES.iter().map(phrase).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(String::as_str).unwrap_or("");
        let window = format!("{line} {next}");
        for at in 0..line.len() {
            if !window.is_char_boundary(at) {
                continue;
            }
            if let Some(p) = phrases
                .iter()
                .find(|p| window[at..].starts_with(p.as_str()))
            {
                found.push((i + 1, p.clone()));
            } else if session_number_at(&window, at) {
                found.push((i + 1, "session N".to_string()));
            }
        }
    }
    found
}

#[test]
fn the_detector_finds_phrases_and_their_lines() {
    let (went, from, session) = ("went", "from", "Session");
    let text =
        format!("Airlock starts fast.\nIts init {went}\n  {from} 932 to 530 calls.\nAs of {session} 12 it is.\n");
    assert_eq!(
        narration(&text),
        vec![(2, phrase(&PHRASES[0])), (4, "session N".to_string())]
    );
    assert!(narration("keyctl_join_session and a session key; sessions of 2").is_empty());
    assert_eq!(narration(&format!("{} 5", phrase(&PHRASES[1]))).len(), 2);
}

#[test]
fn documents_state_what_holds_without_history() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the workspace root");
    let files = documents(root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "no README.md found under {}",
        root.display()
    );
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (line, phrase) in narration(&text) {
            problems.push(format!("{shown}:{line}: \"{phrase}\""));
        }
    }
    assert!(
        problems.is_empty(),
        "documents narrate history; state what holds now (keep figures that still hold as \
         current facts, and leave history to git log):\n{}",
        problems.join("\n")
    );
}
