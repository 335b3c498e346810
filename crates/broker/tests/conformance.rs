//! Broker conformance suite, run against every backend available here.

use std::time::Duration;

use orch_broker::{Broker, ChannelMessage, Dispatch, Error, MemoryBroker, RedisBroker};
use orch_core::{Role, RunId};

fn dispatch(task: &str, role: Role) -> Dispatch {
    Dispatch {
        run_id: RunId("r1".into()),
        task_id: task.into(),
        role,
        attempt: 1,
    }
}

async fn queues_are_per_role(b: &dyn Broker) {
    b.publish(&dispatch("be", Role::BackendEngineer))
        .await
        .unwrap();
    b.publish(&dispatch("fe", Role::FrontendEngineer))
        .await
        .unwrap();
    assert_eq!(b.depth(Role::BackendEngineer).await.unwrap(), 1);
    let got = b
        .receive(Role::FrontendEngineer, "w1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dispatch.task_id, "fe");
    b.ack(&got).await.unwrap();
    let got = b
        .receive(Role::BackendEngineer, "w1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dispatch, dispatch("be", Role::BackendEngineer));
    b.ack(&got).await.unwrap();
    assert!(
        b.receive(Role::BackendEngineer, "w1", Duration::from_millis(20))
            .await
            .unwrap()
            .is_none()
    );
}

async fn fifo_within_a_queue(b: &dyn Broker) {
    for i in 0..5 {
        b.publish(&dispatch(&format!("t{i}"), Role::TechLead))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let d = b
            .receive(Role::TechLead, "w", Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.dispatch.task_id, format!("t{i}"));
        b.ack(&d).await.unwrap();
    }
}

async fn wakes_are_deduplicated(b: &dyn Broker) {
    let r = RunId("run-a".into());
    b.wake(&r).await.unwrap();
    b.wake(&r).await.unwrap();
    b.wake(&RunId("run-b".into())).await.unwrap();
    let got = b.wakes(Duration::from_millis(100)).await.unwrap();
    assert_eq!(got, vec![r, RunId("run-b".into())]);
    assert!(b.wakes(Duration::from_millis(10)).await.unwrap().is_empty());
}

fn message(run: &str, channel: &str, text: &str) -> ChannelMessage {
    ChannelMessage {
        run_id: RunId(run.into()),
        channel: channel.into(),
        from_role: Role::BackendEngineer,
        task_id: "backend".into(),
        text: text.into(),
        seq: None,
    }
}

async fn next_within(sub: &mut orch_broker::ChannelSubscription) -> Option<ChannelMessage> {
    tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .ok()
        .flatten()
}

/// A unique run id, so that suites sharing a Redis server never cross.
fn run_id() -> String {
    format!("run-{}", uuid::Uuid::new_v4())
}

async fn channels_deliver_to_subscribers_of_that_run_and_channel(b: &dyn Broker) {
    let (run, other_run) = (run_id(), run_id());
    // Published before anyone subscribed: not kept (the event log keeps it).
    b.publish_channel(&message(&run, "team", "too early"))
        .await
        .unwrap();
    let mut team = b
        .subscribe_channel(&RunId(run.clone()), "team")
        .await
        .unwrap();
    let mut team2 = b
        .subscribe_channel(&RunId(run.clone()), "team")
        .await
        .unwrap();
    let mut fe = b
        .subscribe_channel(&RunId(run.clone()), "frontend_engineer")
        .await
        .unwrap();
    assert_eq!(
        (team.run_id().as_str(), team.channel()),
        (run.as_str(), "team")
    );

    b.publish_channel(&message(&other_run, "team", "other run"))
        .await
        .unwrap();
    b.publish_channel(&message(&run, "frontend_engineer", "for fe"))
        .await
        .unwrap();
    let first = message(&run, "team", "uses 422 for validation errors");
    b.publish_channel(&first).await.unwrap();
    b.publish_channel(&ChannelMessage {
        seq: Some(7),
        ..message(&run, "team", "second")
    })
    .await
    .unwrap();

    // Every subscriber of the channel gets every message, in order.
    for sub in [&mut team, &mut team2] {
        assert_eq!(next_within(sub).await, Some(first.clone()));
        let second = next_within(sub).await.unwrap();
        assert_eq!((second.text.as_str(), second.seq), ("second", Some(7)));
        assert_eq!(
            next_within(sub).await,
            None,
            "nothing of other runs or channels"
        );
        assert_eq!(sub.missed(), 0);
    }
    assert_eq!(next_within(&mut fe).await.unwrap().text, "for fe");
    assert_eq!(next_within(&mut fe).await, None);

    // Publishing after every subscriber left is fine.
    drop((team, team2, fe));
    b.publish_channel(&message(&run, "team", "nobody listens"))
        .await
        .unwrap();

    for bad in ["", "Team", "a b", "a:b", "é", &"x".repeat(65)] {
        let err = b
            .publish_channel(&message(&run, bad, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidChannel(_)), "{bad:?}: {err}");
        let err = b
            .subscribe_channel(&RunId(run.clone()), bad)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidChannel(_)), "{bad:?}: {err}");
    }
    b.subscribe_channel(&RunId(run.clone()), &"a-_9".repeat(16))
        .await
        .expect("64 characters is fine");
}

#[tokio::test]
async fn memory_broker_conforms() {
    let b = MemoryBroker::new();
    queues_are_per_role(&b).await;
    fifo_within_a_queue(&b).await;
    wakes_are_deduplicated(&b).await;
    channels_deliver_to_subscribers_of_that_run_and_channel(&b).await;
}

/// A Redis broker under a fresh random prefix, at `ORCH_TEST_REDIS_URL`
/// (default `redis://127.0.0.1:6379`); `None` when `ORCH_SKIP_REDIS=1`.
/// Fails, saying how to start one, when no server answers.
async fn test_redis_broker() -> Option<RedisBroker> {
    if std::env::var("ORCH_SKIP_REDIS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: ORCH_SKIP_REDIS=1");
        return None;
    }
    let url = std::env::var("ORCH_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let prefix = format!("test:{}:", uuid::Uuid::new_v4());
    match RedisBroker::connect(&url, &prefix).await {
        Ok(b) => Some(b),
        Err(e) => panic!(
            "{e}\nThe Redis broker tests need a server: start one with\n  \
             redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no\n\
             or set ORCH_TEST_REDIS_URL to one, or ORCH_SKIP_REDIS=1 to skip these tests."
        ),
    }
}

#[tokio::test]
async fn redis_broker_conforms() {
    let Some(b) = test_redis_broker().await else {
        return;
    };
    assert_eq!(b.backend(), "redis");
    queues_are_per_role(&b).await;
    fifo_within_a_queue(&b).await;
    wakes_are_deduplicated(&b).await;
    channels_deliver_to_subscribers_of_that_run_and_channel(&b).await;
    b.purge().await.unwrap();
}

#[tokio::test]
async fn connect_picks_the_backend_from_the_url() {
    let b = orch_broker::connect(None, "").await.unwrap();
    assert_eq!(b.backend(), "in-process");
    let err = orch_broker::connect(Some("amqp://u:secret@h"), "")
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("secret"), "{err}");
    let Some(redis) = test_redis_broker().await else {
        return;
    };
    let url = std::env::var("ORCH_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let b = orch_broker::connect(Some(&url), redis.prefix())
        .await
        .unwrap();
    assert_eq!(b.backend(), "redis");
    redis.purge().await.unwrap();
}
