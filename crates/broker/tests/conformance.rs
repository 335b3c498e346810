//! Broker conformance suite, run against every backend available here.

use std::time::Duration;

use orch_broker::{Broker, Dispatch, MemoryBroker};
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

#[tokio::test]
async fn memory_broker_conforms() {
    let b = MemoryBroker::new();
    queues_are_per_role(&b).await;
    fifo_within_a_queue(&b).await;
    wakes_are_deduplicated(&b).await;
}
