//! Redis-specific broker behaviour: reclaiming from dead consumers, loss of
//! the streams, malformed entries, wake-ups shared by several engines,
//! channels across processes, and connection failures. Needs a Redis server (see `test_url`), like the
//! conformance suite; `ORCH_SKIP_REDIS=1` skips.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_broker::{Broker, ChannelMessage, Dispatch, Error, RedisBroker};
use orch_core::{Role, RunId};

fn test_url() -> String {
    std::env::var("ORCH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn skip() -> bool {
    let skip = std::env::var("ORCH_SKIP_REDIS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipped: ORCH_SKIP_REDIS=1");
    }
    skip
}

/// A broker under `prefix` at the test server; fails, saying how to start
/// one, when no server answers.
async fn broker_at(prefix: &str) -> RedisBroker {
    match RedisBroker::connect(&test_url(), prefix).await {
        Ok(b) => b,
        Err(e) => panic!(
            "{e}\nThe Redis broker tests need a server: start one with\n  \
             redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no\n\
             or set ORCH_TEST_REDIS_URL to one, or ORCH_SKIP_REDIS=1 to skip these tests."
        ),
    }
}

fn fresh_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4())
}

/// A plain connection, to tamper with the streams behind the broker's back.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(test_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn dispatch(task: &str, role: Role) -> Dispatch {
    Dispatch {
        run_id: RunId("r1".into()),
        task_id: task.into(),
        role,
        attempt: 1,
    }
}

const SHORT: Duration = Duration::from_millis(50);

#[tokio::test]
async fn an_entry_never_acked_is_reclaimed_by_another_consumer() {
    if skip() {
        return;
    }
    let reclaim_after = Duration::from_millis(200);
    let b = broker_at(&fresh_prefix())
        .await
        .with_reclaim_after(reclaim_after);
    b.publish(&dispatch("t", Role::DatabaseEngineer))
        .await
        .unwrap();
    let first = b
        .receive(Role::DatabaseEngineer, "dies", SHORT)
        .await
        .unwrap()
        .unwrap();
    // Not yet: the first consumer may still be working on it.
    assert!(
        b.receive(Role::DatabaseEngineer, "survivor", SHORT)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.depth(Role::DatabaseEngineer).await.unwrap(), 1);

    let deadline = Instant::now() + reclaim_after + Duration::from_secs(3);
    let again = loop {
        if let Some(d) = b
            .receive(Role::DatabaseEngineer, "survivor", SHORT)
            .await
            .unwrap()
        {
            break d;
        }
        assert!(Instant::now() < deadline, "entry was never reclaimed");
    };
    assert_eq!(
        again, first,
        "same entry, same dispatch (attempt from the entry)"
    );
    b.ack(&again).await.unwrap();
    assert_eq!(b.depth(Role::DatabaseEngineer).await.unwrap(), 0);
    // The dead consumer's late ack is harmless.
    b.ack(&first).await.unwrap();
    tokio::time::sleep(reclaim_after + SHORT).await;
    assert!(
        b.receive(Role::DatabaseEngineer, "survivor", SHORT)
            .await
            .unwrap()
            .is_none()
    );
    b.purge().await.unwrap();
}

/// Deduplication is the store's job: the broker delivers every publish.
#[tokio::test]
async fn the_same_dispatch_published_twice_is_delivered_twice() {
    if skip() {
        return;
    }
    let b = broker_at(&fresh_prefix()).await;
    let d = dispatch("twice", Role::UxEngineer);
    b.publish(&d).await.unwrap();
    b.publish(&d).await.unwrap();
    assert_eq!(b.depth(Role::UxEngineer).await.unwrap(), 2);
    let one = b
        .receive(Role::UxEngineer, "w", SHORT)
        .await
        .unwrap()
        .unwrap();
    let two = b
        .receive(Role::UxEngineer, "w", SHORT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((one.dispatch.clone(), two.dispatch.clone()), (d.clone(), d));
    assert_ne!(one.receipt, two.receipt);
    b.ack(&one).await.unwrap();
    b.ack(&two).await.unwrap();
    assert_eq!(b.depth(Role::UxEngineer).await.unwrap(), 0);
    b.purge().await.unwrap();
}

/// Like `FLUSHALL` or a failover without persistence: the streams and their
/// groups vanish. The groups are re-created on `NOGROUP`.
#[tokio::test]
async fn deleted_streams_and_groups_are_recreated() {
    if skip() {
        return;
    }
    let b = broker_at(&fresh_prefix()).await;
    let key = b.stream_key(Role::CodeReviewer);
    let mut raw = raw().await;

    // Deleted, then published to (which re-creates the stream without its group).
    redis::cmd("DEL")
        .arg(&key)
        .exec_async(&mut raw)
        .await
        .unwrap();
    b.publish(&dispatch("after-loss", Role::CodeReviewer))
        .await
        .unwrap();
    let got = b
        .receive(Role::CodeReviewer, "w", SHORT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dispatch.task_id, "after-loss");
    b.ack(&got).await.unwrap();

    // Deleted, then read from first.
    redis::cmd("DEL")
        .arg(&key)
        .exec_async(&mut raw)
        .await
        .unwrap();
    assert!(
        b.receive(Role::CodeReviewer, "w", SHORT)
            .await
            .unwrap()
            .is_none()
    );
    b.publish(&dispatch("later", Role::CodeReviewer))
        .await
        .unwrap();
    let got = b
        .receive(Role::CodeReviewer, "w", SHORT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dispatch.task_id, "later");
    b.ack(&got).await.unwrap();

    // The wake-up stream too.
    redis::cmd("DEL")
        .arg(b.wakes_key())
        .exec_async(&mut raw)
        .await
        .unwrap();
    b.wake(&RunId("run-x".into())).await.unwrap();
    assert_eq!(b.wakes(SHORT).await.unwrap(), vec![RunId("run-x".into())]);

    // And everything at once.
    b.purge().await.unwrap();
    b.publish(&dispatch("after-purge", Role::CodeReviewer))
        .await
        .unwrap();
    let got = b
        .receive(Role::CodeReviewer, "w", SHORT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dispatch.task_id, "after-purge");
    b.ack(&got).await.unwrap();
    b.purge().await.unwrap();
}

#[tokio::test]
async fn a_malformed_entry_is_reported_once_and_deleted() {
    if skip() {
        return;
    }
    let b = broker_at(&fresh_prefix()).await;
    let key = b.stream_key(Role::TechLead);
    let mut raw = raw().await;
    redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("task_id")
        .arg("no-run-no-role")
        .exec_async(&mut raw)
        .await
        .unwrap();
    b.publish(&dispatch("good", Role::TechLead)).await.unwrap();

    let err = b.receive(Role::TechLead, "w", SHORT).await.unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err}");
    assert!(err.to_string().contains("role"), "{err}");
    let got = b
        .receive(Role::TechLead, "w", SHORT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dispatch.task_id, "good");
    b.ack(&got).await.unwrap();
    assert_eq!(b.depth(Role::TechLead).await.unwrap(), 0);
    b.purge().await.unwrap();
}

/// Two engine processes: every wake-up reaches one of them.
#[tokio::test]
async fn each_wake_reaches_one_of_several_engines() {
    if skip() {
        return;
    }
    let prefix = fresh_prefix();
    let (a, b) = (broker_at(&prefix).await, broker_at(&prefix).await);
    let runs: Vec<RunId> = (0..10).map(|i| RunId(format!("run-{i}"))).collect();
    for r in &runs {
        a.wake(r).await.unwrap();
    }
    let mut seen = b.wakes(SHORT).await.unwrap();
    seen.extend(a.wakes(SHORT).await.unwrap());
    seen.sort();
    assert_eq!(seen, runs, "each wake-up delivered once in all");
    assert!(a.wakes(SHORT).await.unwrap().is_empty());
    assert!(b.wakes(SHORT).await.unwrap().is_empty());

    // A blocked engine is woken at once.
    let waiting = {
        let a = Arc::new(a);
        let a2 = a.clone();
        (
            a,
            tokio::spawn(async move { a2.wakes(Duration::from_secs(5)).await }),
        )
    };
    tokio::time::sleep(SHORT).await;
    let started = Instant::now();
    b.wake(&RunId("late".into())).await.unwrap();
    let got = waiting.1.await.unwrap().unwrap();
    assert_eq!(got, vec![RunId("late".into())]);
    assert!(started.elapsed() < Duration::from_secs(2));
    waiting.0.purge().await.unwrap();
}

/// A blocked `receive` holds a connection of its own: it neither delays
/// other commands nor misses a publish.
#[tokio::test]
async fn blocking_receives_do_not_hold_up_other_commands() {
    if skip() {
        return;
    }
    let b = Arc::new(broker_at(&fresh_prefix()).await);
    let blocked: Vec<_> = (0..3)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.receive(
                    Role::FrontendEngineer,
                    &format!("w{i}"),
                    Duration::from_secs(5),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(SHORT).await;

    let started = Instant::now();
    b.publish(&dispatch("be", Role::BackendEngineer))
        .await
        .unwrap();
    let got = b
        .receive(Role::BackendEngineer, "other", SHORT)
        .await
        .unwrap()
        .unwrap();
    b.ack(&got).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    for i in 0..3 {
        b.publish(&dispatch(&format!("fe{i}"), Role::FrontendEngineer))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for h in blocked {
        let d = h.await.unwrap().unwrap().expect("woken by the publish");
        b.ack(&d).await.unwrap();
        tasks.push(d.dispatch.task_id);
    }
    tasks.sort();
    assert_eq!(tasks, ["fe0", "fe1", "fe2"]);
    assert!(started.elapsed() < Duration::from_secs(2));
    b.purge().await.unwrap();
}

/// A message published by one process reaches a subscriber in another, as
/// JSON on `{prefix}chan:{run}:{channel}`; a foreign payload is skipped.
#[tokio::test]
async fn channel_messages_cross_processes_as_json_on_the_channel_key() {
    if skip() {
        return;
    }
    let prefix = fresh_prefix();
    let (worker, api) = (broker_at(&prefix).await, broker_at(&prefix).await);
    let run = RunId(format!("run-{}", uuid::Uuid::new_v4()));
    let key = api.channel_key(&run, "team");
    assert_eq!(key, format!("{prefix}chan:{}:team", run.as_str()));
    let mut sub = api.subscribe_channel(&run, "team").await.unwrap();

    let mut raw = raw().await;
    redis::cmd("PUBLISH")
        .arg(&key)
        .arg("not json")
        .exec_async(&mut raw)
        .await
        .unwrap();
    let msg = ChannelMessage {
        run_id: run.clone(),
        channel: "team".into(),
        from_role: Role::DatabaseEngineer,
        task_id: "database".into(),
        text: "ids are UUIDs".into(),
        seq: None,
    };
    worker.publish_channel(&msg).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
    assert_eq!(sub.missed(), 1, "the foreign payload was skipped");

    // What a `redis-cli SUBSCRIBE` sees.
    let mut listener = redis::Client::open(test_url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    listener.subscribe(&key).await.unwrap();
    worker.publish_channel(&msg).await.unwrap();
    let raw_msg = {
        use futures_util::StreamExt;
        tokio::time::timeout(Duration::from_secs(2), listener.on_message().next())
            .await
            .unwrap()
            .unwrap()
    };
    let json: serde_json::Value = serde_json::from_slice(raw_msg.get_payload_bytes()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "run_id": run.as_str(), "channel": "team", "from_role": "database_engineer",
            "task_id": "database", "text": "ids are UUIDs",
        })
    );
    // Pub/sub keeps no keys behind.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}chan:*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    worker.purge().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_quick_connect_error() {
    // Needs no server: nothing listens on port 1.
    for url in [
        "redis://user:hunter2@127.0.0.1:1",
        "redis://:hunter2@127.0.0.1:1/0",
    ] {
        let started = Instant::now();
        let err = RedisBroker::connect(url, "").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let Error::Connect {
            url: shown,
            message,
        } = &err
        else {
            panic!("expected Error::Connect, got {err:?}");
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
        assert!(message.contains("redis-server is running"), "{message}");
    }
    // A URL that no server can fix is a configuration error, not retried.
    let err = RedisBroker::connect("not a url", "").await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let Err(err) = orch_broker::connect(Some("http://127.0.0.1:6379"), "").await else {
        panic!("an http:// URL is refused");
    };
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("redis://"), "{err}");
}

/// The consumer names of `role`'s stream, sorted.
async fn consumers(b: &RedisBroker, role: Role) -> Vec<String> {
    let info: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(b.stream_key(role))
        .arg("workers")
        .query_async(&mut raw().await)
        .await
        .expect("XINFO CONSUMERS");
    let mut names: Vec<String> = info.consumers.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn idle_consumers_without_pending_messages_are_forgotten() {
    if skip() {
        return;
    }
    let b = broker_at(&fresh_prefix()).await;
    let role = Role::BackendEngineer;
    b.publish(&dispatch("t1", role)).await.unwrap();
    b.publish(&dispatch("t2", role)).await.unwrap();
    // "gone" handled its message and left; "holder" holds one unacknowledged.
    let done = b.receive(role, "gone", SHORT).await.unwrap().expect("t1");
    b.ack(&done).await.unwrap();
    let held = b.receive(role, "holder", SHORT).await.unwrap().expect("t2");
    assert_eq!(consumers(&b, role).await, ["gone", "holder"]);

    assert_eq!(
        b.prune_consumers(Duration::from_secs(3600)).await.unwrap(),
        0,
        "none has been idle for an hour"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        b.prune_consumers(Duration::from_millis(10)).await.unwrap(),
        1
    );
    assert_eq!(
        consumers(&b, role).await,
        ["holder"],
        "the consumer with a pending message is kept"
    );
    // Its message is still there to acknowledge; a forgotten name that
    // receives again is simply a consumer again.
    b.ack(&held).await.unwrap();
    b.publish(&dispatch("t3", role)).await.unwrap();
    let again = b.receive(role, "gone", SHORT).await.unwrap().expect("t3");
    assert_eq!(again.dispatch.task_id, "t3");
    assert_eq!(consumers(&b, role).await, ["gone", "holder"]);
    b.purge().await.unwrap();
}
