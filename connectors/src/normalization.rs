//! Normalization as data: a rule table maps provider + event + predicates over the signed body
//! to a normalized integration event type, and names the fields a subscriber gets. The table is
//! TOML (`config/normalization.toml` is the default, compiled in; `serve --normalization-rules`
//! loads another at start) and is validated when loaded: unknown types, rules without a body
//! predicate and malformed paths are refused.

use std::collections::BTreeMap;

use domain::delivery::{FALLBACK_EVENT_TYPE, NORMALIZED_EVENT_TYPES};
use serde::Deserialize;
use serde_json::Value;

use crate::inbound::Scheme;
pub use crate::inbound::Shape;

/// The rule table compiled into the binary.
pub const DEFAULT_RULES: &str = include_str!("../../config/normalization.toml");

/// A test of one value of the signed body, by dotted path (`pull_request.merged`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    pub path: String,
    /// The value must equal this (JSON equality: `true` is not `"true"`).
    #[serde(default)]
    pub equals: Option<toml::Value>,
    /// The value must equal one of these.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<toml::Value>>,
    /// The value must be present (`true`) or absent (`false`); `null` counts as absent.
    #[serde(default)]
    pub exists: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A scheme name (`github`, `stripe`, ...).
    pub provider: String,
    /// The vendor's event name.
    pub event: String,
    /// Restricts the rule to one shape; both when absent.
    #[serde(default)]
    pub shape: Option<Shape>,
    /// The normalized type; one of the domain's normalized event types.
    #[serde(rename = "type")]
    pub normalized_type: String,
    /// All must hold; at least one, so the signed body always decides.
    pub when: Vec<Predicate>,
    /// Attribute name → dotted path in the payload; missing values are left out.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    fallback: String,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

/// The loaded, validated rule table. The first rule that matches wins.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTable {
    rules: Vec<CompiledRule>,
    fallback: String,
}

/// A rule with its paths split and its predicates resolved.
#[derive(Debug, Clone, PartialEq)]
struct CompiledRule {
    rule: Rule,
    matchers: Vec<(Vec<String>, Matcher)>,
    fields: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Equals(Value),
    OneOf(Vec<Value>),
    Exists(bool),
}

/// What a delivery normalizes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub event_type: String,
    pub attributes: BTreeMap<String, Value>,
}

impl RuleTable {
    /// The compiled-in table.
    pub fn default_rules() -> Self {
        // Checked by `the_default_table_loads` and at every start.
        Self::parse(DEFAULT_RULES).expect("config/normalization.toml is valid")
    }

    /// Parses and validates a TOML rule table.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RuleFile = toml::from_str(text).map_err(|e| format!("the rule table is not valid: {e}"))?;
        if !NORMALIZED_EVENT_TYPES.contains(&file.fallback.as_str()) {
            return Err(format!("fallback {} is not a normalized event type", file.fallback));
        }
        let mut rules = Vec::new();
        for (index, rule) in file.rules.into_iter().enumerate() {
            let at = format!("rule {} ({} {})", index + 1, rule.provider, rule.event);
            if Scheme::from_name(&rule.provider).is_none() {
                return Err(format!("{at}: unknown provider {}", rule.provider));
            }
            if !NORMALIZED_EVENT_TYPES.contains(&rule.normalized_type.as_str()) {
                return Err(format!("{at}: {} is not a normalized event type", rule.normalized_type));
            }
            if rule.event.is_empty() {
                return Err(format!("{at}: the event is empty"));
            }
            if rule.when.is_empty() {
                return Err(format!("{at}: a rule needs at least one predicate over the signed body"));
            }
            let mut matchers = Vec::new();
            for predicate in &rule.when {
                let path = split_path(&predicate.path).ok_or_else(|| format!("{at}: bad path {:?}", predicate.path))?;
                let matcher = match (&predicate.equals, &predicate.one_of, predicate.exists) {
                    (Some(v), None, None) => Matcher::Equals(to_json(v)),
                    (None, Some(vs), None) if !vs.is_empty() => Matcher::OneOf(vs.iter().map(to_json).collect()),
                    (None, None, Some(e)) => Matcher::Exists(e),
                    _ => return Err(format!("{at}: a predicate has exactly one of equals, in, exists")),
                };
                matchers.push((path, matcher));
            }
            let mut fields = Vec::new();
            for (name, path) in &rule.fields {
                let path = split_path(path).ok_or_else(|| format!("{at}: field {name} has a bad path {path:?}"))?;
                fields.push((name.clone(), path));
            }
            rules.push(CompiledRule { rule, matchers, fields });
        }
        Ok(Self { rules, fallback: file.fallback })
    }

    /// The type given to deliveries no rule matches.
    pub fn fallback(&self) -> &str {
        &self.fallback
    }

    /// Every rule, in order (for documentation and tests).
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|compiled| &compiled.rule)
    }

    /// The normalized type and attributes of a verified delivery: the first rule whose provider,
    /// event and shape match and whose predicates all hold over `payload` (the signed body, or
    /// the envelope's `payload`); the fallback type, without attributes, otherwise.
    pub fn normalize(&self, provider: &str, event_name: &str, shape: Shape, payload: &Value) -> Normalized {
        for CompiledRule { rule, matchers, fields } in &self.rules {
            let applies = rule.provider == provider
                && rule.event == event_name
                && rule.shape.is_none_or(|s| s == shape)
                && matchers.iter().all(|(path, matcher)| matches(lookup(payload, path), matcher));
            if applies {
                let attributes = fields
                    .iter()
                    .filter_map(|(name, path)| {
                        lookup(payload, path).filter(|v| !v.is_null()).map(|v| (name.clone(), v.clone()))
                    })
                    .collect();
                return Normalized { event_type: rule.normalized_type.clone(), attributes };
            }
        }
        Normalized { event_type: self.fallback.clone(), attributes: BTreeMap::new() }
    }
}

impl Default for RuleTable {
    fn default() -> Self {
        Self::default_rules()
    }
}

/// The fallback type of the domain, which the default table uses.
pub const DEFAULT_FALLBACK: &str = FALLBACK_EVENT_TYPE;

fn split_path(path: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(String::from).collect();
    (!path.is_empty() && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

fn lookup<'v>(payload: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(payload, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn matches(value: Option<&Value>, matcher: &Matcher) -> bool {
    match matcher {
        Matcher::Equals(expected) => value == Some(expected),
        Matcher::OneOf(options) => value.is_some_and(|v| options.contains(v)),
        Matcher::Exists(wanted) => value.is_some_and(|v| !v.is_null()) == *wanted,
    }
}

fn to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        toml::Value::Table(table) => Value::Object(table.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> RuleTable {
        RuleTable::default_rules()
    }

    #[test]
    fn the_default_table_loads_and_falls_back_to_the_domains_fallback() {
        let t = table();
        assert_eq!(t.fallback(), DEFAULT_FALLBACK);
        assert!(t.rules().count() >= 20);
        for rule in t.rules() {
            assert!(!rule.when.is_empty());
        }
    }

    #[test]
    fn a_pull_request_is_merged_only_when_the_signed_body_says_so() {
        let t = table();
        let native = |payload: Value| t.normalize("github", "pull_request", Shape::Native, &payload).event_type;
        let envelope = |payload: Value| t.normalize("github", "pull_request", Shape::Envelope, &payload).event_type;
        assert_eq!(native(json!({"action": "closed", "pull_request": {"merged": true}})), "PullRequestMerged");
        assert_eq!(native(json!({"action": "closed", "pull_request": {"merged": false}})), "PullRequestClosed");
        // Natively, `merged` at the top is not GitHub's shape and proves nothing.
        assert_eq!(native(json!({"action": "closed", "merged": true, "pull_request": {}})), "PullRequestClosed");
        assert_eq!(native(json!({"action": "closed", "pull_request": {"merged": "true"}})), "PullRequestClosed");
        assert_eq!(envelope(json!({"action": "closed", "merged": true})), "PullRequestMerged");
        assert_eq!(envelope(json!({"action": "closed", "merged": false})), "PullRequestClosed");
        assert_eq!(envelope(json!({"action": "closed"})), "PullRequestClosed");
        assert_eq!(envelope(json!({"action": "opened"})), "PullRequestOpened");
        assert_eq!(native(json!({"action": "opened", "pull_request": {}})), "PullRequestOpened");
        // The header alone decides nothing: a push body under a pull_request header is not a PR.
        assert_eq!(native(json!({"ref": "refs/heads/main", "after": "abc"})), DEFAULT_FALLBACK);
    }

    #[test]
    fn attributes_come_from_the_rules_fields() {
        let payload = json!({
            "action": "closed",
            "number": 7,
            "pull_request": {"merged": true, "number": 7, "title": "Fix", "merge_commit_sha": "abc",
                             "html_url": "https://github.com/o/r/pull/7", "base": {"ref": "main"}, "merged_by": null},
            "repository": {"full_name": "o/r"}
        });
        let n = table().normalize("github", "pull_request", Shape::Native, &payload);
        assert_eq!(n.event_type, "PullRequestMerged");
        assert_eq!(n.attributes["repository"], "o/r");
        assert_eq!(n.attributes["number"], 7);
        assert!(!n.attributes.contains_key("mergedBy"), "null values are left out");
    }

    #[test]
    fn unmatched_events_get_the_fallback_type() {
        let n = table().normalize("stripe", "customer.updated", Shape::Native, &json!({"type": "customer.updated"}));
        assert_eq!((n.event_type.as_str(), n.attributes.len()), (DEFAULT_FALLBACK, 0));
        let n = table().normalize("nobody", "push", Shape::Native, &json!({"ref": "x"}));
        assert_eq!(n.event_type, DEFAULT_FALLBACK);
    }

    #[test]
    fn invalid_tables_are_refused_at_load() {
        let fallback = "fallback = \"ProviderEventReceived\"\n";
        let rule = |body: &str| format!("{fallback}[[rule]]\n{body}");
        for (bad, why) in [
            ("fallback = \"Nope\"".to_string(), "unknown fallback"),
            (rule("provider = \"github\"\nevent = \"push\"\ntype = \"CodePushed\"\nwhen = []"), "no predicate"),
            (
                rule(
                    "provider = \"acme\"\nevent = \"push\"\ntype = \"CodePushed\"\nwhen = [{ path = \"ref\", exists = true }]",
                ),
                "unknown provider",
            ),
            (
                rule(
                    "provider = \"github\"\nevent = \"push\"\ntype = \"Pushed\"\nwhen = [{ path = \"ref\", exists = true }]",
                ),
                "unknown type",
            ),
            (
                rule(
                    "provider = \"github\"\nevent = \"push\"\ntype = \"CodePushed\"\nwhen = [{ path = \"a..b\", exists = true }]",
                ),
                "bad path",
            ),
            (
                rule(
                    "provider = \"github\"\nevent = \"push\"\ntype = \"CodePushed\"\nwhen = [{ path = \"ref\", exists = true, equals = 1 }]",
                ),
                "two tests",
            ),
            (
                rule("provider = \"github\"\nevent = \"push\"\ntype = \"CodePushed\"\nwhen = [{ path = \"ref\" }]"),
                "no test",
            ),
            (
                rule(
                    "provider = \"github\"\nevent = \"push\"\ntype = \"CodePushed\"\nwhen = [{ path = \"ref\", exists = true }]\nunknown = 1",
                ),
                "unknown key",
            ),
        ] {
            assert!(RuleTable::parse(&bad).is_err(), "{why}: {bad}");
        }
    }
}
