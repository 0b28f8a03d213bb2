//! The fan-out: one `DeliverWebhook` run per (message, matching subscription).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::{CommandContext, CommandError, Commands};
use domain::delivery::{NORMALIZED_EVENT_TYPES, NormalizedIntegrationEvent};
use domain::outbound::{DELIVER_WEBHOOK_OPERATION, OutboundMessageEvent};
use domain::subscription::WebhookSubscriptionCreated;
use domain::{AggregateEvent, EventEnvelope};
use serde::Deserialize;
use serde_json::{Value, json};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::{Directory, webhook_run_id};
use crate::EventHandler;

/// A message to deliver, as the event that carries it tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Also the `webhook-id` every delivery of it carries.
    pub message_id: String,
    pub tenant_id: String,
    pub project_id: Option<String>,
    pub event_type: String,
    pub time: DateTime<Utc>,
    pub data: Value,
}

/// Whether events of this type are fanned out: platform events and the gateway's normalized
/// events. The engine's own lifecycle events (runs, subscriptions...) are not, so a delivery
/// never triggers deliveries.
pub fn is_publishable(event_type: &str) -> bool {
    OutboundMessageEvent::TYPES.contains(&event_type) || NORMALIZED_EVENT_TYPES.contains(&event_type)
}

/// The message an event carries; `None` for other events and unreadable ones. A normalized
/// event does not carry its project (its connection's): [`matched_message`] looks it up, and the
/// message here has none.
pub fn message_of(event: &EventEnvelope) -> Option<Message> {
    read_message(event).map(|(message, _)| message)
}

/// The message an event carries and, for a normalized event, its connection.
fn read_message(event: &EventEnvelope) -> Option<(Message, Option<String>)> {
    if OutboundMessageEvent::TYPES.contains(&event.event_type.as_str()) {
        let OutboundMessageEvent::PlatformEventPublished(p) =
            OutboundMessageEvent::decode(&event.event_type, event.schema_version, &event.data).ok()?;
        let message = Message {
            message_id: p.message_id,
            tenant_id: event.tenant_id.clone(),
            project_id: p.project_id,
            event_type: p.event_type,
            time: p.published_at,
            data: p.data,
        };
        return Some((message, None));
    }
    if !NORMALIZED_EVENT_TYPES.contains(&event.event_type.as_str()) {
        return None;
    }
    let normalized = NormalizedIntegrationEvent::deserialize(&*event.data).ok()?;
    let message = Message {
        message_id: format!("{}-{}", domain::outbound::MESSAGE, event.event_id.simple()),
        tenant_id: event.tenant_id.clone(),
        project_id: None,
        event_type: event.event_type.clone(),
        time: event.occurred_at,
        data: (*event.data).clone(),
    };
    Some((message, Some(normalized.connection_id)))
}

/// The message an event carries and the subscriptions it goes to: same tenant, matching type
/// and project, active at the event's position (the directory must have taken in everything up
/// to it). The same answer each time, so the fan-out and the dispatcher agree on it. A normalized
/// event's project is its connection's ([`Directory::connection_project`]), looked up only when
/// some subscription of its type exists, so events nobody subscribed to cost nothing more. `None` for other events and
/// unreadable ones.
pub async fn matched_message(
    event: &EventEnvelope,
    directory: &Directory,
    commands: &Commands,
) -> Result<Option<(Message, Vec<WebhookSubscriptionCreated>)>, CommandError> {
    let Some((mut message, connection_id)) = read_message(event) else { return Ok(None) };
    let candidates = directory.matching_any_project(event.global_position, &message.tenant_id, &message.event_type);
    if candidates.is_empty() {
        return Ok(Some((message, candidates)));
    }
    if let Some(connection_id) = connection_id {
        message.project_id = directory.connection_project(commands, &message.tenant_id, &connection_id).await?;
    }
    let project = message.project_id.as_deref();
    let subscriptions =
        candidates.into_iter().filter(|s| s.project_id.as_deref().is_none_or(|p| Some(p) == project)).collect();
    Ok(Some((message, subscriptions)))
}

/// The input of a `DeliverWebhook` run: which subscription, which message, and where the
/// message's event is (its data is read from there, not copied into every run; its position
/// is the run's place in a lane's publication order).
pub fn run_input(subscription_id: &str, message: &Message, source: &EventEnvelope) -> Value {
    json!({
        "subscriptionId": subscription_id,
        "messageId": message.message_id,
        "eventType": message.event_type,
        "projectId": message.project_id,
        "source": {"streamId": source.stream_id, "eventId": source.event_id, "position": source.global_position},
    })
}

#[derive(Debug, Error)]
pub enum FanOutError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("shutting down")]
    ShuttingDown,
}

/// The fan-out handler; an [`EventHandler`] for [`crate::run_consumer`].
pub struct FanOut {
    commands: Commands,
    directory: Arc<Directory>,
    shutdown: CancellationToken,
}

impl FanOut {
    /// `directory` must be followed by a [`super::Dispatcher`] of the same store.
    pub fn new(commands: Commands, directory: Arc<Directory>, shutdown: CancellationToken) -> Self {
        Self { commands, directory, shutdown }
    }
}

#[async_trait]
impl EventHandler for FanOut {
    type Error = FanOutError;

    async fn handle(&self, event: &EventEnvelope) -> Result<(), FanOutError> {
        if !is_publishable(&event.event_type) {
            return Ok(());
        }
        // The subscriptions as of this event: those created before it, not deactivated before.
        if !self.directory.wait_for(event.global_position, &self.shutdown).await {
            return Err(FanOutError::ShuttingDown);
        }
        let Some((message, subscriptions)) = matched_message(event, &self.directory, &self.commands).await? else {
            tracing::error!(event_id = %event.event_id, event_type = %event.event_type, "skipping an unreadable message event");
            return Ok(());
        };
        if subscriptions.is_empty() {
            return Ok(());
        }
        let ctx = CommandContext::caused_by(event, super::FANOUT_CONSUMER);
        let requests = subscriptions.iter().map(|subscription| {
            let run_id = webhook_run_id(&message.tenant_id, &subscription.subscription_id, &message.message_id);
            let input = run_input(&subscription.subscription_id, &message, event);
            let ctx = &ctx;
            async move {
                self.commands
                    .request_run(ctx, &run_id, &subscription.subscription_id, DELIVER_WEBHOOK_OPERATION, input)
                    .await
                    .map(|_| ())
            }
        });
        futures::future::try_join_all(requests).await?;
        tracing::debug!(message_id = %message.message_id, subscriptions = subscriptions.len(), "message fanned out");
        Ok(())
    }
}
