use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::connection::{ConnectionEstablished, ConnectionHealthChecked};
use crate::credential::{
    CredentialLinked, CredentialRegistered, CredentialRotated, CredentialRotationFailed, CredentialRotationStarted,
    CredentialSubscriptionLinked, CredentialVersionRetired,
};
use crate::delivery::DeliveryAccepted;
use crate::outbound::PlatformEventPublished;
use crate::provider::ProviderRegistered;
use crate::run::{RunAttemptFailed, RunCompleted, RunFailed, RunRedeliveryRequested, RunRequested, RunStarted};
use crate::subscription::{WebhookSubscriptionCreated, WebhookSubscriptionDeactivated};
use crate::upcast::schema_version_of;

/// The JSON Schema (2020-12) of one event type's data at one schema version.
pub struct EventSchema {
    pub event_type: &'static str,
    pub version: u32,
    pub schema: Schema,
}

fn schema_of<T: JsonSchema>(event_type: &'static str) -> EventSchema {
    let schema = SchemaGenerator::new(SchemaSettings::draft2020_12()).into_root_schema_for::<T>();
    EventSchema { event_type, version: schema_version_of(event_type), schema }
}

/// The schema of every event type at its current version, and of the past versions still
/// readable ([`past_event_schemas`]); the event structs are named after their types, so the list
/// is checked against [`crate::any_event::all_event_types`].
pub fn event_schemas() -> Vec<EventSchema> {
    macro_rules! schemas {
        ($($t:ident),* $(,)?) => { vec![$(schema_of::<$t>(stringify!($t))),*] };
    }
    let mut schemas = schemas![
        ConnectionEstablished,
        ConnectionHealthChecked,
        ProviderRegistered,
        WebhookSubscriptionCreated,
        DeliveryAccepted,
        RunRequested,
        RunStarted,
        RunAttemptFailed,
        RunCompleted,
        RunFailed,
        CredentialRegistered,
        CredentialLinked,
        CredentialSubscriptionLinked,
        CredentialRotationStarted,
        CredentialRotated,
        CredentialRotationFailed,
        CredentialVersionRetired,
        WebhookSubscriptionDeactivated,
        RunRedeliveryRequested,
        PlatformEventPublished,
    ];
    // The normalized integration events share one data shape; each type gets its own file.
    schemas.extend(crate::delivery::NORMALIZED_EVENT_TYPES.iter().map(|t| {
        let mut s = schema_of::<crate::delivery::NormalizedIntegrationEvent>(t);
        s.schema.insert("title".into(), (*t).into());
        s
    }));
    schemas.extend(past_event_schemas());
    schemas
}

/// The schemas of event versions older than the current one: stored events may still be at
/// these versions, and they are upcast on read ([`crate::upcast::upcast`]).
pub fn past_event_schemas() -> Vec<EventSchema> {
    let at = |mut s: EventSchema, version: u32| {
        s.version = version;
        s
    };
    vec![at(schema_of::<crate::provider::ProviderRegisteredV1>("ProviderRegistered"), 1)]
}

/// The schema of the stored and published envelope.
pub fn envelope_schema() -> Schema {
    SchemaGenerator::new(SchemaSettings::draft2020_12()).into_root_schema_for::<crate::EventEnvelope>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_schema() {
        let mut listed: Vec<_> = event_schemas().iter().map(|s| s.event_type).collect();
        let mut defined: Vec<_> = crate::any_event::all_event_types().collect();
        listed.sort();
        listed.dedup();
        defined.sort();
        assert_eq!(listed, defined);
    }

    #[test]
    fn past_versions_are_older_than_the_current_one() {
        for past in past_event_schemas() {
            assert!(past.version < schema_version_of(past.event_type), "{} v{}", past.event_type, past.version);
        }
    }
}
