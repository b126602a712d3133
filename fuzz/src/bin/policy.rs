//! AFL++ target: see [`airlock_fuzz::policy`].
fn main() {
    afl::fuzz!(|data: &[u8]| airlock_fuzz::policy(data));
}
