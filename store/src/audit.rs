//! The auditors' read of the store, shared by the audit API (`GET /audit/...`) and the `replay`
//! command: a question about the store ([`EventFilter`]) checked the same way for both
//! ([`check`]), its events read in global order up to the head the store had when the read
//! began ([`pages`]), and each event shown as stored or upcast to the current schema of its
//! type ([`show`]).

use std::sync::Arc;

use domain::EventEnvelope;
use domain::error::DecodeError;
use futures::{Stream, StreamExt};

use crate::{EventFilter, EventStore, StoreError, position_ranges};

/// The most event types one question may name: each is a bound SQL parameter, and a list longer
/// than every event type there is can only be a mistake.
pub const MAX_EVENT_TYPES: usize = 64;

/// Ranges of positions read at once by [`pages`]: one reader alone keeps neither core busy.
const READS_IN_FLIGHT: usize = 2;

/// Why a question can only be a mistake. Each caller words it for its own surface (query
/// parameters, command-line flags).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the first position {first} is after the last {last}")]
    PositionsReversed { first: u64, last: u64 },
    #[error("the start of the time range is not before its end")]
    TimesReversed,
    #[error("stream {stream} does not belong to tenant {tenant}")]
    ForeignStream { stream: String, tenant: String },
    #[error("at most {MAX_EVENT_TYPES} event types may be named")]
    TooManyTypes,
}

/// Refuses a question that can only match nothing by mistake: positions or times reversed, a
/// stream of another tenant than the one named (stream ids start with their tenant), or more
/// event types than [`MAX_EVENT_TYPES`].
pub fn check(filter: &EventFilter) -> Result<(), QueryError> {
    if let (Some(after), Some(last)) = (filter.after_position, filter.up_to_position)
        && after > last
    {
        return Err(QueryError::PositionsReversed { first: after + 1, last });
    }
    if let (Some(since), Some(until)) = (filter.occurred_from, filter.occurred_before)
        && since >= until
    {
        return Err(QueryError::TimesReversed);
    }
    if let (Some(stream), Some(tenant)) = (&filter.stream_id, &filter.tenant_id)
        && !stream.starts_with(&format!("{tenant}/"))
    {
        return Err(QueryError::ForeignStream { stream: stream.clone(), tenant: tenant.clone() });
    }
    if filter.event_types.len() > MAX_EVENT_TYPES {
        return Err(QueryError::TooManyTypes);
    }
    Ok(())
}

/// Shows `event` as the auditor asked: upcast to the current schema version of its type unless
/// `as_stored` (the stored form is what the hash chain covers). An event that cannot be upcast
/// (malformed, or written by a newer build) is left as stored, and the error says why.
pub fn show(event: &mut EventEnvelope, as_stored: bool) -> Result<(), DecodeError> {
    if as_stored { Ok(()) } else { domain::any_event::upcast_envelope(event) }
}

/// The events `filter` selects after its `after_position`, up to its `up_to_position` or `head`
/// (whichever is lower), in global order, in pages of at most `page` events, as stored. Nothing
/// empty is sent; the stream ends after the last page or the first error.
///
/// One stream's events are found page by page through its index, wherever they are. Otherwise
/// positions have no holes, so the walk is cut into ranges of `page` positions known in advance,
/// [`READS_IN_FLIGHT`] of them read at once on the store's readers and handed on in order.
pub fn pages(
    store: Arc<dyn EventStore>,
    filter: &EventFilter,
    head: u64,
    page: usize,
) -> impl Stream<Item = Result<Vec<EventEnvelope>, StoreError>> + Send + 'static {
    let mut filter = filter.clone();
    let end = filter.up_to_position.map_or(head, |last| last.min(head));
    filter.up_to_position = Some(end);
    let start = filter.after_position.unwrap_or(0);
    if filter.stream_id.is_some() {
        let pages = futures::stream::unfold(Some(start), move |after| {
            let (store, filter) = (store.clone(), filter.clone());
            async move {
                let after = after?;
                match store.read_filtered(&filter, after, page).await {
                    Ok(events) => {
                        let last = events.last()?.global_position;
                        Some((Ok(events), Some(last)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        return pages.boxed();
    }
    futures::stream::iter(position_ranges(start, end, page))
        .map(move |(after, up_to)| {
            let range = EventFilter { up_to_position: Some(up_to), ..filter.clone() };
            let store = store.clone();
            async move { store.read_filtered(&range, after, page).await }
        })
        .buffered(READS_IN_FLIGHT)
        .filter(|page| std::future::ready(page.as_ref().map_or(true, |events| !events.is_empty())))
        .scan(false, |failed, page| {
            // Nothing after an error: the reader must not skip a range it did not see.
            let result = (!*failed).then_some(page);
            *failed |= result.as_ref().is_some_and(Result::is_err);
            std::future::ready(result)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, SqliteEventStore};

    /// A store whose streams `t/a` and `t/b` hold positions 1–3 and 6–9, and 4–5.
    async fn store() -> (tempfile::TempDir, Arc<dyn EventStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteEventStore::open(&dir.path().join("events.db")).unwrap();
        for (stream, n) in [("t/a", 3), ("t/b", 2), ("t/a", 4)] {
            store.append(stream, ExpectedVersion::Any, crate::contract::sample_events(n)).await.unwrap();
        }
        (dir, Arc::new(store))
    }

    async fn positions(store: &Arc<dyn EventStore>, filter: EventFilter, head: u64, page: usize) -> Vec<Vec<u64>> {
        pages(store.clone(), &filter, head, page)
            .map(|page| page.unwrap().iter().map(|e| e.global_position).collect())
            .collect()
            .await
    }

    #[tokio::test]
    async fn pages_walk_the_global_order_or_one_stream_up_to_the_head_they_were_given() {
        let (_dir, store) = store().await;
        let all = EventFilter::default();
        assert_eq!(positions(&store, all.clone(), 9, 4).await, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9]]);
        assert_eq!(positions(&store, all.clone(), 5, 4).await, [vec![1, 2, 3, 4], vec![5]], "nothing past the head");
        let middle = EventFilter { after_position: Some(2), up_to_position: Some(6), ..all };
        assert_eq!(positions(&store, middle, 9, 10).await, [vec![3, 4, 5, 6]]);

        let a = EventFilter { stream_id: Some("t/a".into()), ..EventFilter::default() };
        assert_eq!(positions(&store, a.clone(), 9, 3).await, [vec![1, 2, 3], vec![6, 7, 8], vec![9]]);
        assert_eq!(positions(&store, a, 7, 3).await, [vec![1, 2, 3], vec![6, 7]]);
        let b_types =
            EventFilter { stream_id: Some("t/b".into()), event_types: vec!["Other".into()], ..EventFilter::default() };
        assert!(positions(&store, b_types, 9, 3).await.is_empty(), "no empty page is sent");
    }

    #[test]
    fn questions_that_can_only_be_mistakes_are_refused() {
        assert_eq!(check(&EventFilter::default()), Ok(()));
        let reversed = EventFilter { after_position: Some(9), up_to_position: Some(5), ..EventFilter::default() };
        assert_eq!(check(&reversed), Err(QueryError::PositionsReversed { first: 10, last: 5 }));
        let at = chrono::Utc::now();
        let empty_time = EventFilter { occurred_from: Some(at), occurred_before: Some(at), ..EventFilter::default() };
        assert_eq!(check(&empty_time), Err(QueryError::TimesReversed));
        let foreign =
            EventFilter { tenant_id: Some("t".into()), stream_id: Some("u/a".into()), ..EventFilter::default() };
        assert!(matches!(check(&foreign), Err(QueryError::ForeignStream { .. })));
        let prefix =
            EventFilter { tenant_id: Some("t".into()), stream_id: Some("tt/a".into()), ..EventFilter::default() };
        assert!(check(&prefix).is_err(), "a tenant id that is a prefix of another's is not its owner");
        let types = EventFilter { event_types: vec!["T".into(); MAX_EVENT_TYPES + 1], ..EventFilter::default() };
        assert_eq!(check(&types), Err(QueryError::TooManyTypes));
    }
}
