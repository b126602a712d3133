//! AFL++ target: see [`airlock_fuzz::lowering`].
fn main() {
    afl::fuzz!(|data: &[u8]| airlock_fuzz::lowering(data));
}
