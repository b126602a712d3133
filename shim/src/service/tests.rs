//! The task core against a stub sandbox (`sandbox/stub.rs`): transitions, exec ids, the
//! order of events, and the codes of refused requests. No root, no runtime, no containerd;
//! tokio's paused clock stands in for the drain limit.

use super::*;
use crate::sandbox::stub::{StubContainer, StubSandbox};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::task::Status;

/// Every event the core published, in order.
#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<Envelope>>,
}

#[async_trait]
impl EventSink for Recorder {
    async fn forward(&self, envelope: Envelope) {
        self.events.lock().unwrap().push(envelope);
    }
}

impl Recorder {
    /// The topics published so far, without the `/tasks/` prefix.
    fn topics(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.topic.trim_start_matches("/tasks/").to_owned())
            .collect()
    }
}

/// A task service over a stub sandbox, with a bundle whose spec has one init process.
struct Setup {
    service: TaskService,
    sandbox: Arc<StubSandbox>,
    events: Arc<Recorder>,
    exit: Arc<ExitSignal>,
    bundle: tempfile::TempDir,
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

fn code<T: std::fmt::Debug>(r: TtrpcResult<T>) -> Code {
    match r {
        Err(containerd_shim::protos::ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected a status error, got {other:?}"),
    }
}

impl Setup {
    fn new() -> Setup {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
                "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},
                "noNewPrivileges":true,"capabilities":{"bounding":["CAP_KILL"]}}}"#,
        )
        .unwrap();
        let sandbox = Arc::new(StubSandbox::default());
        let events = Arc::new(Recorder::default());
        let exit = Arc::new(ExitSignal::default());
        let service = TaskService::new("ns".into(), events.clone(), exit.clone(), sandbox.clone());
        Setup {
            service,
            sandbox,
            events,
            exit,
            bundle,
        }
    }

    async fn create(&self, id: &str) -> TtrpcResult<CreateTaskResponse> {
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle.path().display().to_string(),
            ..Default::default()
        };
        self.service.create(&ctx(), req).await
    }

    async fn start(&self, id: &str, exec_id: &str) -> TtrpcResult<StartResponse> {
        let req = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.service.start(&ctx(), req).await
    }

    /// Created and started; its stub.
    async fn running(&self, id: &str) -> Arc<StubContainer> {
        self.create(id).await.unwrap();
        self.start(id, "").await.unwrap();
        self.sandbox.container(id)
    }

    async fn exec(&self, id: &str, exec_id: &str) -> TtrpcResult<Empty> {
        let process = r#"{"cwd":"/","args":["id"],"user":{"uid":0,"gid":0},
            "capabilities":{"bounding":["CAP_KILL","CAP_SYS_ADMIN"]}}"#;
        let req = ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: MessageField::some(
                containerd_shim::protos::protobuf::well_known_types::any::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: process.as_bytes().to_vec(),
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        self.service.exec(&ctx(), req).await
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> TtrpcResult<Empty> {
        let req = KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.service.kill(&ctx(), req).await
    }

    async fn state(&self, id: &str, exec_id: &str) -> TtrpcResult<StateResponse> {
        let req = StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.service.state(&ctx(), req).await
    }

    async fn wait(&self, id: &str, exec_id: &str) -> WaitResponse {
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.service.wait(&ctx(), req).await.unwrap()
    }

    async fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<DeleteResponse> {
        let req = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.service.delete(&ctx(), req).await
    }

    /// Lets the core's watchers run until `topic` has been published `n` times.
    async fn until(&self, topic: &str, n: usize) {
        for _ in 0..10_000 {
            if self.events.topics().iter().filter(|t| *t == topic).count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("no {n} x {topic} in {:?}", self.events.topics());
    }

    fn calls(&self) -> Vec<String> {
        self.sandbox.calls.lock().unwrap().clone()
    }
}

#[test]
fn ids() {
    assert!(validate_id("abc-1_2.3").is_ok());
    assert!(validate_id("").is_err());
    assert!(validate_id("../x").is_err());
    assert!(validate_id("a/b").is_err());
}

#[test]
fn timestamps() {
    let t = SystemTime::UNIX_EPOCH + Duration::new(5, 7);
    let ts = timestamp(t);
    assert_eq!((ts.seconds, ts.nanos), (5, 7));
}

#[tokio::test(start_paused = true)]
async fn a_container_from_create_to_delete() {
    let s = Setup::new();
    let pid = s.create("c1").await.unwrap().pid;
    assert!(pid > 0);
    assert_eq!(s.state("c1", "").await.unwrap().status(), Status::CREATED);
    assert_eq!(s.start("c1", "").await.unwrap().pid, pid);
    assert_eq!(s.state("c1", "").await.unwrap().status(), Status::RUNNING);
    s.kill("c1", "", libc::SIGTERM, false).await.unwrap();
    s.sandbox.container("c1").close_output();
    assert_eq!(s.wait("c1", "").await.exit_status, 143);
    let st = s.state("c1", "").await.unwrap();
    assert_eq!((st.status(), st.exit_status), (Status::STOPPED, 143));
    let d = s.delete("c1", "").await.unwrap();
    assert_eq!((d.pid, d.exit_status), (pid, 143));
    assert_eq!(s.events.topics(), ["create", "start", "exit", "delete"]);
    assert_eq!(
        s.calls(),
        ["create c1", "start c1", "clean-up c1", "release c1"]
    );
    assert_eq!(code(s.state("c1", "").await), Code::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn refused_requests_get_their_codes_and_change_nothing() {
    let s = Setup::new();
    assert_eq!(code(s.create("../x").await), Code::INVALID_ARGUMENT);
    assert_eq!(code(s.start("nope", "").await), Code::NOT_FOUND);
    s.create("c1").await.unwrap();
    assert_eq!(code(s.create("c1").await), Code::ALREADY_EXISTS);
    // Created, not started: no pause, no exec; a second start after the first is refused.
    let pause = PauseRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(
        code(s.service.pause(&ctx(), pause.clone()).await),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(code(s.exec("c1", "e1").await), Code::FAILED_PRECONDITION);
    s.start("c1", "").await.unwrap();
    assert_eq!(code(s.start("c1", "").await), Code::FAILED_PRECONDITION);
    // Running: no delete.
    assert_eq!(code(s.delete("c1", "").await), Code::FAILED_PRECONDITION);
    // An update that is not an OCI LinuxResources, or one above the policy's pids ceiling.
    let update = |json: &str| UpdateTaskRequest {
        id: "c1".into(),
        resources: MessageField::some(
            containerd_shim::protos::protobuf::well_known_types::any::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: json.as_bytes().to_vec(),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    assert_eq!(
        code(s.service.update(&ctx(), update("[1]")).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(
            s.service
                .update(&ctx(), update(r#"{"pids":{"limit":1000000}}"#))
                .await
        ),
        Code::INVALID_ARGUMENT
    );
    s.service
        .update(&ctx(), update(r#"{"pids":{"limit":64}}"#))
        .await
        .unwrap();
    // A create the sandbox refuses keeps the sandbox's code and registers nothing.
    *s.sandbox.refuse_next.lock().unwrap() = Some(Error::FailedPrecondition("no".into()));
    assert_eq!(code(s.create("c2").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(s.state("c2", "").await), Code::NOT_FOUND);
    assert_eq!(
        s.calls(),
        [
            "create c1",
            "start c1",
            "update c1 pids Some(64)",
            "create c2"
        ]
    );
    assert_eq!(s.events.topics(), ["create", "start"]);
}

#[tokio::test(start_paused = true)]
async fn exec_ids_are_checked_and_execs_confined_to_the_init() {
    let s = Setup::new();
    let c = s.running("c1").await;
    assert_eq!(code(s.exec("c1", "bad/id").await), Code::INVALID_ARGUMENT);
    assert_eq!(code(s.exec("nope", "e1").await), Code::NOT_FOUND);
    s.exec("c1", "e1").await.unwrap();
    assert_eq!(code(s.exec("c1", "e1").await), Code::ALREADY_EXISTS);
    assert_eq!(code(s.start("c1", "e2").await), Code::NOT_FOUND);
    assert_eq!(s.state("c1", "e1").await.unwrap().status(), Status::CREATED);
    let pid = s.start("c1", "e1").await.unwrap().pid;
    assert_eq!(code(s.start("c1", "e1").await), Code::FAILED_PRECONDITION);
    assert_eq!(s.state("c1", "e1").await.unwrap().pid, pid);
    // The exec's capabilities were cut down to the init's before the sandbox saw them.
    let e = s.core_exec("c1", "e1").await;
    let caps = e.process.capabilities().clone().unwrap();
    let bounding: Vec<String> = caps
        .bounding()
        .iter()
        .flatten()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(bounding, ["KILL"]);
    assert_eq!(e.process.no_new_privileges(), Some(true));
    c.exec("e1").exit(3);
    assert_eq!(s.wait("c1", "e1").await.exit_status, 3);
    assert_eq!(
        code(s.kill("c1", "e1", libc::SIGKILL, false).await),
        Code::NOT_FOUND
    );
    assert_eq!(s.delete("c1", "e1").await.unwrap().exit_status, 3);
    assert_eq!(code(s.state("c1", "e1").await), Code::NOT_FOUND);
    assert_eq!(
        s.events.topics(),
        ["create", "start", "exec-added", "exec-started", "exit"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_execs_exit_is_reported_before_its_inits() {
    let s = Setup::new();
    let c = s.running("c1").await;
    s.exec("c1", "e1").await.unwrap();
    s.start("c1", "e1").await.unwrap();
    c.close_output();
    c.init.exit(0);
    s.until("exit", 2).await;
    assert_eq!(
        c.exec("e1").signals.lock().unwrap().as_slice(),
        [libc::SIGKILL],
        "the exec outlived its init and was killed"
    );
    let exits: Vec<(String, u32)> = s
        .events
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.topic == "/tasks/exit")
        .map(|e| {
            use containerd_shim::protos::protobuf::Message;
            let x = TaskExit::parse_from_bytes(&e.event.value).unwrap();
            (x.id, x.exit_status)
        })
        .collect();
    assert_eq!(exits, [("e1".into(), 137), ("c1".into(), 0)]);
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_reported_once_and_before_the_exit() {
    // Seen by the watcher while the container runs, then again at the exit: one TaskOOM.
    let s = Setup::new();
    let c = s.running("c1").await;
    c.oom_kill(true);
    s.until("oom", 1).await;
    c.close_output();
    c.init.exit(137);
    s.until("exit", 1).await;
    assert_eq!(s.events.topics(), ["create", "start", "oom", "exit"]);

    // The kill that ended the init, before the watcher heard of it: TaskOOM, then TaskExit.
    let s = Setup::new();
    let c = s.running("c2").await;
    c.oom_kill(false);
    c.close_output();
    c.init.exit(137);
    s.until("exit", 1).await;
    assert_eq!(s.events.topics(), ["create", "start", "oom", "exit"]);
}

#[tokio::test(start_paused = true)]
async fn the_exit_waits_for_the_output_up_to_the_drain_limit() {
    let s = Setup::new();
    let c = s.running("c1").await;
    c.init.exit(0);
    // The output copy still runs: no TaskExit yet, and the container is not yet stopped.
    tokio::time::sleep(DRAIN_LIMIT / 2).await;
    assert_eq!(s.events.topics(), ["create", "start"]);
    assert_eq!(s.state("c1", "").await.unwrap().status(), Status::RUNNING);
    c.close_output();
    s.until("exit", 1).await;

    // An output copy that never ends (a daemonised grandchild holds the pipe) holds the
    // exit for the drain limit only.
    let s = Setup::new();
    let c = s.running("c2").await;
    let t0 = tokio::time::Instant::now();
    c.init.exit(0);
    s.until("exit", 1).await;
    let waited = t0.elapsed();
    assert!(
        waited >= DRAIN_LIMIT && waited < DRAIN_LIMIT * 2,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pause_resume_and_sigkill_of_a_paused_container() {
    let s = Setup::new();
    let c = s.running("c1").await;
    let pause = PauseRequest {
        id: "c1".into(),
        ..Default::default()
    };
    s.service.pause(&ctx(), pause.clone()).await.unwrap();
    assert_eq!(s.state("c1", "").await.unwrap().status(), Status::PAUSED);
    assert_eq!(
        code(s.service.pause(&ctx(), pause).await),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(code(s.exec("c1", "e1").await), Code::FAILED_PRECONDITION);
    // A frozen process dies only once thawed: SIGKILL, then resume.
    s.kill("c1", "", libc::SIGKILL, false).await.unwrap();
    c.close_output();
    assert_eq!(s.wait("c1", "").await.exit_status, 137);
    assert_eq!(
        s.calls()[1..4],
        ["start c1", "pause c1", "resume c1"],
        "{:?}",
        s.calls()
    );
    assert_eq!(s.events.topics()[..3], ["create", "start", "paused"]);
}

#[tokio::test(start_paused = true)]
async fn kill_all_reaches_the_sandbox_and_a_created_container_can_be_deleted() {
    let s = Setup::new();
    s.create("c1").await.unwrap();
    s.kill("c1", "", libc::SIGKILL, true).await.unwrap();
    s.sandbox.container("c1").close_output();
    assert_eq!(s.wait("c1", "").await.exit_status, 137);
    s.delete("c1", "").await.unwrap();
    assert_eq!(
        code(s.kill("c1", "", libc::SIGKILL, false).await),
        Code::NOT_FOUND
    );

    // Deleted without a start: the waiting init is ended first, its exit reported in order.
    let s = Setup::new();
    s.create("c2").await.unwrap();
    s.sandbox.container("c2").close_output();
    let d = s.delete("c2", "").await.unwrap();
    assert_eq!(d.exit_status, 137);
    assert_eq!(s.events.topics(), ["create", "exit", "delete"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_shim_only_when_no_container_is_left() {
    let s = Setup::new();
    let c = s.running("c1").await;
    let ended = || async {
        tokio::time::timeout(Duration::from_millis(10), s.exit.wait())
            .await
            .is_ok()
    };
    s.service
        .shutdown(&ctx(), ShutdownRequest::default())
        .await
        .unwrap();
    assert!(!ended().await, "the shim ended with a container left");
    c.close_output();
    c.init.exit(0);
    s.wait("c1", "").await;
    s.delete("c1", "").await.unwrap();
    s.service
        .shutdown(&ctx(), ShutdownRequest::default())
        .await
        .unwrap();
    assert!(ended().await);
}

impl Setup {
    /// The core's record of an exec.
    async fn core_exec(&self, id: &str, exec_id: &str) -> Arc<Exec> {
        self.service
            .get(id)
            .await
            .unwrap()
            .exec(exec_id)
            .await
            .unwrap()
    }
}
