//! The chain's events: a page of them as JSON Lines (`/v1/events`), and a watch as Server-Sent
//! Events (`/v1/watch`), filtered as `spore watch` filters and resumable with `Last-Event-ID`.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::catalog::{params, RawQuery};
use super::error::ApiError;
use super::json::EventJson;
use super::params::{self, ParamError};
use super::{Api, EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX};
use crate::core::event::EventFilter;
use crate::node::Watch;

/// `GET /v1/events?from=&limit=`: up to `limit` committed events from `from` on (default 0 and
/// [`EVENTS_LIMIT_DEFAULT`], at most [`EVENTS_LIMIT_MAX`]), one JSON object a line. The
/// `spores-next-from` header says where the next page starts.
#[tracing::instrument(name = "http_events", skip_all, fields(from, limit))]
pub(super) async fn events(State(api): State<Api>, query: RawQuery) -> Result<Response, ApiError> {
    let p = params(query, &["from", "limit"])?;
    let from = p.seq("from")?.unwrap_or(0);
    let limit = p.count("limit", 1, u64::from(EVENTS_LIMIT_MAX))?.unwrap_or(u64::from(EVENTS_LIMIT_DEFAULT));
    tracing::Span::current().record("from", from).record("limit", limit);
    let events = api.system.read_events(from, limit).await?;
    let mut body = Vec::with_capacity(events.len() * 512);
    for ev in &events {
        serde_json::to_writer(&mut body, &EventJson::from(ev)).map_err(|e| ApiError::Io(e.into()))?;
        body.push(b'\n');
    }
    let next = events.last().map_or(from, |ev| ev.seq + 1);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson")),
            (header::HeaderName::from_static("spores-next-from"), HeaderValue::from(next)),
        ],
        body,
    )
        .into_response())
}

/// The parameters `/v1/watch` takes.
const WATCH_PARAMS: &[&str] = &["from", "kind", "name", "node"];

/// `GET /v1/watch?from=&kind=&name=&node=`: the committed events that pass the filter, from
/// `from` on (default 0), as they commit, as Server-Sent Events whose `id` is the event's seq. A
/// `Last-Event-ID` header (what a reconnecting client sends) resumes after that seq instead.
#[tracing::instrument(name = "http_watch", skip_all, fields(from))]
pub(super) async fn watch(State(api): State<Api>, headers: HeaderMap, query: RawQuery) -> Result<Response, ApiError> {
    let p = params(query, WATCH_PARAMS)?;
    let filter = EventFilter { kinds: p.kinds("kind")?, node: p.node("node")?, service_name: p.name("name")? };
    let from_param = p.seq("from")?;
    let from = match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().map_err(|_| ParamError::Invalid {
                name: "Last-Event-ID",
                value: String::from_utf8_lossy(v.as_bytes()).chars().take(80).collect(),
                expected: "a sequence number",
            })?;
            params::seq("Last-Event-ID", text)?.saturating_add(1)
        }
        None => from_param.unwrap_or(0),
    };
    tracing::Span::current().record("from", from);
    let permit =
        api.watchers.clone().try_acquire_owned().map_err(|_| ApiError::TooManyWatchers(api.options.watchers_max))?;
    let watch = api.system.watch(filter, from)?;
    let stream = futures_util::stream::unfold(
        Some(Watching { watch, shutdown: api.shutdown.clone(), _permit: permit }),
        |state| async move {
            let mut w = state?;
            let next = tokio::select! {
                _ = w.shutdown.wait_for(|s| *s) => return None,
                next = w.watch.next() => next,
            };
            match next {
                Some(Ok(ev)) => {
                    let event = match serde_json::to_string(&EventJson::from(&ev)) {
                        Ok(data) => Event::default().id(ev.seq.to_string()).data(data),
                        Err(e) => return Some((Ok(failure(&e.to_string())), None)),
                    };
                    Some((Ok::<_, Infallible>(event), Some(w)))
                }
                // The watch cannot go on (a read failed): say why, and end; a client resumes
                // from the last id it got.
                Some(Err(e)) => Some((Ok(failure(&e.to_string())), None)),
                // The node stopped.
                None => None,
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(api.options.keep_alive)).into_response())
}

/// An open watch, with what ends it and the slot it takes.
struct Watching {
    watch: Watch,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

/// The last event of a watch that cannot go on: `event: error`, its data `{"error": ...}`.
fn failure(why: &str) -> Event {
    Event::default().event("error").data(serde_json::json!({ "error": why }).to_string())
}
