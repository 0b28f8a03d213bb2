//! The subscriptions as of a position in the store, shared by the fan-out and the dispatcher.
//! The dispatcher's follower feeds it in the store's order. The project of a normalized event's
//! connection is kept in a bounded cache (filled as connections are established, else read
//! from the store when a subscription could want it), so the directory does not grow with the
//! connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use commands::{CommandError, Commands};
use domain::connection::ConnectionEvent;
use domain::ids::stream_id;
use domain::subscription::{SubscriptionEvent, WebhookSubscriptionCreated, event_type_matches};
use domain::{AnyEvent, EventEnvelope};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One subscription with the positions that bound its active life.
#[derive(Debug, Clone)]
struct Entry {
    created: WebhookSubscriptionCreated,
    created_position: u64,
    /// Where it was deactivated (or, for one created inactive, where it was created).
    deactivated_position: Option<u64>,
}

impl Entry {
    /// Whether a message at `position` is for it: created before, not deactivated before.
    fn active_at(&self, position: u64) -> bool {
        self.created_position < position && self.deactivated_position.is_none_or(|d| d > position)
    }
}

#[derive(Default)]
struct State {
    /// By tenant, then subscription id: a message is matched against its tenant's only.
    subscriptions: HashMap<String, HashMap<String, Entry>>,
}

/// Connections' projects kept at most: the connections whose events are being fanned out.
const PROJECTS_CACHED: usize = 4096;

/// The subscription directory. Cheap to share (`Arc`); the lock is never held across an await.
pub struct Directory {
    state: Mutex<State>,
    position: watch::Sender<u64>,
    /// The project of a connection, by tenant and connection id (`None`: no such connection).
    projects: quick_cache::sync::Cache<(String, String), Option<String>>,
}

impl Directory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            position: watch::channel(0).0,
            projects: quick_cache::sync::Cache::new(PROJECTS_CACHED),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in one event of the store's order (subscriptions; others are ignored).
    pub(crate) fn apply(&self, event: &EventEnvelope, decoded: &AnyEvent) {
        let mut state = self.state();
        match decoded {
            AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionCreated(created)) => {
                let entry = Entry {
                    created: created.clone(),
                    created_position: event.global_position,
                    deactivated_position: (!created.active).then_some(event.global_position),
                };
                state
                    .subscriptions
                    .entry(event.tenant_id.clone())
                    .or_default()
                    .insert(created.subscription_id.clone(), entry);
            }
            AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionDeactivated(d)) => {
                if let Some(entry) =
                    state.subscriptions.get_mut(&event.tenant_id).and_then(|t| t.get_mut(&d.subscription_id))
                {
                    entry.created.active = false;
                    entry.deactivated_position.get_or_insert(event.global_position);
                }
            }
            AnyEvent::Connection(ConnectionEvent::ConnectionEstablished(c)) => {
                let key = (event.tenant_id.clone(), c.connection_id.clone());
                self.projects.insert(key, Some(c.project_id.clone()));
            }
            _ => {}
        }
    }

    /// Everything up to `position` has been applied.
    pub(crate) fn advance(&self, position: u64) {
        self.position.send_if_modified(|p| {
            let moved = position > *p;
            *p = (*p).max(position);
            moved
        });
    }

    /// The position the directory reflects.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the directory reflects `position`; false when shutdown came first.
    pub async fn wait_for(&self, position: u64, shutdown: &CancellationToken) -> bool {
        let mut progress = self.position.subscribe();
        tokio::select! {
            () = shutdown.cancelled() => false,
            reached = progress.wait_for(|p| *p >= position) => reached.is_ok(),
        }
    }

    /// A subscription as it is now, and whether it is active.
    pub fn subscription(&self, tenant_id: &str, subscription_id: &str) -> Option<WebhookSubscriptionCreated> {
        self.state().subscriptions.get(tenant_id).and_then(|t| t.get(subscription_id)).map(|e| e.created.clone())
    }

    /// The subscriptions a message at `position` of `tenant_id` and `event_type` could go to,
    /// whatever its project (each matched with the project it asks for, if any): active at that
    /// position, so handling a message again gives the same subscriptions.
    pub fn matching_any_project(
        &self,
        position: u64,
        tenant_id: &str,
        event_type: &str,
    ) -> Vec<WebhookSubscriptionCreated> {
        let mut found: Vec<_> = self
            .state()
            .subscriptions
            .get(tenant_id)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|e| e.active_at(position) && event_type_matches(&e.created.event_type, event_type))
            .map(|e| e.created.clone())
            .collect();
        found.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
        found
    }

    /// The project of a connection: its `ConnectionEstablished`, the first event of its stream
    /// (a connection's project never changes), taken in while following the store or read from
    /// it once, and then cached.
    pub async fn connection_project(
        &self,
        commands: &Commands,
        tenant_id: &str,
        connection_id: &str,
    ) -> Result<Option<String>, CommandError> {
        let key = (tenant_id.to_owned(), connection_id.to_owned());
        if let Some(project) = self.projects.get(&key) {
            return Ok(project);
        }
        let project = match commands.load_first::<ConnectionEvent>(&stream_id(tenant_id, connection_id)).await {
            Ok(Some(ConnectionEvent::ConnectionEstablished(c))) => Some(c.project_id),
            Ok(_) | Err(CommandError::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        self.projects.insert(key, project.clone());
        Ok(project)
    }
}
