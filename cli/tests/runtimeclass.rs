//! RuntimeClass.yaml against the node.k8s.io/v1 RuntimeClass schema: the object's fields
//! (unknown ones refused, as `kubectl apply --validate=strict` does), metadata.name a DNS-1123
//! subdomain, handler a DNS-1123 label, overhead.podFixed Kubernetes quantities, nodeSelector
//! a string map with valid label keys/values, tolerations of the core/v1 shape. And the
//! handlers are the ones Airlock registers.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuntimeClass {
    api_version: String,
    kind: String,
    metadata: Metadata,
    handler: String,
    overhead: Option<Overhead>,
    scheduling: Option<Scheduling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Overhead {
    pod_fixed: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scheduling {
    #[serde(rename = "nodeSelector", default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<Toleration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Toleration {
    key: Option<String>,
    operator: Option<String>,
    value: Option<String>,
    effect: Option<String>,
    toleration_seconds: Option<i64>,
}

fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

/// A label value, or the name part of a qualified key: <= 63, alphanumeric at both ends,
/// `-_.` inside.
fn label_name(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => dns1123_subdomain(prefix) && label_name(name, false),
        None => label_name(k, false),
    }
}

/// A Kubernetes resource.Quantity: a signed decimal number and a suffix (binary Ki..Ei,
/// decimal n u m "" k M G T P E, or a decimal exponent e/E<int>).
fn quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let digits = num.trim_start_matches(['+', '-']);
    let number_ok = !digits.is_empty()
        && digits != "."
        && digits.matches('.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.len() - digits.len() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| e.trim_start_matches(['+', '-']).parse::<u32>().is_ok());
    number_ok && suffix_ok
}

#[test]
fn validators() {
    for ok in ["8Mi", "25m", "0.5", "1", "1e3", "100k", "+1.5Gi"] {
        assert!(quantity(ok), "{ok}");
    }
    for bad in ["8MB", "", "Mi", "1.2.3", "25 m", "1e", "--1"] {
        assert!(!quantity(bad), "{bad}");
    }
    assert!(dns1123_label("airlock-vm") && !dns1123_label("Airlock") && !dns1123_label("a_b"));
    assert!(label_key("airlock.dev/runtime") && !label_key("airlock.dev/") && !label_key("/x"));
}

fn docs() -> Vec<serde_yaml::Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../RuntimeClass.yaml"))
            .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn runtimeclass_yaml_matches_the_schema() {
    let mut handlers = Vec::new();
    for doc in docs() {
        let rc: RuntimeClass =
            serde_yaml::from_value(doc).expect("node.k8s.io/v1 RuntimeClass fields only");
        assert_eq!(rc.api_version, "node.k8s.io/v1");
        assert_eq!(rc.kind, "RuntimeClass");
        assert!(
            dns1123_subdomain(&rc.metadata.name),
            "metadata.name {}",
            rc.metadata.name
        );
        assert!(dns1123_label(&rc.handler), "handler {}", rc.handler);
        for (k, v) in &rc.metadata.labels {
            assert!(label_key(k) && label_name(v, true), "label {k}={v}");
        }
        for k in rc.metadata.annotations.keys() {
            assert!(label_key(k), "annotation key {k}");
        }
        let overhead = rc.overhead.expect("overhead.podFixed is set (measured)");
        for res in ["memory", "cpu"] {
            let q = overhead
                .pod_fixed
                .get(res)
                .unwrap_or_else(|| panic!("podFixed.{res}"));
            assert!(quantity(q), "podFixed.{res} = {q:?} is not a quantity");
        }
        let sched = rc.scheduling.expect("scheduling");
        assert_eq!(
            sched
                .node_selector
                .get("airlock.dev/runtime")
                .map(String::as_str),
            Some("true")
        );
        for (k, v) in &sched.node_selector {
            assert!(label_key(k) && label_name(v, true), "nodeSelector {k}={v}");
        }
        for t in &sched.tolerations {
            if let Some(op) = &t.operator {
                assert!(op == "Exists" || op == "Equal", "toleration operator {op}");
            }
            if let Some(e) = &t.effect {
                assert!(["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str()));
            }
        }
        handlers.push((rc.handler, sched.node_selector));
    }
    let names: Vec<&str> = handlers.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(names, ["airlock", "airlock-vm"]);
    // The VM class needs a node label the process class does not: no VM node, no VM pod.
    assert!(
        handlers[1].1.contains_key("airlock.dev/vm")
            && !handlers[0].1.contains_key("airlock.dev/vm")
    );
}

#[test]
fn unknown_fields_are_refused() {
    let bad = "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: x}\nhandler: x\noverheads: {}\n";
    assert!(serde_yaml::from_str::<RuntimeClass>(bad).is_err());
}
