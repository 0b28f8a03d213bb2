use crate::documents::Documents;
use domain::credential::CredentialEvent;
use domain::secret_ref::SecretRef;
use domain::{AnyEvent, EventEnvelope};

use super::update_doc;
use crate::ProjectionError;
use crate::read_models::CREDENTIALS;
use crate::views::CredentialView;

pub const NAME: &str = CREDENTIALS;

pub fn apply(docs: &mut Documents<'_>, event: &EventEnvelope, decoded: &AnyEvent) -> Result<(), ProjectionError> {
    match decoded {
        AnyEvent::Credential(credential_event) => apply_credential_event(docs, event, credential_event),
        AnyEvent::Connection(_)
        | AnyEvent::Provider(_)
        | AnyEvent::Subscription(_)
        | AnyEvent::Delivery(_)
        | AnyEvent::Run(_)
        | AnyEvent::Outbound(_) => Ok(()),
    }
}

fn apply_credential_event(
    docs: &mut Documents<'_>,
    event: &EventEnvelope,
    credential_event: &CredentialEvent,
) -> Result<(), ProjectionError> {
    match credential_event {
        CredentialEvent::CredentialRegistered(e) => {
            let view = registered(event, &e.credential_id, &e.secret_ref, e.current_version);
            let view = CredentialView { first_connection: Some(e.connection_id.clone()), ..view };
            docs.put(NAME, &event.tenant_id, &e.credential_id, view);
            Ok(())
        }
        CredentialEvent::CredentialLinked(e) => {
            update_doc(docs, NAME, event, &e.credential_id, |view: &mut CredentialView| {
                view.first_connection.get_or_insert_with(|| e.connection_id.clone());
            })
        }
        CredentialEvent::CredentialSubscriptionLinked(e) => {
            // The first subscription registers the credential; the view names only a connection,
            // so a later link changes nothing in it.
            if docs.exists::<CredentialView>(NAME, &event.tenant_id, &e.credential_id)? {
                return Ok(());
            }
            let view = registered(event, &e.credential_id, &e.secret_ref, e.current_version);
            docs.put(NAME, &event.tenant_id, &e.credential_id, view);
            Ok(())
        }
        CredentialEvent::CredentialRotationStarted(e) => {
            update_doc(docs, NAME, event, &e.credential_id, |view: &mut CredentialView| {
                view.status = "Rotating".into();
                view.pending_version = Some(e.new_version);
                view.pending_version_ref = Some(e.new_version_ref.clone());
                view.verification_run_id = Some(e.verification_run_id.clone());
                view.last_rotation_reason = Some(e.reason.clone());
            })
        }
        CredentialEvent::CredentialRotated(e) => {
            update_doc(docs, NAME, event, &e.credential_id, |view: &mut CredentialView| {
                view.status = "Active".into();
                view.current_version = e.version;
                view.previous_version = Some(e.previous_version);
                view.pending_version = None;
                view.pending_version_ref = None;
                view.last_rotated_at = Some(e.rotated_at);
                view.last_rotation_failure = None;
            })
        }
        CredentialEvent::CredentialRotationFailed(e) => {
            update_doc(docs, NAME, event, &e.credential_id, |view: &mut CredentialView| {
                // The current version stays in use; the failed one is dropped.
                view.status = "Active".into();
                view.pending_version = None;
                view.pending_version_ref = None;
                view.last_rotation_failure = Some(e.reason.clone());
            })
        }
        CredentialEvent::CredentialVersionRetired(e) => {
            update_doc(docs, NAME, event, &e.credential_id, |view: &mut CredentialView| {
                if view.previous_version == Some(e.version) {
                    view.previous_version = None;
                }
            })
        }
    }
}

/// A credential's view as registered: active, no rotation yet, no connection.
fn registered(
    event: &EventEnvelope,
    credential_id: &str,
    secret_ref: &SecretRef,
    current_version: u32,
) -> CredentialView {
    CredentialView {
        credential_id: credential_id.to_owned(),
        tenant_id: event.tenant_id.clone(),
        secret_ref: secret_ref.to_string(),
        status: "Active".into(),
        current_version,
        pending_version: None,
        pending_version_ref: None,
        verification_run_id: None,
        first_connection: None,
        last_rotation_reason: None,
        last_rotated_at: None,
        previous_version: None,
        last_rotation_failure: None,
    }
}
