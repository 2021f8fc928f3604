//! The worker's unary pull on the Pub/Sub emulator: it takes no more than it asks for, a
//! message in hand is not redelivered past its ack deadline while its lease is kept, a
//! dropped lease hands the message back, and an acked message never returns.

use integration_tests::{emulator, unique};
use pubsub_bus::SubscriptionSpec;
use pubsub_bus::pull::{LeaseKeeper, LeaseSettings, Puller, Received};
use std::time::{Duration, Instant};

async fn subscription() -> (pubsub_bus::TopicPublisher, Puller) {
    let bus = emulator(&unique("proj"));
    let topic = unique("jobs");
    bus.ensure_topic(&topic).await.expect("topic");
    let mut spec = SubscriptionSpec::plain(format!("{topic}-sub"), topic.clone());
    spec.ack_deadline_secs = 10;
    spec.min_backoff = Duration::from_secs(1);
    spec.max_backoff = Duration::from_secs(1);
    bus.ensure_subscription(&spec).await.expect("subscription");
    let publisher = bus.publisher(&topic, Duration::from_secs(10)).await.expect("publisher");
    (publisher, bus.puller(&spec.name).expect("puller"))
}

/// Pulls until `want` messages arrived or `limit` passed.
async fn pull_for(puller: &Puller, want: usize, limit: Duration) -> Vec<Received> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < want && started.elapsed() < limit {
        got.extend(puller.pull(want - got.len()).await.expect("pull"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test]
async fn a_pull_takes_at_most_what_it_asks_for_with_data_and_attributes() {
    let (publisher, puller) = subscription().await;
    for i in 0..5 {
        publisher.publish(format!("job {i}").into_bytes(), [("tenant_id", "acme")]).await.expect("publish");
    }
    let first = pull_for(&puller, 2, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 2, "asked for 2");
    let rest = pull_for(&puller, 3, Duration::from_secs(10)).await;
    let mut bodies: Vec<String> =
        first.iter().chain(&rest).map(|m| String::from_utf8(m.data.clone()).expect("utf-8")).collect();
    bodies.sort();
    assert_eq!(bodies, ["job 0", "job 1", "job 2", "job 3", "job 4"]);
    assert!(first.iter().all(|m| m.attributes.get("tenant_id").map(String::as_str) == Some("acme")));
    let ids: Vec<String> = first.iter().chain(&rest).map(|m| m.ack_id.clone()).collect();
    puller.acknowledge(&ids).await.expect("ack");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(puller.pull(10).await.expect("pull").is_empty(), "acked messages came back after the ack deadline");
}

#[tokio::test]
async fn a_kept_lease_outlives_the_ack_deadline_and_a_dropped_one_hands_the_message_back() {
    let (publisher, puller) = subscription().await;
    publisher.publish(b"long run".to_vec(), [("k", "v")]).await.expect("publish");
    let message = pull_for(&puller, 1, Duration::from_secs(10)).await.pop().expect("the message");
    let settings = LeaseSettings {
        ack_deadline: Duration::from_secs(10),
        max_lease: Duration::from_secs(600),
        flush_every: Duration::from_millis(50),
    };
    let (keeper, task) = LeaseKeeper::start(puller.clone(), settings);
    let lease = keeper.hold(&message);
    // Twice the ack deadline: without the extensions it would be redelivered after 10 s.
    let again = pull_for(&puller, 1, Duration::from_secs(20)).await;
    assert!(again.is_empty(), "redelivered while its lease was kept: {again:?}");
    drop(lease);
    let back = pull_for(&puller, 1, Duration::from_secs(5)).await;
    assert_eq!(back.len(), 1, "a dropped lease hands the message back at once");
    assert_eq!(back[0].data, b"long run");
    keeper.hold(&back[0]).ack();
    drop(keeper);
    let report = task.await.expect("keeper");
    assert_eq!((report.acked, report.nacked, report.acks_lost), (1, 1, 0));
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(puller.pull(1).await.expect("pull").is_empty(), "an acked message came back");
}

#[tokio::test]
async fn a_missing_subscription_is_a_permanent_error_naming_it() {
    let bus = emulator(&unique("proj"));
    let err = bus.puller("no-such-sub").expect("puller").pull(1).await.expect_err("no subscription");
    assert!(err.permanent, "{err}");
    assert!(err.to_string().contains("no-such-sub"), "{err}");
}
