//! The embedded feed over a real SQLite event store, with its checkpoints in a real file.

mod support;

use std::time::Duration;

use support::{DataDir, positions, within};
use workers::{EmbeddedFeed, EventFeed, FeedError};

#[tokio::test]
async fn a_consumer_receives_every_event_in_global_order_then_live_appends() {
    let data = DataDir::new().await;
    let mut stored = data.append("conn-a", 2).await;
    stored.extend(data.append("conn-b", 1).await);
    stored.extend(data.append("conn-a", 1).await);
    let mut feed = data.feed("runs").await;

    let first = within(feed.next_batch(3)).await.unwrap();
    let rest = within(feed.next_batch(100)).await.unwrap();
    assert_eq!(first, stored[..3]);
    assert_eq!(rest, stored[3..]);
    assert_eq!(positions(&stored), [1, 2, 3, 4]);

    // Caught up, the feed waits for the next append rather than answering empty.
    let waiting = tokio::spawn(async move {
        let batch = feed.next_batch(100).await;
        (feed, batch)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "next_batch returned without a new event");
    let live = data.append("conn-c", 2).await;
    let (mut feed, batch) = within(waiting).await.unwrap();
    assert_eq!(batch.unwrap(), live);

    let more = data.append("conn-b", 1).await;
    assert_eq!(within(feed.next_batch(100)).await.unwrap(), more);
    assert_eq!(feed.delivered(), 7);
}

#[tokio::test]
async fn dropping_a_waiting_next_batch_loses_no_event() {
    let data = DataDir::new().await;
    let mut feed = data.feed("runs").await;
    let pending = tokio::time::timeout(Duration::from_millis(50), feed.next_batch(10)).await;
    assert!(pending.is_err(), "an empty store delivered something");

    let stored = data.append("conn-a", 2).await;
    assert_eq!(within(feed.next_batch(10)).await.unwrap(), stored);
}

#[tokio::test]
async fn a_reopened_feed_resumes_after_the_committed_position() {
    let data = DataDir::new().await;
    let stored = data.append("conn-a", 5).await;
    let mut feed = data.feed("runs").await;
    assert_eq!(positions(&within(feed.next_batch(3)).await.unwrap()), [1, 2, 3]);
    within(feed.commit(3)).await.unwrap();
    assert_eq!(feed.committed(), 3);
    drop(feed);

    let mut reopened = data.feed("runs").await;
    assert_eq!(reopened.committed(), 3);
    assert_eq!(within(reopened.next_batch(100)).await.unwrap(), stored[3..]);
}

#[tokio::test]
async fn without_a_commit_a_reopened_feed_delivers_the_events_again() {
    let data = DataDir::new().await;
    let stored = data.append("conn-a", 5).await;
    let mut feed = data.feed("runs").await;
    assert_eq!(within(feed.next_batch(100)).await.unwrap(), stored);
    drop(feed); // a crash before the commit

    let mut again = data.feed("runs").await;
    assert_eq!(within(again.next_batch(100)).await.unwrap(), stored);
    // Committing part of what was delivered redelivers only the rest.
    within(again.commit(2)).await.unwrap();
    drop(again);

    let mut rest = data.feed("runs").await;
    assert_eq!(within(rest.next_batch(100)).await.unwrap(), stored[2..]);
}

#[tokio::test]
async fn named_consumers_keep_independent_checkpoints() {
    let data = DataDir::new().await;
    let stored = data.append("conn-a", 4).await;
    let mut runs = data.feed("runs").await;
    let mut webhooks = data.feed("webhooks").await;

    assert_eq!(within(runs.next_batch(100)).await.unwrap(), stored);
    within(runs.commit(4)).await.unwrap();
    assert_eq!(within(webhooks.next_batch(2)).await.unwrap(), stored[..2]);
    within(webhooks.commit(2)).await.unwrap();
    drop((runs, webhooks));

    assert_eq!(data.checkpoint("runs").await, 4);
    assert_eq!(data.checkpoint("webhooks").await, 2);
    assert_eq!(data.checkpoint("never-ran").await, 0);

    let mut runs = data.feed("runs").await;
    let mut webhooks = data.feed("webhooks").await;
    assert_eq!(within(webhooks.next_batch(100)).await.unwrap(), stored[2..]);
    let nothing_new = tokio::time::timeout(Duration::from_millis(50), runs.next_batch(100)).await;
    assert!(nothing_new.is_err(), "runs got events it had committed");
}

#[tokio::test]
async fn committing_past_what_was_delivered_is_refused() {
    let data = DataDir::new().await;
    data.append("conn-a", 3).await;
    let mut feed = data.feed("runs").await;
    within(feed.next_batch(2)).await.unwrap();

    let refused = within(feed.commit(3)).await.unwrap_err();
    assert!(matches!(refused, FeedError::NotDelivered { position: 3, delivered: 2 }), "{refused:?}");
    assert!(!refused.is_retryable());
    assert_eq!(data.checkpoint("runs").await, 0);
}

#[tokio::test]
async fn a_checkpoint_never_moves_backwards() {
    let data = DataDir::new().await;
    let stored = data.append("conn-a", 4).await;
    let mut feed = data.feed("runs").await;
    within(feed.next_batch(100)).await.unwrap();
    within(feed.commit(3)).await.unwrap();
    within(feed.commit(1)).await.unwrap();
    assert_eq!(feed.committed(), 3);
    // Not even through another handle on the file (a second process under the same name).
    within(data.checkpoints.save("runs", 2)).await.unwrap();
    assert_eq!(data.checkpoint("runs").await, 3);
    drop(feed);

    let mut reopened = data.feed("runs").await;
    assert_eq!(within(reopened.next_batch(100)).await.unwrap(), stored[3..]);
}

#[tokio::test]
async fn a_checkpoint_past_the_stores_head_is_refused() {
    let data = DataDir::new().await;
    data.append("conn-a", 2).await;
    within(data.checkpoints.save("runs", 10)).await.unwrap();

    let refused = within(EmbeddedFeed::open(data.store.clone(), data.checkpoints.clone(), "runs")).await.unwrap_err();
    assert!(
        matches!(&refused, FeedError::CheckpointAhead { consumer, checkpoint: 10, head: 2 } if consumer == "runs"),
        "{refused:?}"
    );
}
