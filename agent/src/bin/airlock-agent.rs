//! The guest's PID 1 in Airlock's microVM mode (see `airlock_agent::guest`).

fn main() {
    airlock_agent::guest::run()
}
