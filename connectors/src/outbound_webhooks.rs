//! Outbound webhook requests: the Standard Webhooks signature (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`, one signature per valid secret during a rotation), CloudEvents
//! binary-mode headers, and how an endpoint's answer is read (success, retry, slow down, stop).

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use domain::clock::Clock;
use serde_json::{Value, json};

use crate::standard_webhooks::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_v1};

/// The response header an endpoint uses to steer deliveries (`abort-message`, `disable`).
pub const DELIVERY_CONTROL_HEADER: &str = "webhook-delivery";
/// How much of an answer's body is recorded in the run's attempt.
pub const MAX_RECORDED_BODY: usize = 1024;
/// The `ce-source` of every delivery.
pub const CE_SOURCE: &str = "urn:connectsoft:integration-engine";

/// One delivery attempt, ready to send.
#[derive(Clone)]
pub struct OutboundRequest {
    pub url: reqwest::Url,
    /// Stable across retries and across subscriptions: the message id.
    pub webhook_id: String,
    pub event_type: String,
    /// The attempt's time (`webhook-timestamp`, `ce-time` is the message's time).
    pub timestamp: DateTime<Utc>,
    pub message_time: DateTime<Utc>,
    pub body: Vec<u8>,
    /// `v1,<sig>` entries, space-separated.
    pub signature: String,
    pub tenant_id: String,
    pub project_id: Option<String>,
    /// The values the request is signed with: the subscriber knows them, and one it echoes in
    /// its answer is masked in what is kept of the answer (never printed by `Debug`).
    pub signing_secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("url", &self.url.as_str())
            .field("webhook_id", &self.webhook_id)
            .field("event_type", &self.event_type)
            .finish_non_exhaustive()
    }
}

/// The body every delivery carries: `{"type", "timestamp", "data"}`, the message's own time.
pub fn body(event_type: &str, message_time: DateTime<Utc>, data: &Value) -> Vec<u8> {
    let body = json!({
        "type": event_type,
        "timestamp": message_time.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `webhook-signature` value: a `v1,` signature under each secret that is a valid
/// `whsec_` (or bare base64) key, in the order given (current first). `Err` when none is.
pub fn signature_header(secrets: &[&[u8]], webhook_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let signatures: Vec<String> = secrets
        .iter()
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(|s| sign_v1(s.trim(), webhook_id, timestamp, body))
        .collect();
    if signatures.is_empty() {
        return Err("the signing secret is not a whsec_ (base64) key".into());
    }
    Ok(signatures.join(" "))
}

/// What the endpoint's answer (or its absence) means for the message and the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 2xx with `webhook-delivery: disable`: delivered, and the subscription is to be
    /// deactivated now (nothing more goes to it).
    DeliveredThenDeactivate { reason: String },
    /// Try again later, no sooner than `retry_after` when the endpoint said so; `slow_down`
    /// when the endpoint is overloaded (429, 502, 503, 504) and its lane should back off.
    Retry { retry_after: Option<Duration>, slow_down: bool },
    /// `webhook-delivery: abort-message`: this message is not to be sent again.
    AbortMessage,
    /// 410 Gone or `webhook-delivery: disable` on a failure: the subscription is to be
    /// deactivated.
    Deactivate { reason: String },
}

/// What came back from one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub latency: Duration,
    pub body_excerpt: Option<String>,
    /// Why it failed, `None` for a 2xx.
    pub error: Option<String>,
    pub verdict: Verdict,
}

/// Reads an answer: the status, the `webhook-delivery` header and `Retry-After` (seconds or an
/// HTTP date, relative to `now`).
pub fn classify(status: u16, control: Option<&str>, retry_after: Option<&str>, now: DateTime<Utc>) -> Verdict {
    match control.map(|c| c.trim().to_ascii_lowercase()).as_deref() {
        Some("disable") => {
            let reason = format!("the endpoint answered {status} with webhook-delivery: disable");
            // A 2xx took the message: it is delivered, whatever the endpoint wants next.
            return if (200..300).contains(&status) {
                Verdict::DeliveredThenDeactivate { reason }
            } else {
                Verdict::Deactivate { reason }
            };
        }
        Some("abort-message") => return Verdict::AbortMessage,
        _ => {}
    }
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Deactivate { reason: "the endpoint answered 410 Gone".into() },
        _ => Verdict::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
            slow_down: matches!(status, 429 | 502 | 503 | 504),
        },
    }
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date (past dates are no delay).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Sends one attempt within `timeout` (connect, send and the whole answer) and reads the answer;
/// a `Retry-After` date is read against `clock`.
pub async fn send(
    client: &reqwest::Client,
    request: &OutboundRequest,
    timeout: Duration,
    clock: &dyn Clock,
) -> AttemptResult {
    let started = Instant::now();
    let time = request.message_time.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut builder = client
        .post(request.url.clone())
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(ID_HEADER, &request.webhook_id)
        .header(TIMESTAMP_HEADER, request.timestamp.timestamp().to_string())
        .header(SIGNATURE_HEADER, &request.signature)
        .header("ce-specversion", "1.0")
        .header("ce-id", &request.webhook_id)
        .header("ce-type", &request.event_type)
        .header("ce-source", CE_SOURCE)
        .header("ce-time", time)
        .header("ce-tenantid", &request.tenant_id);
    if let Some(project) = &request.project_id {
        builder = builder.header("ce-subject", project);
    }
    let outcome = async {
        let response = builder.body(request.body.clone()).send().await?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (control, retry_after) = (header(DELIVERY_CONTROL_HEADER), header("retry-after"));
        // Only what is recorded is read: an endless answer must not hold the attempt.
        let bytes = crate::egress::read_capped(response, MAX_RECORDED_BODY).await?.bytes;
        Ok::<_, reqwest::Error>((status, control, retry_after, bytes))
    };
    let result = tokio::time::timeout(timeout, outcome).await;
    let latency = started.elapsed();
    match result {
        Ok(Ok((status, control, retry_after, bytes))) => {
            let verdict = classify(status, control.as_deref(), retry_after.as_deref(), clock.now());
            // Most answers are empty: the secrets' spellings are worked out only for one that is not.
            let body_excerpt = (!bytes.is_empty()).then(|| {
                let secrets = crate::redact::Redactor::of(request.signing_secrets.iter().map(Vec::as_slice));
                secrets.scrub(&String::from_utf8_lossy(&bytes)).into_owned()
            });
            let error = match &verdict {
                Verdict::Delivered | Verdict::DeliveredThenDeactivate { .. } => None,
                Verdict::AbortMessage => {
                    Some(format!("the endpoint answered {status} with webhook-delivery: abort-message"))
                }
                Verdict::Deactivate { reason } => Some(reason.clone()),
                Verdict::Retry { .. } if (300..400).contains(&status) => {
                    Some(format!("the endpoint answered {status} (redirects are not followed)"))
                }
                Verdict::Retry { .. } => Some(format!("the endpoint answered {status}")),
            };
            AttemptResult { status: Some(status), latency, body_excerpt, error, verdict }
        }
        Ok(Err(error)) => {
            let reason = if error.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else {
                // The source chain names the cause (refused connection, egress policy, TLS).
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            };
            AttemptResult {
                status: None,
                latency,
                body_excerpt: None,
                error: Some(reason),
                verdict: Verdict::Retry { retry_after: None, slow_down: false },
            }
        }
        Err(_) => AttemptResult {
            status: None,
            latency,
            body_excerpt: None,
            error: Some(format!("no answer within {} ms", timeout.as_millis())),
            verdict: Verdict::Retry { retry_after: None, slow_down: false },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_signature_matches_the_specifications_vector_and_covers_every_secret() {
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature_header(&[SECRET.as_bytes()], id, 1_614_265_330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = signature_header(&[b"whsec_AAAAAAAA", SECRET.as_bytes()], id, 1_614_265_330, body).unwrap();
        assert_eq!(two.split(' ').count(), 2);
        assert!(two.ends_with("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
        assert!(signature_header(&[b"not base64 !"], id, 1, body).is_err());
    }

    #[test]
    fn the_body_is_type_timestamp_and_data() {
        let body: Value =
            serde_json::from_slice(&body("DeploymentPromoted", DateTime::UNIX_EPOCH, &json!({"a": 1}))).unwrap();
        assert_eq!(
            body,
            json!({"type": "DeploymentPromoted", "timestamp": "1970-01-01T00:00:00.000Z", "data": {"a": 1}})
        );
    }

    #[test]
    fn answers_are_classified() {
        let now = DateTime::UNIX_EPOCH;
        assert_eq!(classify(204, None, None, now), Verdict::Delivered);
        assert_eq!(classify(302, None, None, now), Verdict::Retry { retry_after: None, slow_down: false });
        assert_eq!(classify(500, None, None, now), Verdict::Retry { retry_after: None, slow_down: false });
        for slow in [429, 502, 503, 504] {
            assert_eq!(
                classify(slow, None, Some("7"), now),
                Verdict::Retry { retry_after: Some(Duration::from_secs(7)), slow_down: true }
            );
        }
        assert!(matches!(classify(410, None, None, now), Verdict::Deactivate { .. }));
        assert!(matches!(classify(200, Some("Disable"), None, now), Verdict::DeliveredThenDeactivate { .. }));
        assert!(matches!(classify(204, Some("disable"), None, now), Verdict::DeliveredThenDeactivate { .. }));
        assert!(matches!(classify(500, Some("disable"), None, now), Verdict::Deactivate { .. }));
        assert_eq!(classify(500, Some("abort-message"), None, now), Verdict::AbortMessage);
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now), Some(Duration::from_secs(100)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    /// A request to the test endpoint at `addr`, signed with `signing_secrets`.
    fn request_to(addr: std::net::SocketAddr, signing_secrets: Vec<Vec<u8>>) -> OutboundRequest {
        OutboundRequest {
            url: reqwest::Url::parse(&format!("http://{addr}/hook")).unwrap(),
            webhook_id: "msg-1".into(),
            event_type: "T".into(),
            timestamp: Utc::now(),
            message_time: Utc::now(),
            body: b"{}".to_vec(),
            signature: "v1,x".into(),
            tenant_id: "t".into(),
            project_id: None,
            signing_secrets,
        }
    }

    /// An endpoint answering 200 and then a body that never ends: only the recorded excerpt
    /// is read, so the attempt is delivered at once instead of timing out on the body.
    #[tokio::test]
    async fn an_endless_answer_is_read_only_up_to_the_recorded_excerpt() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 8192];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 4096, "a".repeat(4096));
            // Endless, until the client hangs up.
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let allow = std::sync::Arc::new(crate::egress::EgressAllowList::parse("127.0.0.1").unwrap());
        let client = crate::egress::webhook_client(allow, Duration::from_secs(2)).unwrap();
        let request = request_to(addr, Vec::new());
        let result = send(&client, &request, Duration::from_secs(3), &domain::clock::SystemClock).await;
        assert_eq!(result.verdict, Verdict::Delivered, "{:?}", result.error);
        assert_eq!(result.body_excerpt.map(|b| b.len()), Some(MAX_RECORDED_BODY));
        assert!(result.latency < Duration::from_secs(2), "{:?}", result.latency);
    }

    /// A subscriber that echoes the signing secret (it knows it) has it masked in the answer
    /// that is kept.
    #[tokio::test]
    async fn a_subscriber_echoing_the_signing_secret_has_it_masked_in_the_kept_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = socket.read(&mut vec![0; 8192]).await;
            let body = format!("verified with {SECRET}");
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let _ = socket.write_all(answer.as_bytes()).await;
        });
        let allow = std::sync::Arc::new(crate::egress::EgressAllowList::parse("127.0.0.1").unwrap());
        let client = crate::egress::webhook_client(allow, Duration::from_secs(2)).unwrap();
        let request = request_to(addr, vec![SECRET.as_bytes().to_vec()]);
        let result = send(&client, &request, Duration::from_secs(3), &domain::clock::SystemClock).await;
        assert_eq!(result.body_excerpt.as_deref(), Some("verified with [redacted]"));
    }
}
