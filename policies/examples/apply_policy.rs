//! Lowers an OCI config.json to a built-in policy, as the shim does at create (without the
//! node's namespace check): `cargo run --example apply_policy -p airlock-policies -- NAME
//! < config.json > lowered.json`. Used to build bundles for runtime-level measurements.
fn main() {
    let name = std::env::args()
        .nth(1)
        .expect("usage: apply_policy NAME < config.json");
    let policy = airlock_policies::builtin(&name).expect("a built-in policy name");
    let mut spec: oci_spec::runtime::Spec =
        serde_json::from_reader(std::io::stdin()).expect("an OCI config.json on stdin");
    for line in policy
        .apply(&mut spec)
        .expect("the spec fits the policy")
        .lines()
    {
        eprintln!("{line}");
    }
    serde_json::to_writer(std::io::stdout(), &spec).expect("write the spec");
}
