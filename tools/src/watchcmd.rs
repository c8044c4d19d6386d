//! `spore watch --addr`: the committed events that pass a filter, as they commit, read from a
//! running node over the read-only admin protocol (blocking queries; see
//! `mycnet_spores::node::RemoteWatch`). Runs until SIGINT or SIGTERM; a node that restarts or
//! a link that drops is waited for, and the watch resumes where it was, without gaps or
//! duplicates. One line per event (`--json`: one JSON object per line).

use std::time::Duration;

use mycnet_spores::core::event::EventFilter;
use mycnet_spores::http::json::EventJson;
use mycnet_spores::node::RemoteWatch;
use mycnet_spores::NodeId;

use crate::output::{CliError, CliResult, Out};

/// How long to wait before asking again after a failed call.
const RETRY: Duration = Duration::from_millis(500);

/// `spore watch`.
pub(crate) async fn watch(
    addr: &str,
    expected: Option<NodeId>,
    filter: EventFilter,
    from_seq: u64,
    o: &mut Out,
) -> CliResult {
    let mut w = RemoteWatch::new(addr, expected, filter, from_seq);
    if let Some(key) = crate::remote::client_key() {
        w = w.with_key(key);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Io(e.to_string()))?;
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            next = w.next() => next,
        };
        match next {
            Ok(ev) => {
                let body = &ev.event.body;
                if o.json {
                    // The one shape `/v1/events` and `/v1/watch` give too.
                    o.json_line(&EventJson::from(&ev))?;
                } else {
                    let about = body
                        .subject_service()
                        .map(|s| format!("service {s}"))
                        .or_else(|| body.subject_node().map(|n| format!("node {}", n.short())))
                        .unwrap_or_default();
                    o.line(format!("{:>8} {:<22} by {}  {about}", ev.seq, body.kind(), ev.event.author.short()))?;
                }
                o.flush()?;
            }
            Err(e @ mycnet_spores::Error::HistoryNotHeld { .. }) => return Err(CliError::BadData(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, from = w.next_seq(), "watch interrupted; resuming");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
