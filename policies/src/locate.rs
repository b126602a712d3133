//! Finds the line of a field in a policy's TOML text, so validation errors (which are found
//! after deserialising, when positions are gone) can still say `file:line`.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

/// Split a validation message such as `process.capabilities: unknown capability "CAP_X" ...`
/// into its field path (`process.capabilities`) and the first quoted value (`CAP_X`).
pub(crate) fn field_and_value(message: &str) -> (Option<&str>, Option<&str>) {
    let end = message.find([':', ' ']).unwrap_or(message.len());
    let field = &message[..end];
    let field = (!field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
    .then_some(field);
    let value = message.split_once('"').and_then(|(_, rest)| {
        let end = rest.find('"')?;
        Some(&rest[..end])
    });
    (field, value)
}

/// 1-based line of `field` (a dotted path) in `text`; of the element equal to `value` when the
/// field holds an array or inline tables containing it.
pub fn line_of(text: &str, field: &str, value: Option<&str>) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut table = doc.as_table();
    let parts: Vec<&str> = field.split('.').collect();
    let (last, parents) = parts.split_last()?;
    for p in parents {
        table = table.get(p)?.as_table()?;
    }
    let (key, item) = table.get_key_value(last)?;
    let span = value
        .and_then(|v| find_in_item(item, v))
        .or_else(|| key.span())?;
    Some(line_at(text, span.start))
}

fn find_in_item(item: &Item, want: &str) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => find_in_value(v, want),
        Item::Table(t) => t.iter().find_map(|(_, i)| find_in_item(i, want)),
        Item::ArrayOfTables(a) => a
            .iter()
            .find_map(|t| t.iter().find_map(|(_, i)| find_in_item(i, want))),
        Item::None => None,
    }
}

fn find_in_value(v: &Value, want: &str) -> Option<Range<usize>> {
    match v {
        Value::String(s) if s.value() == want => s.span(),
        Value::Integer(i) if i.value().to_string() == want => i.span(),
        Value::Array(a) => a.iter().find_map(|e| find_in_value(e, want)),
        Value::InlineTable(t) => t.iter().find_map(|(_, e)| find_in_value(e, want)),
        _ => None,
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_messages() {
        assert_eq!(
            field_and_value("process.capabilities: unknown capability \"CAP_X\" (use ...)"),
            (Some("process.capabilities"), Some("CAP_X"))
        );
        assert_eq!(
            field_and_value("limits.pids must be >= 1, got 0"),
            (Some("limits.pids"), None)
        );
        assert_eq!(field_and_value("Something else"), (None, None));
    }

    #[test]
    fn finds_lines() {
        let t = "name = \"x\"\n[process]\ncapabilities = [\n  \"CAP_A\",\n  \"CAP_B\",\n]\n[filesystem]\ntmpfs = [{ path = \"/a\", size = \"1m\" },\n { path = \"b\", size = \"1m\" }]\n[limits]\npids = 0\n";
        assert_eq!(line_of(t, "name", None), Some(1));
        assert_eq!(line_of(t, "process.capabilities", Some("CAP_B")), Some(5));
        assert_eq!(line_of(t, "process.capabilities", Some("nope")), Some(3));
        assert_eq!(line_of(t, "filesystem.tmpfs", Some("b")), Some(9));
        assert_eq!(line_of(t, "limits.pids", None), Some(11));
        assert_eq!(line_of(t, "limits.nope", None), None);
    }
}
