use crate::documents::Documents;
use domain::connection::ConnectionEvent;
use domain::run::RunEvent;
use domain::{AnyEvent, EventEnvelope};

use super::update_doc;
use crate::ProjectionError;
use crate::read_models::CONNECTIONS;
use crate::views::ConnectionView;

pub const NAME: &str = CONNECTIONS;

pub fn apply(docs: &mut Documents<'_>, event: &EventEnvelope, decoded: &AnyEvent) -> Result<(), ProjectionError> {
    let tenant_id = &event.tenant_id;
    match decoded {
        AnyEvent::Connection(ConnectionEvent::ConnectionEstablished(e)) => {
            let view = ConnectionView {
                connection_id: e.connection_id.clone(),
                tenant_id: tenant_id.clone(),
                project_id: e.project_id.clone(),
                provider_id: e.provider_id.clone(),
                display_name: e.display_name.clone(),
                auth_mode: e.auth_mode,
                status: "Active".into(),
                health: domain::connection::Health::Unknown,
                last_checked_at: None,
                credential_ref: e.credential_ref.clone(),
                last_run_id: None,
                configuration: e.configuration.clone(),
                established_at: e.established_at,
            };
            docs.put(NAME, tenant_id, &e.connection_id, view);
            Ok(())
        }
        AnyEvent::Connection(ConnectionEvent::ConnectionHealthChecked(e)) => {
            update_doc(docs, NAME, event, &e.connection_id, |view: &mut ConnectionView| {
                view.health = e.health;
                view.last_checked_at = Some(e.checked_at);
            })
        }
        AnyEvent::Run(RunEvent::RunRequested(run)) => {
            // A run may name a connection that does not exist (the write side does not check
            // it, and a credential without connections verifies against none), so a missing
            // document is not an inconsistency here. Looked up in the run's tenant only.
            docs.update(NAME, tenant_id, &run.connection_id, |view: &mut ConnectionView| {
                view.last_run_id = Some(run.run_id.clone());
            })?;
            Ok(())
        }
        AnyEvent::Run(
            RunEvent::RunStarted(_)
            | RunEvent::RunAttemptFailed(_)
            | RunEvent::RunCompleted(_)
            | RunEvent::RunFailed(_)
            | RunEvent::RunRedeliveryRequested(_),
        )
        | AnyEvent::Provider(_)
        | AnyEvent::Subscription(_)
        | AnyEvent::Delivery(_)
        | AnyEvent::Credential(_)
        | AnyEvent::Outbound(_) => Ok(()),
    }
}
