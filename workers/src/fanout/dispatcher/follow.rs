//! Following the store: the events the scheduler must know of, in store order, and the
//! history of a run that was redelivered.

use super::*;

/// What the follower hands the scheduler.
pub(super) enum Followed {
    /// What the scheduler must know of the events read, in store order.
    Events(Vec<Seen>),
    /// A run that had ended was redelivered: its history up to the redelivery.
    Redelivered(Vec<(EventEnvelope, RunEvent)>),
    /// Everything the store held at start has been read.
    CaughtUp,
}

/// Reads the store from its start, keeps the directory current, and hands run and subscription
/// events to the scheduler (bounded: a busy scheduler slows the follower down).
pub(super) async fn follow(shared: Arc<Shared>, out: mpsc::Sender<Followed>, shutdown: CancellationToken) {
    let store = &shared.store;
    let mut head = store.watch_head();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let start_head = loop {
        match store.head_position().await {
            Ok(head) => break head,
            Err(error) => {
                tracing::warn!(%error, "webhook dispatcher: reading the store's head failed");
                if !pause(backoff.next_delay(), &shutdown).await {
                    return;
                }
            }
        }
    };
    let mut position = 0;
    let mut announced = false;
    loop {
        head.borrow_and_update();
        let page = match store.read_all(position, FOLLOW_PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "webhook dispatcher: reading the store failed");
                if !pause(backoff.next_delay(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let got_events = !page.is_empty();
        if let Some(last) = page.last() {
            position = last.global_position;
            let mut relevant = Vec::new();
            for event in page {
                let Ok(decoded) = AnyEvent::decode(&event.event_type, event.schema_version, &event.data) else {
                    continue;
                };
                shared.directory.apply(&event, &decoded);
                if let AnyEvent::Run(RunEvent::RunRedeliveryRequested(_)) = &decoded {
                    if !relevant.is_empty() && out.send(Followed::Events(std::mem::take(&mut relevant))).await.is_err()
                    {
                        return;
                    }
                    match redelivered_history(store.as_ref(), &event).await {
                        Some(history) => {
                            if out.send(Followed::Redelivered(history)).await.is_err() {
                                return;
                            }
                        }
                        None => relevant.push(Seen::Event(event, decoded)),
                    }
                    continue;
                }
                let matched = match matched_for(&shared, &event, &decoded, &mut backoff, &shutdown).await {
                    Some(matched) => matched,
                    None => return,
                };
                relevant.extend(seen(&shared, event, decoded, matched));
            }
            shared.directory.advance(position);
            if !relevant.is_empty() && out.send(Followed::Events(relevant)).await.is_err() {
                return;
            }
        }
        if !announced && position >= start_head {
            announced = true;
            if out.send(Followed::CaughtUp).await.is_err() {
                return;
            }
        }
        // Read again at once while there was something to read; otherwise wait for an append.
        if got_events {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = head.changed() => if changed.is_err() { return },
        }
    }
}

/// One event as the scheduler needs it.
#[expect(clippy::large_enum_variant, reason = "nearly every item is an event; boxing would allocate for each")]
pub(super) enum Seen {
    /// A run or subscription event.
    Event(EventEnvelope, AnyEvent),
    /// A message that lanes with strict ordering get runs for: its place in their order, held
    /// before the fan-out's runs exist ([`Schedule::expect`]).
    Message { position: u64, runs: Vec<(LaneKey, String)> },
}

/// What the fan-out matches for a message event, by the same rule ([`matched_message`]); `None`
/// inside for other events. A store that fails the lookup of a connection's project is asked
/// again after a backoff; `None` only when shutdown came first.
async fn matched_for(
    shared: &Shared,
    event: &EventEnvelope,
    decoded: &AnyEvent,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<Option<Matched>> {
    if matches!(decoded, AnyEvent::Run(_) | AnyEvent::Subscription(_)) || !is_publishable(&event.event_type) {
        return Some(None);
    }
    loop {
        match matched_message(event, &shared.directory, &shared.commands).await {
            Ok(matched) => {
                backoff.reset();
                return Some(matched);
            }
            Err(error) => {
                tracing::warn!(%error, "webhook dispatcher: looking up a message's project failed");
                if !pause(backoff.next_delay(), shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// A message and the subscriptions it goes to.
pub(super) type Matched = (Message, Vec<WebhookSubscriptionCreated>);

/// What the scheduler must know of an event the directory has taken in: run and subscription
/// events, and the messages some subscription matches (`matched`, from [`matched_for`]). Those
/// are also kept in memory for the attempts that will deliver them.
pub(super) fn seen(shared: &Shared, event: EventEnvelope, decoded: AnyEvent, matched: Option<Matched>) -> Option<Seen> {
    if matches!(decoded, AnyEvent::Run(_) | AnyEvent::Subscription(_)) {
        return Some(Seen::Event(event, decoded));
    }
    let (message, matched) = matched?;
    if matched.is_empty() {
        return None;
    }
    let position = event.global_position;
    shared.recent_messages.insert(event.event_id, event);
    let runs: Vec<(LaneKey, String)> = matched
        .iter()
        .filter(|subscription| subscription.delivery.strict_ordering)
        .map(|subscription| {
            let run_id =
                crate::fanout::webhook_run_id(&message.tenant_id, &subscription.subscription_id, &message.message_id);
            ((message.tenant_id.clone(), subscription.subscription_id.clone()), run_id)
        })
        .collect();
    (!runs.is_empty()).then_some(Seen::Message { position, runs })
}

/// The events of a redelivered run's stream up to its redelivery (a webhook run only).
pub(super) async fn redelivered_history(
    store: &dyn EventStore,
    redelivery: &EventEnvelope,
) -> Option<Vec<(EventEnvelope, RunEvent)>> {
    let stream = store.read_stream(&redelivery.stream_id).await.ok()?;
    let history: Vec<(EventEnvelope, RunEvent)> = stream
        .into_iter()
        .filter(|e| e.stream_version <= redelivery.stream_version)
        .filter_map(|e| {
            let decoded = domain::AggregateEvent::decode(&e.event_type, e.schema_version, &e.data).ok()?;
            Some((e, decoded))
        })
        .collect();
    matches!(history.first(), Some((_, RunEvent::RunRequested(r))) if r.operation == DELIVER_WEBHOOK_OPERATION)
        .then_some(history)
}
