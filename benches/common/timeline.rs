//! Shared by `latency_breakdown` and `round_timeline`: a tracing layer that records when the
//! library's own spans of the write path were first entered and closed, with the data dir
//! they ran for (their `path` field) and the events of a proposed batch.
// Each bench includes this module and uses the helpers it needs.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One closed span: its name, the data dir it ran for (if it says), the events of a batch (if
/// it says), first entered and closed.
#[derive(Clone, Debug)]
pub struct Closed {
    pub name: &'static str,
    pub path: Option<String>,
    pub events: Option<u64>,
    /// The node a span names (its `node` field: a node id's short form), if it does.
    pub node: Option<String>,
    pub start: Instant,
    pub end: Instant,
}

/// A span still open: its fields and when it was first entered.
struct Open {
    fields: Fields,
    start: Option<Instant>,
}

#[derive(Default)]
struct Fields {
    path: Option<String>,
    events: Option<u64>,
    node: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "path" => self.path = Some(format!("{value:?}")),
            "node" => self.node = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "events" {
            self.events = Some(value);
        }
    }
}

/// Records every closed span it is given (see [`install`]).
#[derive(Clone, Default)]
pub struct Timeline(pub Arc<Mutex<Vec<Closed>>>);

impl Timeline {
    /// Forgets every span recorded so far.
    pub fn clear(&self) {
        if let Ok(mut v) = self.0.lock() {
            v.clear();
        }
    }

    /// The spans recorded so far, in the order they closed.
    pub fn spans(&self) -> Vec<Closed> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Timeline {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Open { fields, start: None });
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(open) = span.extensions_mut().get_mut::<Open>() {
                open.start.get_or_insert_with(Instant::now);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let end = Instant::now();
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let Some(start) = open.start else { return };
        if let Ok(mut v) = self.0.lock() {
            let Fields { path, events, node } = open.fields;
            v.push(Closed { name: span.name(), path, events, node, start, end });
        }
    }
}

/// Installs, as the process's subscriber, a [`Timeline`] of the spans named in `spans`
/// ((target, name) pairs) and returns it.
pub fn install(spans: &'static [(&'static str, &'static str)]) -> Timeline {
    let timeline = Timeline::default();
    let only = tracing_subscriber::filter::filter_fn(move |m| m.is_span() && spans.contains(&(m.target(), m.name())));
    let subscriber = tracing_subscriber::registry().with(timeline.clone().with_filter(only));
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this harness");
    timeline
}

/// The median of `v` (NaN when empty).
pub fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Microseconds from `a` to `b`, negative when `b` is earlier.
pub fn us(a: Instant, b: Instant) -> f64 {
    if b >= a {
        b.duration_since(a).as_secs_f64() * 1e6
    } else {
        -(a.duration_since(b).as_secs_f64() * 1e6)
    }
}

/// The node (index in `dirs`, the nodes' data dirs) a span ran for.
pub fn node_of(span: &Closed, dirs: &[String]) -> Option<usize> {
    let path = span.path.as_deref()?;
    dirs.iter().position(|d| path.starts_with(d.as_str()))
}

/// The first span named `name` of `node` that starts at or after `after`.
pub fn first<'a>(spans: &'a [Closed], name: &str, node: usize, after: Instant, dirs: &[String]) -> Option<&'a Closed> {
    spans
        .iter()
        .filter(|s| s.name == name && s.start >= after && node_of(s, dirs) == Some(node))
        .min_by_key(|s| s.start)
}

/// The first span named `name` for the node whose id's short form is `node` (its `node` field)
/// that starts at or after `after`; with `entries`, only one that carried entries.
pub fn first_for<'a>(spans: &'a [Closed], name: &str, node: &str, after: Instant, entries: bool) -> Option<&'a Closed> {
    spans
        .iter()
        .filter(|s| {
            s.name == name
                && s.start >= after
                && s.node.as_deref() == Some(node)
                && (!entries || s.events.unwrap_or(0) > 0)
        })
        .min_by_key(|s| s.start)
}

/// The log sync of `node` that makes its `append` durable: the flusher is woken inside the
/// append, so that sync may start before the append's span closes; it ends after it.
pub fn sync_of<'a>(spans: &'a [Closed], append: &Closed, node: usize, dirs: &[String]) -> Option<&'a Closed> {
    spans
        .iter()
        .filter(|s| {
            s.name == "raft_log_sync"
                && s.start >= append.start
                && s.end >= append.end
                && node_of(s, dirs) == Some(node)
        })
        .min_by_key(|s| s.start)
}
