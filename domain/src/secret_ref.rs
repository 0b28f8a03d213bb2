use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A reference to a vault secret: `kv://VAULT/NAME`, optionally pinned with `?version=N`.
///
/// Events and read models hold these references, never the secret values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretRef {
    pub vault: String,
    pub name: String,
    pub version: Option<u32>,
}

impl SecretRef {
    /// Parses `kv://VAULT/NAME[?version=N]`; vault and name are slugs (`[a-z0-9-]`, also `_`/`.`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("kv://").ok_or("must start with kv://")?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (vault, name) = path.split_once('/').ok_or("must be kv://VAULT/NAME")?;
        if !is_name(vault) || !is_name(name) {
            return Err("vault and name must be non-empty and use only a-z, 0-9, '-', '_', '.'".into());
        }
        let version = match query {
            None => None,
            Some(q) => {
                let n = q.strip_prefix("version=").ok_or("the only query parameter is version=N")?;
                match n.parse::<u32>() {
                    Ok(v) if v > 0 => Some(v),
                    _ => return Err("version must be a positive integer".into()),
                }
            }
        };
        Ok(Self { vault: vault.into(), name: name.into(), version })
    }

    /// The same secret pinned to `version`.
    pub fn with_version(&self, version: u32) -> Self {
        Self { version: Some(version), ..self.clone() }
    }

    /// The same secret without a pinned version (its current version).
    pub fn unversioned(&self) -> Self {
        Self { version: None, ..self.clone() }
    }
}

/// A vault's or a secret's name: 1 to 128 of `a-z`, `0-9`, `-`, `_`, `.`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kv://{}/{}", self.vault, self.name)?;
        if let Some(v) = self.version {
            write!(f, "?version={v}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for SecretRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^kv://[a-z0-9._-]+/[a-z0-9._-]+([?]version=[1-9][0-9]*)?$",
            "description": "A vault secret reference: kv://VAULT/NAME, optionally ?version=N"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_spec_forms() {
        let r = SecretRef::parse("kv://factory-integration/github-booking").unwrap();
        assert_eq!((r.vault.as_str(), r.name.as_str(), r.version), ("factory-integration", "github-booking", None));
        let v2 = r.with_version(2);
        assert_eq!(v2.to_string(), "kv://factory-integration/github-booking?version=2");
        assert_eq!(SecretRef::parse(&v2.to_string()).unwrap(), v2);
    }

    #[test]
    fn rejects_malformed_refs() {
        for bad in ["", "kv://", "kv://a", "kv:///b", "http://a/b", "kv://a/b?version=0", "kv://a/b?v=1", "kv://A/b"] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }
}
