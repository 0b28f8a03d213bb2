//! `GET /readyz`: whether this process should take reads, that is whether its read models are
//! close enough to the event store that a GET answers with current data.
//!
//! Not ready (503, problem+json) while the store does not answer, the read models are still
//! replaying after start, the projection runner stopped on an error, or a projection is more than
//! [`ReadinessLimits::max_lag_events`] events or [`ReadinessLimits::max_lag`] behind the store.
//! Ready again as soon as it has caught up. Liveness (`/healthz`) is separate and stays 200
//! while the process works: a lagging replica should leave the load balancer, not be restarted.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::problem::{PROBLEM_JSON, Problem};

/// How far behind the store the read models may be while the process still reports ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessLimits {
    /// Events appended to the store but not yet applied by a projection.
    pub max_lag_events: u64,
    /// Age of the oldest event not yet applied by a projection.
    pub max_lag: Duration,
}

impl Default for ReadinessLimits {
    fn default() -> Self {
        Self { max_lag_events: 1000, max_lag: Duration::from_secs(30) }
    }
}

/// What the readiness check saw of the store and the read models.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub store_head: u64,
    /// Each projection's checkpoint: the global position it has applied up to.
    pub checkpoints: Vec<(String, u64)>,
    /// Whether the runner is running and has reached the head the store had when it started.
    pub caught_up_since_start: bool,
    /// The error the runner stopped on, if it stopped.
    pub stopped_by: Option<String>,
    /// How long ago the oldest event not yet applied by the furthest-behind projection occurred;
    /// `None` when no projection is behind.
    pub oldest_unapplied_age: Option<Duration>,
}

/// Why the process is not ready.
#[derive(Debug, Clone, PartialEq)]
pub enum NotReady {
    Stopped { error: String },
    CatchingUp,
    Lagging { projection: String, lag_events: u64, lag: Duration, limit: LagLimit },
}

/// Which limit a lagging projection exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagLimit {
    Events,
    Age,
}

/// The readiness decision, pure: `Ok(())` when ready.
pub fn decide(seen: &Observation, limits: ReadinessLimits) -> Result<(), NotReady> {
    if let Some(error) = &seen.stopped_by {
        return Err(NotReady::Stopped { error: error.clone() });
    }
    // A lag past the limits is reported before "catching up": it says by how much, and a runner
    // retrying a failed batch is both.
    // The furthest-behind projection decides; ties go to the first by name, for a stable answer.
    let Some((projection, checkpoint)) = seen.checkpoints.iter().min_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)))
    else {
        return if seen.caught_up_since_start { Ok(()) } else { Err(NotReady::CatchingUp) };
    };
    let lag_events = seen.store_head.saturating_sub(*checkpoint);
    let lag = if lag_events == 0 { Duration::ZERO } else { seen.oldest_unapplied_age.unwrap_or_default() };
    let limit = if lag_events > limits.max_lag_events {
        LagLimit::Events
    } else if lag > limits.max_lag {
        LagLimit::Age
    } else if seen.caught_up_since_start {
        return Ok(());
    } else {
        return Err(NotReady::CatchingUp);
    };
    Err(NotReady::Lagging { projection: projection.clone(), lag_events, lag, limit })
}

impl NotReady {
    fn detail(&self, limits: ReadinessLimits) -> String {
        match self {
            // The error itself may quote event data, and /readyz needs no token: it goes to the
            // log only.
            Self::Stopped { .. } => {
                "the projection runner stopped on an error and will not resume; the error is in the log".into()
            }
            Self::CatchingUp => "the read models are still catching up with the store since start".into(),
            Self::Lagging { projection, lag_events, lag, limit } => {
                let over = match limit {
                    LagLimit::Events => format!("more than {} events", limits.max_lag_events),
                    LagLimit::Age => format!("more than {} s", limits.max_lag.as_secs_f64()),
                };
                format!(
                    "projection {projection} is {lag_events} events and {:.1} s behind the store ({over})",
                    lag.as_secs_f64()
                )
            }
        }
    }
}

/// Looks at the store and the read models and answers 200 or a 503 problem document naming what
/// is behind and by how much.
pub async fn readyz(State(app): State<Shared>) -> Response {
    let limits = app.settings.readiness;
    let head = match app.store.head_position().await {
        Ok(head) => head,
        Err(e) => return not_ready("store-unreachable", format!("the event store does not answer: {e}"), json!({})),
    };
    let mut checkpoints = match app.read_models.checkpoints().await {
        Ok(checkpoints) => checkpoints,
        Err(e) => {
            return not_ready("read-models-unreadable", format!("the read models cannot be read: {e}"), json!({}));
        }
    };
    if checkpoints.is_empty() {
        // Nothing applied yet: every read model is at the runner's position (0).
        checkpoints.push(("all".into(), app.projections.position()));
    }
    let lowest = checkpoints.iter().map(|(_, c)| *c).min().unwrap_or(0);
    let oldest_unapplied_age = if lowest < head {
        match app.store.read_all(lowest, 1).await {
            Ok(page) => page.first().map(|e| (app.commands.now() - e.occurred_at).to_std().unwrap_or_default()),
            Err(e) => {
                return not_ready("store-unreachable", format!("the event store does not answer: {e}"), json!({}));
            }
        }
    } else {
        None
    };
    let seen = Observation {
        store_head: head,
        checkpoints,
        caught_up_since_start: app.projections.is_caught_up(),
        stopped_by: app.projections.stopped_by(),
        oldest_unapplied_age,
    };
    let projected = app.projections.position();
    match decide(&seen, limits) {
        Ok(()) => axum::Json(json!({ "status": "ready", "storePosition": head, "projectionPosition": projected }))
            .into_response(),
        Err(why) => {
            let mut extra = json!({ "storePosition": head, "projectionPosition": projected });
            let slug = match &why {
                NotReady::Stopped { .. } => "projections-stopped",
                NotReady::CatchingUp => "catching-up",
                NotReady::Lagging { projection, lag_events, lag, .. } => {
                    extra["projection"] = json!(projection);
                    extra["lagEvents"] = json!(lag_events);
                    extra["lagSeconds"] = json!(lag.as_secs_f64());
                    "projection-lagging"
                }
            };
            let error = if let NotReady::Stopped { error } = &why { error.as_str() } else { "" };
            tracing::warn!(reason = slug, detail = %why.detail(limits), error, "not ready");
            not_ready(slug, why.detail(limits), extra)
        }
    }
}

/// A 503 problem document with `status` (the reason's slug, as the 200 answer has `ready`) and
/// the extension members in `extra`.
fn not_ready(slug: &str, detail: String, extra: Value) -> Response {
    let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, "Not ready", detail);
    let mut body = serde_json::to_value(&problem).unwrap_or_else(|_| json!({}));
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
        body.insert("readiness".into(), json!(slug));
    }
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ReadinessLimits {
        ReadinessLimits { max_lag_events: 10, max_lag: Duration::from_secs(30) }
    }

    fn seen(head: u64, checkpoints: &[(&str, u64)], age: Option<u64>) -> Observation {
        Observation {
            store_head: head,
            checkpoints: checkpoints.iter().map(|(n, c)| ((*n).to_string(), *c)).collect(),
            caught_up_since_start: true,
            stopped_by: None,
            oldest_unapplied_age: age.map(Duration::from_secs),
        }
    }

    #[test]
    fn caught_up_or_within_the_limits_is_ready() {
        assert_eq!(decide(&seen(100, &[("connections", 100), ("runs", 100)], None), limits()), Ok(()));
        assert_eq!(decide(&seen(100, &[("connections", 95), ("runs", 90)], Some(29)), limits()), Ok(()));
        assert_eq!(decide(&seen(0, &[], None), limits()), Ok(()));
    }

    #[test]
    fn too_many_events_behind_names_the_furthest_behind_projection() {
        assert_eq!(
            decide(&seen(100, &[("connections", 95), ("runs", 89)], Some(1)), limits()),
            Err(NotReady::Lagging {
                projection: "runs".into(),
                lag_events: 11,
                lag: Duration::from_secs(1),
                limit: LagLimit::Events
            })
        );
    }

    #[test]
    fn a_few_events_that_are_too_old_are_not_ready() {
        assert_eq!(
            decide(&seen(100, &[("connections", 99)], Some(31)), limits()),
            Err(NotReady::Lagging {
                projection: "connections".into(),
                lag_events: 1,
                lag: Duration::from_secs(31),
                limit: LagLimit::Age
            })
        );
    }

    #[test]
    fn a_stopped_runner_or_one_still_replaying_is_not_ready() {
        let mut stopped = seen(100, &[("connections", 100)], None);
        stopped.stopped_by = Some("undecodable event at 7".into());
        assert_eq!(decide(&stopped, limits()), Err(NotReady::Stopped { error: "undecodable event at 7".into() }));
        let mut replaying = seen(100, &[("connections", 100)], None);
        replaying.caught_up_since_start = false;
        assert_eq!(decide(&replaying, limits()), Err(NotReady::CatchingUp));
        // Past a limit, the lag is what is reported, with its numbers.
        let mut far_behind = seen(100, &[("connections", 50)], Some(2));
        far_behind.caught_up_since_start = false;
        assert!(matches!(decide(&far_behind, limits()), Err(NotReady::Lagging { lag_events: 50, .. })));
    }

    #[test]
    fn a_zero_limit_tolerates_no_lag_at_all() {
        let strict = ReadinessLimits { max_lag_events: 0, max_lag: Duration::ZERO };
        assert_eq!(decide(&seen(5, &[("runs", 5)], None), strict), Ok(()));
        assert!(decide(&seen(5, &[("runs", 4)], Some(0)), strict).is_err());
    }
}
