use domain::DomainError;
use domain::delivery::{AcceptDelivery, DeliveryAccepted, DeliveryEvent, InboundDelivery};
use domain::ids::stream_id;
use ring::digest;

use crate::{CommandContext, CommandError, Commands};

pub struct DeliveryAcceptedOutcome {
    /// The acceptance: this request's, or the first one's when `duplicate`.
    pub accepted: DeliveryAccepted,
    /// The vendor's delivery id was already accepted on this connection: nothing was appended.
    pub duplicate: bool,
    pub last_position: Option<u64>,
}

/// The delivery id of a vendor delivery: derived from (tenant, connection, vendor delivery id),
/// so every repeat of the delivery lands on the same stream.
///
/// Why a deterministic stream rather than a uniqueness table: the first acceptance is one append
/// of `DeliveryAccepted` and its normalized event with `ExpectedVersion::NoStream`, atomic in the
/// store. Two identical deliveries racing both decide on an empty stream; the store lets exactly
/// one append through and the other gets a version conflict, decides again on the stored
/// acceptance and answers it as a repeat. No second table has to agree with the event store, and
/// nothing can be half-done between a claim and the events.
pub fn delivery_id_for(tenant_id: &str, connection_id: &str, provider_delivery_id: &str) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [tenant_id, connection_id, provider_delivery_id] {
        // Length-prefixed, so no two triples hash the same input.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part.as_bytes());
    }
    let hash = context.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    domain::ids::new_id(domain::ids::DELIVERY, uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

impl Commands {
    /// Records an inbound delivery whose signature the gateway has verified over its raw bytes,
    /// once per vendor delivery id and connection. A repeat appends nothing and returns the
    /// first acceptance.
    pub async fn accept_delivery(
        &self,
        ctx: &CommandContext,
        mut command: AcceptDelivery,
    ) -> Result<DeliveryAcceptedOutcome, CommandError> {
        command.tenant_id = ctx.tenant_id.clone();
        command.received_at = self.now();
        command.delivery_id = delivery_id_for(&ctx.tenant_id, &command.connection_id, &command.provider_delivery_id);
        let stream = stream_id(&ctx.tenant_id, &command.delivery_id);
        let (events, duplicate, last_position) =
            match self.execute_on_new_stream::<InboundDelivery>(ctx, &stream, &command).await {
                Ok(executed) => (executed.new_events, false, executed.last_position),
                Err(CommandError::Rejected(DomainError::AlreadyExists { .. })) => {
                    let loaded = self.load::<DeliveryEvent>(&stream).await?;
                    (loaded.events, true, loaded.last_position)
                }
                Err(e) => return Err(e),
            };
        match events.iter().find_map(DeliveryEvent::as_accepted) {
            Some(accepted) => Ok(DeliveryAcceptedOutcome { accepted: accepted.clone(), duplicate, last_position }),
            None => Err(DomainError::NotFound { kind: "delivery", id: command.delivery_id }.into()),
        }
    }
}
