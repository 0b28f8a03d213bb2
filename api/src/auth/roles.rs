//! Roles: which roles may call which operation, when the operator writes a policy.
//!
//! A token's scopes say what the OAuth2 client was granted; its roles say who the caller is in
//! the organisation (Entra ID's `roles`, Keycloak's `realm_access.roles`, an Auth0 namespaced
//! claim). With a policy, a request needs both: the operation's scope and one of the roles the
//! policy allows for it. Without one, scopes alone decide, as they always have.

use std::collections::BTreeMap;

use super::*;

/// Where a token's roles are, and which roles may call which operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRules {
    /// The claim that holds the roles: a top-level claim name (`roles`, or an Auth0-style
    /// `https://example.com/roles`), or a JSON Pointer into the claims (`/realm_access/roles`).
    pub claim: String,
    pub policy: RolePolicy,
}

/// The roles allowed per operation (by OpenAPI `operationId`). `*` names the roles allowed
/// for every operation the policy does not list; an operation neither listed nor covered by
/// `*` is allowed to no role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePolicy {
    by_operation: BTreeMap<String, BTreeSet<String>>,
    otherwise: BTreeSet<String>,
}

impl RolePolicy {
    /// The entry that covers the operations the policy does not name.
    pub const EVERY_OTHER_OPERATION: &'static str = "*";

    /// Reads `OPERATION=ROLE[,ROLE...]` entries separated by `;` (the form of `--roles-policy`
    /// and of the config file's `[roles.policy]` table). Operations must be among `known`.
    pub fn parse(text: &str, known: &[&str]) -> Result<Self, String> {
        let mut policy = Self::default();
        let mut seen = BTreeSet::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((operation, roles)) = entry.split_once('=') else {
                return Err(format!("`{entry}` is not OPERATION=ROLE[,ROLE...]"));
            };
            let operation = operation.trim();
            if operation != Self::EVERY_OTHER_OPERATION && !known.contains(&operation) {
                return Err(format!(
                    "unknown operation `{operation}`; the operations are {} (or * for the rest)",
                    known.join(", ")
                ));
            }
            if !seen.insert(operation.to_owned()) {
                return Err(format!("operation `{operation}` is named twice"));
            }
            let roles: BTreeSet<String> =
                roles.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect();
            // A claim's roles are split at whitespace, so a name with a space could never match.
            if let Some(bad) = roles.iter().find(|r| r.contains(|c: char| c.is_whitespace() || c == '=')) {
                return Err(format!("role {bad:?} of `{operation}` may not contain whitespace or `=`"));
            }
            if roles.is_empty() {
                return Err(format!("operation `{operation}` names no role"));
            }
            if operation == Self::EVERY_OTHER_OPERATION {
                policy.otherwise = roles;
            } else {
                policy.by_operation.insert(operation.to_owned(), roles);
            }
        }
        if seen.is_empty() {
            return Err("the policy names no operation".into());
        }
        Ok(policy)
    }

    /// Whether the policy names `operation` itself (not through `*`).
    pub fn names(&self, operation: &str) -> bool {
        self.by_operation.contains_key(operation)
    }

    /// The roles that may call `operation`.
    pub fn allowed(&self, operation: &str) -> &BTreeSet<String> {
        self.by_operation.get(operation).unwrap_or(&self.otherwise)
    }

    /// Whether one of `roles` may call `operation`.
    pub fn allows(&self, operation: &str, roles: &BTreeSet<String>) -> bool {
        !self.allowed(operation).is_disjoint(roles)
    }
}

/// The roles `claim` holds in `claims`: an array of strings, or one space-separated string.
/// A missing claim is no role; a claim of another shape is a malformed token.
pub(super) fn roles_in(claims: &serde_json::Value, claim: &str) -> Result<BTreeSet<String>, TokenRejection> {
    let value = if claim.starts_with('/') { claims.pointer(claim) } else { claims.get(claim) };
    match value {
        None | Some(serde_json::Value::Null) => Ok(BTreeSet::new()),
        Some(serde_json::Value::String(roles)) => Ok(roles.split_whitespace().map(str::to_owned).collect()),
        Some(serde_json::Value::Array(roles)) => roles
            .iter()
            .map(|role| role.as_str().map(str::to_owned).ok_or(TokenRejection::MalformedClaim("roles")))
            .collect(),
        Some(_) => Err(TokenRejection::MalformedClaim("roles")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["establishConnection", "getConnection", "getRun"];

    fn roles(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_policy_allows_the_roles_it_names_and_star_covers_the_rest() {
        let policy =
            RolePolicy::parse("establishConnection = admin, connector ; * = admin;getRun=auditor", KNOWN).unwrap();
        assert!(policy.allows("establishConnection", &roles(&["connector"])));
        assert!(!policy.allows("establishConnection", &roles(&["auditor"])));
        assert!(policy.allows("getConnection", &roles(&["admin"])), "* covers an operation not named");
        assert!(!policy.allows("getConnection", &roles(&["connector"])));
        assert!(policy.allows("getRun", &roles(&["auditor", "x"])));
        assert!(!policy.allows("getRun", &roles(&["admin"])), "a named operation is not widened by *");
        assert!(!policy.allows("getRun", &roles(&[])));

        let strict = RolePolicy::parse("getRun=auditor", KNOWN).unwrap();
        assert!(!strict.allows("getConnection", &roles(&["auditor", "admin"])), "without *, unnamed is nobody's");
    }

    #[test]
    fn a_policy_that_cannot_mean_what_was_meant_is_refused() {
        for (text, reason) in [
            ("", "names no operation"),
            ("getRuns=auditor", "unknown operation `getRuns`"),
            ("getRun", "not OPERATION=ROLE"),
            ("getRun=", "names no role"),
            ("getRun=a;getRun=b", "named twice"),
            ("getRun=auditor admin", "may not contain whitespace"),
            ("getRun=a=b", "may not contain whitespace or `=`"),
        ] {
            let error = RolePolicy::parse(text, KNOWN).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn roles_are_read_from_a_claim_or_a_pointer_in_the_shapes_identity_providers_send() {
        let claims = serde_json::json!({
            "roles": ["admin", "auditor"],
            "scp_roles": "a b",
            "realm_access": { "roles": ["keycloak-admin"] },
            "https://example.com/roles": ["auth0-admin"],
            "bad": 7,
        });
        assert_eq!(roles_in(&claims, "roles").unwrap(), roles(&["admin", "auditor"]));
        assert_eq!(roles_in(&claims, "scp_roles").unwrap(), roles(&["a", "b"]));
        assert_eq!(roles_in(&claims, "/realm_access/roles").unwrap(), roles(&["keycloak-admin"]));
        assert_eq!(roles_in(&claims, "https://example.com/roles").unwrap(), roles(&["auth0-admin"]));
        assert_eq!(roles_in(&claims, "absent").unwrap(), roles(&[]));
        assert_eq!(roles_in(&claims, "bad"), Err(TokenRejection::MalformedClaim("roles")));
    }
}
