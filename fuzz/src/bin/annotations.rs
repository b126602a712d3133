//! AFL++ target: see [`airlock_fuzz::annotations`].
fn main() {
    afl::fuzz!(|data: &[u8]| airlock_fuzz::annotations(data));
}
