//! The signed sample deliveries in `fixtures/webhooks/`: one per provider and event, each with
//! its headers and raw body exactly as the vendor sends them, signed with a test secret at
//! `signedAt`. This test checks every sample verifies, fails once a byte of its body changes,
//! and normalizes to the type it expects; `tests/e2e/webhook_gateway.rs` posts the same files to
//! the real binary. `UPDATE_FIXTURES=1 cargo test -p connectors --test webhook_fixtures`
//! re-signs them (JWS ES256 signatures are randomized, so that rewrites those two files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use connectors::inbound::{self, Headers, Keys, Scheme, SignedRequest};
use connectors::jws::JwkSet;
use connectors::normalization::{RuleTable, Shape};
use connectors::{github, shopify, slack, standard_webhooks, stripe, twilio};
use ring::signature::{self, KeyPair};
use serde_json::{Value, json};

/// 2026-01-01T00:00:00Z: when every sample was signed.
const SIGNED_AT: i64 = 1_767_225_600;
/// The URL the Twilio samples were sent to (the connection's `webhookUrl`).
const TWILIO_URL: &str = "https://hooks.connectsoft.example/webhooks/deliveries?connectionId=conn-twilio";
const TWILIO_JSON_URL: &str =
    "https://hooks.connectsoft.example/webhooks/deliveries?connectionId=conn-twilio&bodySHA256=";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/webhooks")
}

/// A sample as stored.
struct Sample {
    provider: &'static str,
    name: &'static str,
    shape: &'static str,
    description: &'static str,
    secret: String,
    url: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    normalized: &'static str,
    provider_delivery_id: Option<String>,
}

impl Sample {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "description": self.description,
            "provider": self.provider,
            "shape": self.shape,
            "secret": self.secret,
            "signedAt": SIGNED_AT,
            "headers": self.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "body": self.body,
            "expect": { "normalizedEventType": self.normalized },
        });
        if let Some(url) = &self.url {
            v["url"] = json!(url);
        }
        if let Some(id) = &self.provider_delivery_id {
            v["expect"]["providerDeliveryId"] = json!(id);
        }
        v
    }
}

fn compact(v: Value) -> String {
    serde_json::to_string(&v).unwrap()
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const GITHUB_SECRET: &str = "github-webhook-test-secret";
const STRIPE_SECRET: &str = "whsec_stripe_test_0123456789abcdef";
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SHOPIFY_SECRET: &str = "shpss_test_0123456789abcdef0123456789";
const TWILIO_SECRET: &str = "twilio-auth-token-test-0123456789ab";
const GITLAB_SECRET: &str = "glwt-test-secret-token";

fn repository() -> Value {
    json!({"id": 1296269, "name": "booking", "full_name": "connectsoft-booking/booking", "private": true,
           "html_url": "https://github.com/connectsoft-booking/booking", "default_branch": "main"})
}

fn github(
    name: &'static str,
    event: &str,
    delivery: &str,
    body: Value,
    normalized: &'static str,
    description: &'static str,
) -> Sample {
    let body = compact(body);
    let signature = github::sign(GITHUB_SECRET.as_bytes(), body.as_bytes());
    Sample {
        provider: "github",
        name,
        shape: "native",
        description,
        secret: GITHUB_SECRET.into(),
        url: None,
        headers: h(&[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-GitHub-Hook-ID", "292430182"),
            ("User-Agent", "GitHub-Hookshot/6f2ad9a"),
            ("Content-Type", "application/json"),
            ("X-Hub-Signature-256", &signature),
        ]),
        body,
        normalized,
        provider_delivery_id: Some(delivery.into()),
    }
}

fn stripe(name: &'static str, id: &str, event_type: &str, object: Value, normalized: &'static str) -> Sample {
    let body = compact(json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "created": SIGNED_AT,
        "data": {"object": object}, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": event_type
    }));
    let header = stripe::sign(&[STRIPE_SECRET.as_bytes()], SIGNED_AT, body.as_bytes());
    Sample {
        provider: "stripe",
        name,
        shape: "native",
        description: "A Stripe event as Stripe posts it: Stripe-Signature t= and v1= over {t}.{body}.",
        secret: STRIPE_SECRET.into(),
        url: None,
        headers: h(&[("Content-Type", "application/json; charset=utf-8"), ("Stripe-Signature", &header)]),
        body,
        normalized,
        provider_delivery_id: Some(id.into()),
    }
}

fn slack_json(name: &'static str, body: Value, normalized: &'static str, id: Option<&str>) -> Sample {
    let body = compact(body);
    let signature = slack::sign(SLACK_SECRET.as_bytes(), SIGNED_AT, body.as_bytes());
    Sample {
        provider: "slack",
        name,
        shape: "native",
        description: "A Slack Events API request: X-Slack-Signature v0 over v0:{timestamp}:{body}.",
        secret: SLACK_SECRET.into(),
        url: None,
        headers: h(&[
            ("Content-Type", "application/json"),
            ("X-Slack-Request-Timestamp", &SIGNED_AT.to_string()),
            ("X-Slack-Signature", &signature),
        ]),
        body,
        normalized,
        provider_delivery_id: id.map(String::from),
    }
}

fn rsa_key_pair() -> signature::RsaKeyPair {
    let pem = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/keys/rsa-2048-test-only-private.pem"),
    )
    .unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    signature::RsaKeyPair::from_der(&STANDARD.decode(b64).unwrap()).unwrap()
}

/// RFC 7515 Appendix A.3's P-256 key (a published test key).
fn ec_key_pair() -> signature::EcdsaKeyPair {
    let d = URL_SAFE_NO_PAD.decode("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI").unwrap();
    let x = URL_SAFE_NO_PAD.decode("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU").unwrap();
    let y = URL_SAFE_NO_PAD.decode("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0").unwrap();
    let public = [&[4u8][..], &x, &y].concat();
    signature::EcdsaKeyPair::from_private_key_and_public_key(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &d,
        &public,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap()
}

fn jwks_document() -> Value {
    let rsa = rsa_key_pair();
    let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let (n, e) = (&components.n, &components.e);
    let ec = ec_key_pair();
    let point = ec.public_key().as_ref();
    json!({"keys": [
        {"kty": "RSA", "kid": "partner-rsa-2026", "use": "sig", "alg": "RS256",
         "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)},
        {"kty": "EC", "kid": "partner-ec-2026", "use": "sig", "alg": "ES256", "crv": "P-256",
         "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
    ]})
}

fn jws(name: &'static str, alg: &str, kid: &str, payload: Value, normalized: &'static str, id: &str) -> Sample {
    let header = URL_SAFE_NO_PAD.encode(compact(json!({"alg": alg, "kid": kid, "typ": "JWT"})));
    let payload = URL_SAFE_NO_PAD.encode(compact(payload));
    let input = format!("{header}.{payload}");
    let rng = ring::rand::SystemRandom::new();
    let signature = match alg {
        "RS256" => {
            let pair = rsa_key_pair();
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out).unwrap();
            out
        }
        _ => ec_key_pair().sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
    };
    Sample {
        provider: "jws",
        name,
        shape: "native",
        description: "A compact JWS body signed by the provider, verified with its JWKS (jwks.json beside this file).",
        secret: "jwks.json".into(),
        url: None,
        headers: h(&[("Content-Type", "application/jose")]),
        body: format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)),
        normalized,
        provider_delivery_id: Some(id.into()),
    }
}

fn samples() -> Vec<Sample> {
    let mut samples = Vec::new();
    let pr = |action: &str, merged: bool| {
        json!({
            "action": action, "number": 42,
            "pull_request": {
                "id": 1, "number": 42, "state": if action == "opened" { "open" } else { "closed" },
                "title": "Add booking reminders", "user": {"login": "octocat"},
                "html_url": "https://github.com/connectsoft-booking/booking/pull/42",
                "head": {"ref": "feature/reminders", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"},
                "base": {"ref": "main"}, "merged": merged,
                "merge_commit_sha": if merged { json!("e5bd3914e2e596debea16f433f57875b5b90bcd6") } else { Value::Null },
                "merged_by": if merged { json!({"login": "octocat"}) } else { Value::Null },
                "merged_at": if merged { json!("2026-01-01T00:00:00Z") } else { Value::Null }
            },
            "repository": repository(), "sender": {"login": "octocat"}
        })
    };
    samples.push(github(
        "pull_request_merged",
        "pull_request",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        pr("closed", true),
        "PullRequestMerged",
        "GitHub's pull_request event for a PR closed by a merge: pull_request.merged is true in the signed body.",
    ));
    samples.push(github(
        "pull_request_closed",
        "pull_request",
        "72d3162e-cc78-11e3-81ab-4c9367dc0959",
        pr("closed", false),
        "PullRequestClosed",
        "GitHub's pull_request event for a PR closed without a merge.",
    ));
    samples.push(github(
        "pull_request_opened",
        "pull_request",
        "72d3162e-cc78-11e3-81ab-4c9367dc0960",
        pr("opened", false),
        "PullRequestOpened",
        "GitHub's pull_request event for an opened PR.",
    ));
    samples.push(github(
        "push",
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0961",
        json!({
            "ref": "refs/heads/main", "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
            "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "created": false, "deleted": false, "forced": false,
            "compare": "https://github.com/connectsoft-booking/booking/compare/9049f1265b7d...0d1a26e67d8f",
            "commits": [{"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "message": "Update README.md"}],
            "head_commit": {"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "message": "Update README.md"},
            "repository": repository(), "pusher": {"name": "octocat", "email": "octocat@github.com"}
        }),
        "CodePushed",
        "GitHub's push event.",
    ));
    samples.push(github(
        "release_published",
        "release",
        "72d3162e-cc78-11e3-81ab-4c9367dc0962",
        json!({
            "action": "published",
            "release": {"id": 2, "tag_name": "v1.4.0", "name": "v1.4.0", "draft": false, "prerelease": false,
                        "html_url": "https://github.com/connectsoft-booking/booking/releases/tag/v1.4.0"},
            "repository": repository()
        }),
        "ReleasePublished",
        "GitHub's release event, action published.",
    ));
    samples.push(github("workflow_run_completed", "workflow_run", "72d3162e-cc78-11e3-81ab-4c9367dc0963", json!({
        "action": "completed",
        "workflow_run": {"id": 30433642, "name": "CI", "head_branch": "main",
                         "head_sha": "acb5820ced9479c074f688cc328bf03f341a511d", "status": "completed",
                         "conclusion": "success", "html_url": "https://github.com/connectsoft-booking/booking/actions/runs/30433642"},
        "repository": repository()
    }), "WorkflowRunCompleted", "GitHub's workflow_run event, action completed."));
    samples.push(github(
        "deployment_status",
        "deployment_status",
        "72d3162e-cc78-11e3-81ab-4c9367dc0964",
        json!({
            "action": "created",
            "deployment_status": {"id": 1, "state": "success", "environment": "production",
                                  "target_url": "https://booking.connectsoft.example"},
            "deployment": {"id": 145988746, "sha": "acb5820ced9479c074f688cc328bf03f341a511d", "ref": "main",
                           "environment": "production"},
            "repository": repository()
        }),
        "DeploymentStatusChanged",
        "GitHub's deployment_status event.",
    ));
    samples.push(github(
        "issues_opened",
        "issues",
        "72d3162e-cc78-11e3-81ab-4c9367dc0965",
        json!({
            "action": "opened", "issue": {"number": 7, "title": "Reminder emails are late"}, "repository": repository()
        }),
        "ProviderEventReceived",
        "GitHub's issues event: no rule covers it, so it gets the fallback type.",
    ));
    // The spec's condensed envelope, exactly the spec example's body.
    let envelope = compact(
        json!({"providerDeliveryId": "gh-12345", "eventName": "pull_request", "payload": {"action": "closed", "merged": true}}),
    );
    samples.push(Sample {
        provider: "github",
        name: "envelope_pull_request_merged",
        shape: "envelope",
        description: "The spec's condensed envelope with X-CS-Provider: github, signed as a whole with X-Hub-Signature-256.",
        secret: GITHUB_SECRET.into(),
        url: None,
        headers: h(&[
            ("X-CS-Provider", "github"),
            ("Content-Type", "application/json"),
            ("X-Hub-Signature-256", &github::sign(GITHUB_SECRET.as_bytes(), envelope.as_bytes())),
        ]),
        body: envelope,
        normalized: "PullRequestMerged",
        provider_delivery_id: Some("gh-12345".into()),
    });

    samples.push(stripe(
        "payment_intent_succeeded",
        "evt_3PqJ1f2eZvKYlo2C0aZ1",
        "payment_intent.succeeded",
        json!({"id": "pi_3PqJ1f2eZvKYlo2C", "object": "payment_intent", "amount": 4900, "amount_received": 4900,
               "currency": "eur", "customer": "cus_QhX1", "status": "succeeded"}),
        "PaymentSucceeded",
    ));
    samples.push(stripe(
        "payment_intent_payment_failed",
        "evt_3PqJ1f2eZvKYlo2C0aZ2",
        "payment_intent.payment_failed",
        json!({"id": "pi_3PqJ1f2eZvKYlo2D", "object": "payment_intent", "amount": 4900, "currency": "eur",
               "customer": "cus_QhX1", "status": "requires_payment_method",
               "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"}}),
        "PaymentFailed",
    ));
    samples.push(stripe(
        "invoice_paid",
        "evt_1PqJ1f2eZvKYlo2C0aZ3",
        "invoice.paid",
        json!({"id": "in_1PqJ1f2eZvKYlo2C", "object": "invoice", "amount_paid": 1900, "currency": "eur",
               "customer": "cus_QhX1", "subscription": "sub_1PqJ1f", "status": "paid"}),
        "InvoicePaid",
    ));
    samples.push(stripe(
        "charge_refunded",
        "evt_3PqJ1f2eZvKYlo2C0aZ4",
        "charge.refunded",
        json!({"id": "ch_3PqJ1f2eZvKYlo2C", "object": "charge", "amount": 4900, "amount_refunded": 4900,
               "currency": "eur", "payment_intent": "pi_3PqJ1f2eZvKYlo2C", "customer": "cus_QhX1", "refunded": true}),
        "ChargeRefunded",
    ));
    samples.push(stripe(
        "customer_subscription_created",
        "evt_1PqJ1f2eZvKYlo2C0aZ5",
        "customer.subscription.created",
        json!({"id": "sub_1PqJ1f", "object": "subscription", "customer": "cus_QhX1", "status": "active"}),
        "CustomerSubscriptionCreated",
    ));
    samples.push(stripe(
        "customer_subscription_deleted",
        "evt_1PqJ1f2eZvKYlo2C0aZ6",
        "customer.subscription.deleted",
        json!({"id": "sub_1PqJ1f", "object": "subscription", "customer": "cus_QhX1", "status": "canceled"}),
        "CustomerSubscriptionDeleted",
    ));

    // Standard Webhooks: HMAC (v1) and Ed25519 (v1a).
    let std_body = compact(
        json!({"type": "invoice.created", "timestamp": "2026-01-01T00:00:00Z", "data": {"invoiceId": "inv_123", "amount": 1900}}),
    );
    let v1 = standard_webhooks::sign_v1(STANDARD_SECRET, "msg_2Kwb7aQXGmJ1wD5lq9zK3b", SIGNED_AT, std_body.as_bytes())
        .unwrap();
    samples.push(Sample {
        provider: "standard-webhooks",
        name: "v1_hmac",
        shape: "native",
        description: "A Standard Webhooks message signed v1 (HMAC-SHA256) with a whsec_ secret; no rule covers its type.",
        secret: STANDARD_SECRET.into(),
        url: None,
        headers: h(&[
            ("Content-Type", "application/json"),
            ("webhook-id", "msg_2Kwb7aQXGmJ1wD5lq9zK3b"),
            ("webhook-timestamp", &SIGNED_AT.to_string()),
            ("webhook-signature", &format!("v1,{} {v1}", STANDARD.encode([9u8; 32]))),
        ]),
        body: std_body.clone(),
        normalized: "ProviderEventReceived",
        provider_delivery_id: Some("msg_2Kwb7aQXGmJ1wD5lq9zK3b".into()),
    });
    let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
    let pair = signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let v1a = standard_webhooks::sign_v1a(&pair, "msg_2Kwb7aQXGmJ1wD5lq9zK3c", SIGNED_AT, std_body.as_bytes());
    samples.push(Sample {
        provider: "standard-webhooks",
        name: "v1a_ed25519",
        shape: "native",
        description: "A Standard Webhooks message signed v1a (Ed25519); the connection's secret is the whpk_ public key.",
        secret: format!("whpk_{}", STANDARD.encode(pair.public_key().as_ref())),
        url: None,
        headers: h(&[
            ("Content-Type", "application/json"),
            ("webhook-id", "msg_2Kwb7aQXGmJ1wD5lq9zK3c"),
            ("webhook-timestamp", &SIGNED_AT.to_string()),
            ("webhook-signature", &v1a),
        ]),
        body: std_body,
        normalized: "ProviderEventReceived",
        provider_delivery_id: Some("msg_2Kwb7aQXGmJ1wD5lq9zK3c".into()),
    });

    samples.push(slack_json(
        "app_mention",
        json!({
            "token": "XXYYZZ", "team_id": "T061EG9R6", "api_app_id": "A0PNCHHK2", "type": "event_callback",
            "event_id": "Ev0PV52K21", "event_time": SIGNED_AT,
            "event": {"type": "app_mention", "user": "U061F7AUR", "text": "<@U0LAN0Z89> is the build green?",
                      "ts": "1767225600.000200", "channel": "C0LAN2Q65", "event_ts": "1767225600.000200"}
        }),
        "SlackAppMentioned",
        Some("Ev0PV52K21"),
    ));
    samples.push(slack_json(
        "message",
        json!({
            "token": "XXYYZZ", "team_id": "T061EG9R6", "api_app_id": "A0PNCHHK2", "type": "event_callback",
            "event_id": "Ev0PV52K22", "event_time": SIGNED_AT,
            "event": {"type": "message", "channel": "C2147483705", "user": "U2147483697", "text": "Hello world",
                      "ts": "1767225600.000300", "channel_type": "channel"}
        }),
        "SlackMessagePosted",
        Some("Ev0PV52K22"),
    ));

    let shopify_body = compact(json!({
        "id": 820982911946154508u64, "order_number": 1001, "name": "#1001", "email": "jon@example.com",
        "created_at": "2026-01-01T00:00:00+00:00", "currency": "EUR", "total_price": "49.00",
        "financial_status": "paid", "line_items": [{"id": 866550311766439020u64, "title": "Booking credits", "quantity": 1, "price": "49.00"}]
    }));
    samples.push(Sample {
        provider: "shopify",
        name: "orders_create",
        shape: "native",
        description: "Shopify's orders/create webhook: X-Shopify-Hmac-Sha256 is the base64 HMAC-SHA256 of the body.",
        secret: SHOPIFY_SECRET.into(),
        url: None,
        headers: h(&[
            ("Content-Type", "application/json"),
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            ("X-Shopify-Shop-Domain", "booking-demo.myshopify.com"),
            ("X-Shopify-API-Version", "2025-01"),
            ("X-Shopify-Hmac-Sha256", &shopify::sign(SHOPIFY_SECRET.as_bytes(), shopify_body.as_bytes())),
        ]),
        body: shopify_body,
        normalized: "OrderCreated",
        provider_delivery_id: Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".into()),
    });

    let twilio_form = "AccountSid=AC8a3b1f2c4d5e6f7a8b9c0d1e2f3a4b5c&ApiVersion=2010-04-01&From=%2B15005550006&MessageSid=SM1f0e8ae6ade43cb3c0ce4525424e404f&MessageStatus=delivered&SmsSid=SM1f0e8ae6ade43cb3c0ce4525424e404f&SmsStatus=delivered&To=%2B14155552671";
    let params = connectors::form::parse(twilio_form.as_bytes());
    samples.push(Sample {
        provider: "twilio",
        name: "message_status_delivered",
        shape: "native",
        description: "Twilio's SMS status callback (form POST): X-Twilio-Signature is HMAC-SHA1 over the URL and the sorted parameters.",
        secret: TWILIO_SECRET.into(),
        url: Some(TWILIO_URL.into()),
        headers: h(&[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("I-Twilio-Idempotency-Token", "2d3f8a6e-3b1b-4c61-b3a9-1f0c6c0b2a11"),
            ("X-Twilio-Signature", &twilio::sign(TWILIO_SECRET.as_bytes(), TWILIO_URL, &params)),
        ]),
        body: twilio_form.into(),
        normalized: "MessageStatusChanged",
        provider_delivery_id: None,
    });
    let twilio_json =
        compact(json!({"type": "com.twilio.messaging.message.delivered", "MessageSid": "SM2", "AccountSid": "AC8a"}));
    let json_url = format!(
        "{TWILIO_JSON_URL}{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, twilio_json.as_bytes()))
    );
    samples.push(Sample {
        provider: "twilio",
        name: "json_body",
        shape: "native",
        description: "A Twilio JSON request: the URL carries bodySHA256 of the body and the signature covers the URL.",
        secret: TWILIO_SECRET.into(),
        url: Some(json_url.clone()),
        headers: h(&[
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature", &twilio::sign(TWILIO_SECRET.as_bytes(), &json_url, &[])),
        ]),
        body: twilio_json,
        normalized: "ProviderEventReceived",
        provider_delivery_id: None,
    });

    for (name, body, normalized, uuid) in [
        (
            "push",
            json!({"object_kind": "push", "event_name": "push", "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
            "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "ref": "refs/heads/main", "user_username": "jsmith",
            "project": {"id": 15, "path_with_namespace": "connectsoft/booking"}, "total_commits_count": 1}),
            "CodePushed",
            "7b2f9b1e-7d1a-4f3c-9b2e-1c2d3e4f5a6b",
        ),
        (
            "merge_request_merged",
            json!({"object_kind": "merge_request", "event_type": "merge_request",
            "project": {"id": 15, "path_with_namespace": "connectsoft/booking"},
            "object_attributes": {"iid": 12, "title": "Add reminders", "action": "merge", "state": "merged",
                "target_branch": "main", "merge_commit_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
                "url": "https://gitlab.example.com/connectsoft/booking/-/merge_requests/12"}}),
            "PullRequestMerged",
            "7b2f9b1e-7d1a-4f3c-9b2e-1c2d3e4f5a6c",
        ),
    ] {
        let event_header = if name == "push" { "Push Hook" } else { "Merge Request Hook" };
        samples.push(Sample {
            provider: "gitlab",
            name,
            shape: "native",
            description: "A GitLab webhook: X-Gitlab-Token carries the webhook's secret token (GitLab signs nothing).",
            secret: GITLAB_SECRET.into(),
            url: None,
            headers: h(&[
                ("Content-Type", "application/json"),
                ("X-Gitlab-Event", event_header),
                ("X-Gitlab-Event-UUID", uuid),
                ("X-Gitlab-Token", GITLAB_SECRET),
            ]),
            body: compact(body),
            normalized,
            provider_delivery_id: Some(uuid.into()),
        });
    }

    samples.push(jws(
        "rs256",
        "RS256",
        "partner-rsa-2026",
        json!({"jti": "ntf_01HZX1", "iat": SIGNED_AT, "type": "booking.confirmed", "data": {"bookingId": "bk_1"}}),
        "ProviderEventReceived",
        "ntf_01HZX1",
    ));
    samples.push(jws(
        "es256",
        "ES256",
        "partner-ec-2026",
        json!({"jti": "ntf_01HZX2", "iat": SIGNED_AT, "type": "booking.cancelled", "data": {"bookingId": "bk_2"}}),
        "ProviderEventReceived",
        "ntf_01HZX2",
    ));
    samples
}

fn regenerate() {
    let dir = fixtures_dir();
    for sample in samples() {
        let path = dir.join(sample.provider).join(format!("{}.json", sample.name));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&sample.to_json()).unwrap() + "\n").unwrap();
    }
    std::fs::write(dir.join("jws/jwks.json"), serde_json::to_string_pretty(&jwks_document()).unwrap() + "\n").unwrap();
}

/// Every stored sample: (path, contents).
pub fn stored_samples() -> Vec<(PathBuf, Value)> {
    let mut found = Vec::new();
    for provider in std::fs::read_dir(fixtures_dir()).unwrap() {
        let provider = provider.unwrap().path();
        if !provider.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&provider).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") && path.file_name().is_some_and(|n| n != "jwks.json") {
                let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                found.push((path, value));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn every_sample_verifies_fails_when_tampered_and_normalizes_as_expected() {
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        regenerate();
    }
    let rules = RuleTable::default_rules();
    let jwks = JwkSet::parse(&std::fs::read(fixtures_dir().join("jws/jwks.json")).unwrap()).unwrap();
    let stored = stored_samples();
    assert!(stored.len() >= 25, "only {} samples", stored.len());
    let mut covered = BTreeMap::<String, Vec<String>>::new();
    for (path, sample) in &stored {
        let at = path.display();
        let scheme = Scheme::from_name(sample["provider"].as_str().unwrap()).unwrap();
        let headers_pairs: Vec<(String, String)> = sample["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let headers = Headers::from_pairs(headers_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = sample["body"].as_str().unwrap().as_bytes();
        let secret = sample["secret"].as_str().unwrap().as_bytes().to_vec();
        let secrets = [secret.as_slice()];
        let keys = if scheme == Scheme::Jws { Keys::Jwks(&jwks) } else { Keys::Secrets(&secrets) };
        let request = SignedRequest {
            headers: &headers,
            body,
            url: sample["url"].as_str().unwrap_or(""),
            now: sample["signedAt"].as_i64().unwrap() + 30,
            tolerance_seconds: 300,
        };
        let verified = inbound::verify(scheme, &request, keys).unwrap_or_else(|e| panic!("{at}: {e}"));

        // One byte changed anywhere in the body breaks it (GitLab signs nothing: its token
        // authenticates the sender, not the body).
        let mut tampered = body.to_vec();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'1' { b'2' } else { b'1' };
        let tampered_request = SignedRequest { body: &tampered, ..request };
        if scheme != Scheme::GitLab {
            assert!(inbound::verify(scheme, &tampered_request, keys).is_err(), "{at}: a tampered body verified");
        }

        let shape = if sample["shape"] == "envelope" { Shape::Envelope } else { Shape::Native };
        let (id, event, payload) = match shape {
            Shape::Envelope => {
                let v: Value = serde_json::from_slice(&verified.signed_body).unwrap();
                (
                    v["providerDeliveryId"].as_str().unwrap().to_string(),
                    v["eventName"].as_str().unwrap().to_string(),
                    v["payload"].clone(),
                )
            }
            Shape::Native => {
                let d = inbound::native_delivery(scheme, &headers, &verified.signed_body)
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                (d.provider_delivery_id, d.event_name, d.payload)
            }
        };
        if let Some(expected) = sample["expect"]["providerDeliveryId"].as_str() {
            assert_eq!(id, expected, "{at}");
        }
        let normalized = rules.normalize(scheme.name(), &event, shape, &payload);
        assert_eq!(normalized.event_type, sample["expect"]["normalizedEventType"], "{at}");
        covered.entry(scheme.name().into()).or_default().push(normalized.event_type);
    }
    for scheme in Scheme::ALL {
        assert!(covered.contains_key(scheme.name()), "no sample for {}", scheme.name());
    }
    for required in [
        "PullRequestMerged",
        "PullRequestOpened",
        "PullRequestClosed",
        "CodePushed",
        "ReleasePublished",
        "WorkflowRunCompleted",
        "DeploymentStatusChanged",
        "PaymentSucceeded",
        "PaymentFailed",
        "InvoicePaid",
        "ChargeRefunded",
        "CustomerSubscriptionCreated",
        "CustomerSubscriptionDeleted",
        "MessageStatusChanged",
        "SlackAppMentioned",
        "SlackMessagePosted",
        "OrderCreated",
        "ProviderEventReceived",
    ] {
        assert!(covered.values().flatten().any(|t| t == required), "no sample normalizes to {required}");
    }
}
