//! The subscriptions (and the connections' projects) as of a position in the store, shared by
//! the fan-out and the dispatcher. The dispatcher's follower feeds it in the store's order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use domain::connection::ConnectionEvent;
use domain::subscription::{SubscriptionEvent, WebhookSubscriptionCreated, subscription_matches};
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
    /// The project of each connection, by tenant and connection id: the project of its
    /// normalized events. One entry for every connection there is, so kept small: the
    /// connection id boxed, the project id shared with every connection of that project.
    connection_projects: HashMap<String, HashMap<Box<str>, Arc<str>>>,
    /// Every project id named by a connection, held once.
    projects: HashSet<Arc<str>>,
}

/// The subscription directory. Cheap to share (`Arc`); the lock is never held across an await.
pub struct Directory {
    state: Mutex<State>,
    position: watch::Sender<u64>,
}

impl Directory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::default()), position: watch::channel(0).0 })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in one event of the store's order (subscriptions and connections; others are
    /// ignored).
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
                let project = match state.projects.get(c.project_id.as_str()) {
                    Some(project) => project.clone(),
                    None => {
                        let project: Arc<str> = c.project_id.as_str().into();
                        state.projects.insert(project.clone());
                        project
                    }
                };
                state
                    .connection_projects
                    .entry(event.tenant_id.clone())
                    .or_default()
                    .insert(c.connection_id.as_str().into(), project);
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

    /// The subscriptions a message at `position` goes to: same tenant, matching type and
    /// project, active at that position. The answer depends only on the events up to
    /// `position`, so handling a message again gives the same subscriptions.
    pub fn matching(
        &self,
        position: u64,
        tenant_id: &str,
        project_id: Option<&str>,
        event_type: &str,
    ) -> Vec<WebhookSubscriptionCreated> {
        let mut found: Vec<_> = self
            .state()
            .subscriptions
            .get(tenant_id)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|e| e.active_at(position) && subscription_matches(&e.created, tenant_id, project_id, event_type))
            .map(|e| e.created.clone())
            .collect();
        found.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
        found
    }

    /// A subscription as it is now, and whether it is active.
    pub fn subscription(&self, tenant_id: &str, subscription_id: &str) -> Option<WebhookSubscriptionCreated> {
        self.state().subscriptions.get(tenant_id).and_then(|t| t.get(subscription_id)).map(|e| e.created.clone())
    }

    /// The project of a connection.
    pub fn connection_project(&self, tenant_id: &str, connection_id: &str) -> Option<String> {
        self.state().connection_projects.get(tenant_id)?.get(connection_id).map(|project| project.to_string())
    }
}
