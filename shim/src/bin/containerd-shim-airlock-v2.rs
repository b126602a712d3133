//! Thin binary: everything lives in the `airlock-shim` library.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if airlock_shim::info::handle(&args[1..]) {
        return;
    }
    let os_args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = airlock_shim::shim::oneshot(&os_args) {
        std::process::exit(code);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    rt.block_on(async {
        // A daemon spawned by our `start` serves the socket that `start` bound.
        match airlock_shim::shim::serve_inherited().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                eprintln!("{}: {e:?}", airlock_shim::RUNTIME_ID);
                std::process::exit(1);
            }
            None => {
                containerd_shim::asynchronous::run::<airlock_shim::AirlockShim>(
                    airlock_shim::RUNTIME_ID,
                    Some(airlock_shim::shim_config()),
                )
                .await
            }
        }
    });
}
