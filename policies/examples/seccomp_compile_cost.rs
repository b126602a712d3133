//! How long compiling a built-in policy's seccomp filter takes (`cargo run --release
//! --example seccomp_compile_cost -p airlock-policies [OUT.bpf]`); with a path, also writes
//! the program there (for `airlock-runtime create --seccomp`).
fn main() {
    let p = airlock_policies::builtin("agent-strict").expect("built-in");
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = std::time::Instant::now();
        let prog = p.compile_seccomp().expect("compiles").expect("enforced");
        times.push(t.elapsed().as_micros());
        std::hint::black_box(prog);
    }
    if let Some(out) = std::env::args().nth(1) {
        let prog = p.compile_seccomp().expect("compiles").expect("enforced");
        std::fs::write(&out, prog.to_bytes()).expect("write the program");
    }
    times.sort();
    println!(
        "agent-strict seccomp compile: min {} us, p50 {} us, max {} us ({} runs)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}
