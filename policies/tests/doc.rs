//! docs/policies.md documents the policy file format: its full example must parse with the
//! shim's parser (unknown fields are errors), and every field the parser writes back must be
//! named on the page as `` `field` `` (a table as `` `[table]` ``).

use airlock_policies::Policy;

fn page() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policies.md"))
        .expect("docs/policies.md")
}

/// The first ```toml block of `text`.
fn example(text: &str) -> &str {
    let start = text.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let len = text[start..].find("```").expect("the block's end");
    &text[start..start + len]
}

/// Every key of `v`, tables and arrays of tables included.
fn keys(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                out.push(k.clone());
                keys(v, out);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_page_names_every_field_of_the_parser() {
    let text = page();
    let policy = Policy::parse(example(&text), "docs/policies.md")
        .unwrap_or_else(|e| panic!("the full example does not parse: {e}"));
    let mut all = Vec::new();
    keys(&toml::Value::try_from(&policy).unwrap(), &mut all);
    for name in ["agent-strict", "agent-default", "baseline"] {
        let p = airlock_policies::builtin(name).unwrap();
        keys(&toml::Value::try_from(&p).unwrap(), &mut all);
    }
    all.sort();
    all.dedup();
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !text.contains(&format!("`{k}`")) && !text.contains(&format!("`[{k}]`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/policies.md does not name: {missing:?}"
    );
    assert!(all.len() > 30, "{all:?}");
}
