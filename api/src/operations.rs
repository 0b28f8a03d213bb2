//! The API's operations, by OpenAPI `operationId`, each with the scope a token needs for it.
//! A handler names its operation in its signature (`Authorized<op::GetRun>`); the OpenAPI
//! document and a role policy name the same ids.

/// An operation of the API, as a type, so what a handler requires reads in its signature: its
/// OpenAPI `operationId` (the name a role policy uses) and the scope a token needs for it.
pub trait Operation {
    const ID: &'static str;
    const SCOPE: &'static str;
}

macro_rules! operations {
    ($($ty:ident = $id:literal needs $scope:literal;)*) => {
        $(
            #[doc = concat!("`", $id, "`, which needs the `", $scope, "` scope.")]
            pub struct $ty;
            impl Operation for $ty {
                const ID: &'static str = $id;
                const SCOPE: &'static str = $scope;
            }
        )*
        /// Every operation's id.
        pub const OPERATION_IDS: &[&str] = &[$($id),*];
    };
}

operations! {
    EstablishConnection = "establishConnection" needs "integration.connections.write";
    GetConnection = "getConnection" needs "integration.connections.read";
    RegisterProvider = "registerProvider" needs "integration.providers.write";
    GetProvider = "getProvider" needs "integration.providers.read";
    CreateSubscription = "createSubscription" needs "webhooks.subscriptions.write";
    GetSubscription = "getSubscription" needs "webhooks.subscriptions.read";
    IngestDelivery = "ingestDelivery" needs "webhooks.deliveries.ingest";
    GetRun = "getRun" needs "integration.runs.read";
    RotateCredential = "rotateCredential" needs "integration.credentials.rotate";
    AuditTenantEvents = "auditTenantEvents" needs "integration.audit.read";
    AuditStreamEvents = "auditStreamEvents" needs "integration.audit.read";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_every_operation_and_no_other() {
        let document = crate::openapi::document();
        let mut documented: Vec<&str> = document["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|path| path.as_object().expect("a path item").values())
            .filter_map(|operation| operation["operationId"].as_str())
            .collect();
        documented.sort_unstable();
        let mut known = OPERATION_IDS.to_vec();
        known.sort_unstable();
        assert_eq!(documented, known);
    }
}
