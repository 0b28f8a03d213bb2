//! One attempt of a webhook run: prepared from the run's stream and the message, sent, and
//! recorded in one append.

use super::*;

pub(super) enum Job {
    /// Take the next attempt and send it.
    Attempt { failing_since: Option<DateTime<Utc>> },
    /// End the run as failed without an attempt.
    Cancel(String),
}

/// One attempt (or cancellation) of one run, in its own task.
pub(super) struct AttemptTask {
    pub(super) shared: Arc<Shared>,
    pub(super) run_id: String,
    pub(super) tenant_id: String,
    pub(super) subscription_id: String,
    pub(super) trace_id: String,
    pub(super) input: Value,
    /// The run as the scheduler knew it when it launched the attempt.
    pub(super) state: RunState,
}

/// Why an attempt could not be prepared: `retry` when trying again later may help.
pub(super) struct NotSendable {
    pub(super) error: String,
    pub(super) retry: bool,
}

impl AttemptTask {
    pub(super) fn ctx(&self) -> CommandContext {
        CommandContext::new(&self.tenant_id, &self.trace_id, Actor::worker(&self.shared.settings.worker_id))
    }

    pub(super) fn stream(&self) -> String {
        stream_id(&self.tenant_id, &self.run_id)
    }

    pub(super) async fn run(self, job: Job) -> Outcome {
        match job {
            Job::Cancel(reason) => {
                let fail = RunCommand::Fail {
                    run_id: self.run_id.clone(),
                    error: reason,
                    failed_at: self.shared.commands.now(),
                };
                self.record(&fail, false, None).await
            }
            Job::Attempt { failing_since } => self.attempt(failing_since).await,
        }
    }

    pub(super) async fn record(
        &self,
        command: &RunCommand,
        success: bool,
        slow_down: Option<Option<Duration>>,
    ) -> Outcome {
        match self.shared.commands.execute::<Run>(&self.ctx(), &self.stream(), command).await {
            Ok(executed) => {
                let outcome = if success { "delivered" } else { "failed" };
                metrics::counter!(crate::fanout::OUTBOUND_OUTCOMES, "outcome" => outcome).increment(1);
                Outcome::Recorded { position: executed.last_position, success, slow_down }
            }
            Err(error) => {
                tracing::warn!(run_id = %self.run_id, %error, "webhook run: recording the outcome failed");
                Outcome::Recheck
            }
        }
    }

    pub(super) async fn attempt(&self, failing_since: Option<DateTime<Utc>>) -> Outcome {
        let settings = &self.shared.settings;
        let started_at = self.shared.commands.now();
        let budget = settings.attempt_budget();
        // Everything of the attempt (preparing it, sending it) ends by this, leaving time to
        // record the outcome while the lane's lease still holds: past it, another worker may
        // take the lane over and send the message a second time.
        let deadline = Instant::now() + budget.saturating_sub(record_margin(settings.lease_grace));
        let RunState::Exists { attempts, attempts_before_redelivery, lease, .. } = &self.state else {
            return Outcome::Recheck;
        };
        // A lease of the run's own (an attempt before lanes had leases) expired: that attempt
        // counts, and is recorded as abandoned with this one.
        let attempt = lease.as_ref().map_or(*attempts, |lease| lease.attempt.max(*attempts)) + 1;
        let counted = attempt - attempts_before_redelivery;
        if counted > settings.max_attempts() {
            let error = format!("gave up after {} attempts (the limit is {})", counted - 1, settings.max_attempts());
            tracing::warn!(run_id = %self.run_id, "webhook dead-lettered: no attempt left");
            let fail = RunCommand::Fail { run_id: self.run_id.clone(), error, failed_at: started_at };
            return self.record(&fail, false, None).await;
        }
        let attempt = Attempt { number: attempt, started_at };
        let prepared = match tokio::time::timeout_at(deadline, self.prepare(started_at)).await {
            Ok(prepared) => prepared,
            Err(_) => Err(NotSendable {
                error: format!("preparing the attempt took longer than its lease allows ({} ms)", budget.as_millis()),
                retry: true,
            }),
        };
        let request = match prepared {
            Ok(request) => request,
            Err(not_sendable) => return self.fail_unsent(&attempt, counted, not_sendable).await,
        };
        let Some(timeout) = send_timeout(deadline, Instant::now(), settings.attempt_timeout) else {
            let error = "too little of the attempt's lease was left to send it after preparing it".to_owned();
            return self.fail_unsent(&attempt, counted, NotSendable { error, retry: true }).await;
        };
        let clock = self.shared.commands.clock().as_ref();
        let result = outbound_webhooks::send(&self.shared.client, &request, timeout, clock).await;
        let finished_at = self.shared.commands.now();
        let response = AttemptResponse {
            status_code: result.status,
            latency_ms: u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
            response_body: result.body_excerpt.clone(),
        };
        tracing::debug!(run_id = %self.run_id, attempt = attempt.number, status = ?result.status, "webhook attempt");
        if let Verdict::Delivered | Verdict::DeliveredThenDeactivate { .. } = &result.verdict {
            let output = json!({
                "statusCode": response.status_code,
                "latencyMs": response.latency_ms,
                "responseBody": response.response_body,
                "webhookId": request.webhook_id,
            });
            let complete = self.recorded(&attempt, finished_at, AttemptOutcome::Succeeded { output });
            let outcome = self.record(&complete, true, None).await;
            if let Verdict::DeliveredThenDeactivate { reason } = result.verdict {
                self.deactivate(&reason).await;
            }
            return outcome;
        }
        let (next, slow_down) = match &result.verdict {
            Verdict::Retry { retry_after, slow_down } => {
                (settings.next_delay(counted, *retry_after), slow_down.then_some(*retry_after))
            }
            Verdict::AbortMessage
            | Verdict::Deactivate { .. }
            | Verdict::Delivered
            | Verdict::DeliveredThenDeactivate { .. } => (None, None),
        };
        let failed = AttemptOutcome::Failed {
            error: result.error.clone().unwrap_or_else(|| "the delivery failed".into()),
            next_attempt_at: next.map(|d| finished_at + delta(d)),
            response: Some(response),
        };
        let outcome = self.record(&self.recorded(&attempt, finished_at, failed), false, slow_down).await;
        let since = failing_since.unwrap_or(finished_at);
        let deactivation = match result.verdict {
            Verdict::Deactivate { reason } => Some(reason),
            _ if finished_at - since >= delta(settings.disable_after_failing_for) => Some(format!(
                "its deliveries failed continuously since {} (the limit is {} s without a success)",
                since.to_rfc3339(),
                settings.disable_after_failing_for.as_secs()
            )),
            _ => None,
        };
        if let Some(reason) = deactivation {
            self.deactivate(&reason).await;
        }
        outcome
    }

    /// Records an attempt that was not sent; tried again later when `retry` and an attempt is
    /// left.
    pub(super) async fn fail_unsent(
        &self,
        attempt: &Attempt,
        counted: u32,
        NotSendable { error, retry }: NotSendable,
    ) -> Outcome {
        let next = retry.then(|| self.shared.settings.next_delay(counted, None)).flatten();
        let failed_at = self.shared.commands.now();
        let failed =
            AttemptOutcome::Failed { error, next_attempt_at: next.map(|d| failed_at + delta(d)), response: None };
        self.record(&self.recorded(attempt, failed_at, failed), false, None).await
    }

    /// The command recording `attempt`, ended at `finished_at` with `outcome`.
    pub(super) fn recorded(
        &self,
        attempt: &Attempt,
        finished_at: DateTime<Utc>,
        outcome: AttemptOutcome,
    ) -> RunCommand {
        RunCommand::RecordAttempt(RecordAttempt {
            run_id: self.run_id.clone(),
            attempt: attempt.number,
            worker_id: self.shared.settings.worker_id.clone(),
            started_at: attempt.started_at,
            finished_at,
            outcome,
        })
    }

    /// Deactivates the run's subscription (nothing more is sent to it) for `reason`.
    pub(super) async fn deactivate(&self, reason: &str) {
        match self.shared.commands.deactivate_subscription(&self.ctx(), &self.subscription_id, reason).await {
            Ok(true) => tracing::warn!(subscription_id = %self.subscription_id, %reason, "subscription deactivated"),
            Ok(false) => {}
            Err(error) => tracing::warn!(subscription_id = %self.subscription_id, %error, "deactivating failed"),
        }
    }

    /// The request of this attempt: the message, the endpoint (checked again: the allow-list
    /// may have changed), the signature under every valid secret.
    pub(super) async fn prepare(&self, now: DateTime<Utc>) -> Result<OutboundRequest, NotSendable> {
        let permanent = |error: String| NotSendable { error, retry: false };
        let retry = |error: String| NotSendable { error, retry: true };
        let subscription = self
            .shared
            .directory
            .subscription(&self.tenant_id, &self.subscription_id)
            .ok_or_else(|| permanent(format!("subscription {} does not exist", self.subscription_id)))?;
        let url = check_webhook_endpoint(&subscription.endpoint_url, &self.shared.settings.allow)
            .map_err(|reason| retry(format!("endpointUrl refused: {reason}")))?;
        let source_stream = self.input.pointer("/source/streamId").and_then(Value::as_str).unwrap_or_default();
        let source_event = self.input.pointer("/source/eventId").and_then(Value::as_str).unwrap_or_default();
        // Only the run's own tenant's messages: streams are `{tenant}/{resource}`.
        let foreign = |what: &str| permanent(format!("{what} is not a message of tenant {}", self.tenant_id));
        if !source_stream.strip_prefix(&self.tenant_id).is_some_and(|rest| rest.starts_with('/')) {
            return Err(foreign(&format!("stream {source_stream}")));
        }
        let recent = uuid::Uuid::parse_str(source_event)
            .ok()
            .and_then(|id| self.shared.recent_messages.get(&id))
            .filter(|event| event.stream_id == source_stream);
        let event = match recent {
            Some(event) => event,
            None => self
                .shared
                .store
                .read_stream(source_stream)
                .await
                .map_err(|e| retry(format!("reading the message: {e}")))?
                .into_iter()
                .find(|e| e.event_id.to_string() == source_event)
                .ok_or_else(|| permanent(format!("the message's event {source_event} is not in {source_stream}")))?,
        };
        let event = &event;
        if event.tenant_id != self.tenant_id {
            return Err(foreign(&format!("event {source_event}")));
        }
        let mut message =
            message_of(event).ok_or_else(|| permanent(format!("event {source_event} is not a message")))?;
        let message_id = self.input.get("messageId").and_then(Value::as_str).unwrap_or_default();
        if message.message_id != message_id {
            return Err(permanent(format!("event {source_event} is message {}, not {message_id}", message.message_id)));
        }
        // The project the fan-out matched on (a normalized event's is its connection's, looked
        // up then).
        if let Some(project) = self.input.get("projectId").and_then(Value::as_str) {
            message.project_id = Some(project.to_owned());
        }
        let secrets = self.secrets(&subscription.signing_secret_ref, now).await?;
        let body = outbound_webhooks::body(&message.event_type, message.time, &message.data);
        let keys: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let signature = outbound_webhooks::signature_header(&keys, &message.message_id, now.timestamp(), &body)
            .map_err(|e| retry(format!("signingSecretRef: {e}")))?;
        Ok(OutboundRequest {
            url,
            webhook_id: message.message_id,
            event_type: message.event_type,
            timestamp: now,
            message_time: message.time,
            body,
            signature,
            tenant_id: self.tenant_id.clone(),
            project_id: message.project_id,
            signing_secrets: secrets,
        })
    }

    /// The signing secret's current version and, within the grace period after a rotation, the
    /// previous one: receivers that have not switched yet still verify (the values that verify
    /// an inbound delivery, [`store::TenantVault::verifying_values`], by the same rule).
    pub(super) async fn secrets(&self, secret_ref: &str, now: DateTime<Utc>) -> Result<Vec<Vec<u8>>, NotSendable> {
        let retry = |error: String| NotSendable { error, retry: true };
        let secret = SecretRef::parse(secret_ref).map_err(|e| retry(format!("signingSecretRef: {e}")))?;
        let grace = self.shared.settings.secret_grace;
        let vault = self.shared.vault.of(&self.tenant_id);
        vault.signing_values(&secret, now, grace).await.map_err(|e| retry(format!("signing secret: {e}")))
    }
}

/// An attempt under way: its number and when it started.
pub(super) struct Attempt {
    pub(super) number: u32,
    pub(super) started_at: DateTime<Utc>,
}
