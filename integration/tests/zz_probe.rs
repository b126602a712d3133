use airlock_integration::containerd::{Containerd, Version};
use airlock_integration::Runtime;
use std::time::{Duration, Instant};

#[test]
#[ignore]
fn probe_delete_timeline() {
    let ctd = Containerd::builder()
        .version(Version::V1_6)
        .debug(true)
        .start()
        .unwrap();
    let ns = ctd.new_namespace("probe").unwrap();
    ctd.import_image(&ns).unwrap();
    let spec = ctd.default_spec().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = ctd.client().await.unwrap();
        for i in 0..4 {
            let id = format!("pd{i}");
            let s = airlock_integration::client::spec_for(&spec, &ns, &id, &["true"]);
            let t0 = Instant::now();
            c.create(&ns, &id, Runtime::Airlock, s).await.unwrap();
            let t1 = Instant::now();
            c.start(&ns, &id).await.unwrap();
            let t2 = Instant::now();
            c.wait(&ns, &id, Duration::from_secs(10)).await.unwrap();
            let t3 = Instant::now();
            let mark = chrono_now();
            c.delete_task(&ns, &id).await.unwrap();
            let t4 = Instant::now();
            c.delete_container(&ns, &id).await.unwrap();
            let t5 = Instant::now();
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            println!("{id}: create {:.1} start {:.1} wait {:.1} delete_task {:.1} delete_container {:.1} (delete began {mark})",
                ms(t0,t1), ms(t1,t2), ms(t2,t3), ms(t3,t4), ms(t4,t5));
        }
    });
    std::fs::copy(ctd.log_path(), "/tmp/probe-containerd.log").unwrap();
}

fn chrono_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:06}", d.as_secs() % 86400, d.subsec_micros())
}

#[test]
#[ignore]
fn probe_smaps() {
    let ctd = Containerd::builder()
        .version(Version::V1_6)
        .start()
        .unwrap();
    let ns = ctd.new_namespace("probe").unwrap();
    ctd.import_image(&ns).unwrap();
    let id = format!("pr-{}", std::process::id());
    let out = ctd
        .ctr_run_spawn(
            &ns,
            Runtime::Airlock,
            &[],
            &id,
            &["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains("containerd-shim-airlock-v2")
                        && !String::from_utf8_lossy(&c).contains("start")
                })
                .unwrap_or(false)
        })
        .unwrap();
    let out_dir = std::env::var("PROBE_OUT").unwrap_or("/tmp/shim".into());
    std::fs::write(
        format!("{out_dir}.smaps"),
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        format!("{out_dir}.status"),
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
    )
    .unwrap();
    if let Ok(h) = std::env::var("PROBE_HOLD") {
        std::fs::write("/tmp/probe.pid", pid.to_string()).unwrap();
        std::thread::sleep(Duration::from_secs(h.parse().unwrap()));
    }
    ctd.ctr(Some(&ns), &["task", "kill", &id]).unwrap();
    let _ = out.wait(Duration::from_secs(20));
}
