//! Task events for containerd, packed without protobuf reflection.
//!
//! `containerd-shim`'s `RemotePublisher::publish` names an event's type through
//! `descriptor_dyn().full_name()`. The first call builds rust-protobuf's reflection tables for the
//! event's .proto file and everything it imports (gogo.proto, hence all of descriptor.proto with
//! its comments): measured here, ~0.6 MiB of heap that an idle shim then keeps for its whole life,
//! built on the Create path (TaskCreate is the first event). The type names are fixed by
//! containerd's API, so each event type carries its own and the envelope is handed to the
//! publisher's queue (same queue, same retries) already packed.
//!
//! The task core publishes through an [`EventSink`]: containerd's publisher in the shim, a
//! recorder in the core's unit tests.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::Events;
use containerd_shim::TtrpcContext;
use tracing::warn;

/// Where the task core's events go.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Queues one packed event; a failure is logged (a publisher retries on its own).
    async fn forward(&self, envelope: Envelope);
}

#[async_trait::async_trait]
impl EventSink for RemotePublisher {
    async fn forward(&self, envelope: Envelope) {
        let topic = envelope.topic.clone();
        let ctx = TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        };
        let req = ForwardRequest {
            envelope: MessageField::some(envelope),
            ..Default::default()
        };
        if let Err(e) = <RemotePublisher as Events>::forward(self, &ctx, req).await {
            warn!(topic, "publish event failed: {e}");
        }
    }
}

/// A task event with the protobuf type name containerd decodes it by.
pub trait TaskEvent: Message {
    const TYPE_NAME: &'static str;
}

macro_rules! task_events {
    ($($t:ident),* $(,)?) => {
        $(impl TaskEvent for $t {
            const TYPE_NAME: &'static str = concat!("containerd.events.", stringify!($t));
        })*
    };
}

task_events!(
    TaskCreate,
    TaskStart,
    TaskDelete,
    TaskExit,
    TaskOOM,
    TaskExecAdded,
    TaskExecStarted,
    TaskPaused,
    TaskResumed,
);

/// The envelope containerd's event service receives for `event`.
pub fn envelope<E: TaskEvent>(namespace: &str, topic: &str, event: &E) -> Envelope {
    let value = event
        .write_to_bytes()
        .expect("task events have no required fields");
    Envelope {
        timestamp: MessageField::some(Timestamp::now()),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        event: MessageField::some(Any {
            type_url: E::TYPE_NAME.to_string(),
            value,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Queues `event` for containerd.
pub async fn publish<E: TaskEvent>(sink: &dyn EventSink, namespace: &str, topic: &str, event: E) {
    sink.forward(envelope(namespace, topic, &event)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::MessageFull;
    use containerd_shim::protos::topics;

    fn name_matches<E: TaskEvent + MessageFull>() {
        assert_eq!(E::TYPE_NAME, E::descriptor().full_name());
    }

    #[test]
    fn type_names_are_the_protobuf_full_names() {
        name_matches::<TaskCreate>();
        name_matches::<TaskStart>();
        name_matches::<TaskDelete>();
        name_matches::<TaskExit>();
        name_matches::<TaskOOM>();
        name_matches::<TaskExecAdded>();
        name_matches::<TaskExecStarted>();
        name_matches::<TaskPaused>();
        name_matches::<TaskResumed>();
    }

    #[test]
    fn envelope_round_trips() {
        let ev = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 3,
            ..Default::default()
        };
        let env = envelope("ns", topics::TASK_EXIT_EVENT_TOPIC, &ev);
        assert_eq!(env.namespace, "ns");
        assert_eq!(env.topic, "/tasks/exit");
        assert!(env.timestamp.seconds > 0);
        let any = env.event.unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back, ev);
    }
}
