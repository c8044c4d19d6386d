//! `spore query`: a running node's registries over the read-only admin protocol, a page at a
//! time (`--limit`, `--after`, `--all` following the cursors), or from the most authoritative
//! spore tier that has an answer (`--tiered`, unpaged: at most `PAGE_LIMIT_MAX` items).
//!
//! Text prints a header, a line per item and, when a page follows, a last line
//! `next: <cursor>`; `--json` prints one document `{"items": [...], "next": <cursor or null>}`
//! whose items have the shapes of `/v1/services` and `/v1/nodes` (`schema/http.md`).

use std::time::Duration;

use mycnet_spores::core::projection::{FoundService, NodeFilter, ServiceFilter};
use mycnet_spores::http;
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::wire::query::{Query, QueryAnswer, RegistryAnswer, RegistryQuery};
use mycnet_spores::{NodeId, NodeRecord, ServiceRecord};
use serde_json::Value;

use crate::output::{CliError, CliResult, Out};
use crate::remote::{call, kind_of};

/// What `spore query` asks for.
pub(crate) enum QueryKind {
    /// Nodes, filtered (by name, capability, status, minimum trust).
    Nodes(NodeFilter),
    /// Services, filtered (by name, capability, node, minimum trust; offline nodes' and
    /// critical ones only if asked).
    Services(ServiceFilter),
}

/// Which pages `spore query` reads.
pub(crate) struct Paging {
    /// At most this many items a page (0: the node's default).
    pub(crate) limit: u32,
    /// The cursor to start after, as the user gave it.
    pub(crate) after: Option<String>,
    /// Follow the cursors to the last page.
    pub(crate) all: bool,
}

/// Most pages `--all` reads (10^4 pages of at most 10^4 items: beyond any registry the rules
/// let a network hold); a walk longer than that is a node answering wrongly.
const PAGES_MAX: usize = 10_000;

/// A cursor as `--after` gives it, for this listing: a service id or a node id.
enum Cursor {
    Service(uuid::Uuid),
    Node(NodeId),
}

impl Cursor {
    fn parse(what: &QueryKind, s: &str) -> Result<Cursor, CliError> {
        let bad = |expected: &str| {
            let shown: String = s.chars().take(80).collect();
            CliError::usage(format!("--after: {shown:?} is not a cursor (the `next:` of the page before: {expected})"))
        };
        match what {
            QueryKind::Services(_) => uuid::Uuid::try_parse(s).map(Cursor::Service).map_err(|_| bad("a service id")),
            QueryKind::Nodes(_) => NodeId::from_hex(s).map(Cursor::Node).map_err(|_| bad("a node id")),
        }
    }
}

/// One page as the node answered it: the items in their JSON shape, the text lines, the
/// next cursor.
struct PageOut {
    items: Vec<Value>,
    lines: Vec<String>,
    next: Option<String>,
}

/// `spore query --addr`.
pub(crate) async fn query(
    addr: &str,
    key: Option<&str>,
    what: QueryKind,
    tiered: bool,
    paging: Paging,
    timeout: Duration,
    o: &mut Out,
) -> CliResult {
    if tiered {
        return tiered_query(addr, key, &what, timeout, o).await;
    }
    let mut after = paging.after.as_deref().map(|s| Cursor::parse(&what, s)).transpose()?;
    let (mut items, mut next) = (Vec::new(), None);
    for n in 0..PAGES_MAX {
        let q = match (&what, after.take()) {
            (QueryKind::Services(f), a) => Query::FindPage {
                filter: f.clone(),
                limit: paging.limit,
                after: match a {
                    Some(Cursor::Service(id)) => Some(id),
                    _ => None,
                },
            },
            (QueryKind::Nodes(f), a) => Query::NodesPage {
                filter: f.clone(),
                limit: paging.limit,
                after: match a {
                    Some(Cursor::Node(id)) => Some(id),
                    _ => None,
                },
            },
        };
        let page = page_of(ask(addr, key, q, timeout).await?, addr)?;
        if o.json {
            items.extend(page.items);
        } else {
            if n == 0 {
                o.line(header(&what))?;
            }
            for line in page.lines {
                o.line(line)?;
            }
        }
        next = page.next;
        match (&next, paging.all) {
            (Some(n), true) => after = Some(Cursor::parse(&what, n)?),
            _ => break,
        }
    }
    if o.json {
        return o.json_line(&serde_json::json!({ "items": items, "next": next }));
    }
    if let Some(n) = next {
        o.line(format!("next: {n}"))?;
    }
    Ok(())
}

async fn ask(addr: &str, key: Option<&str>, q: Query, timeout: Duration) -> Result<QueryAnswer, CliError> {
    let (_, resp) = call(addr, key, RpcRequest::Query(q), timeout).await?;
    match resp {
        RpcResponse::Query(Ok(a)) => Ok(a),
        RpcResponse::Query(Err(e)) => Err(CliError::Io(format!("{addr} could not answer: {e:?}"))),
        other => Err(CliError::Io(format!("{addr} answered with {}", kind_of(&other)))),
    }
}

fn page_of(answer: QueryAnswer, addr: &str) -> Result<PageOut, CliError> {
    let json = |v: serde_json::Result<Value>| v.map_err(|e| CliError::Io(e.to_string()));
    Ok(match answer {
        QueryAnswer::FoundPage { items, next } => PageOut {
            // The service records with their node's status and trust and their health: the
            // one shape `/v1/services` gives too.
            items: items
                .iter()
                .map(|f| json(serde_json::to_value(http::json::ServiceJson::from(f))))
                .collect::<Result<_, _>>()?,
            lines: items.iter().map(found_line).collect(),
            next: next.map(|id| id.to_string()),
        },
        QueryAnswer::NodesPage { items, next } => PageOut {
            items: items.iter().map(|n| json(serde_json::to_value(n))).collect::<Result<_, _>>()?,
            lines: items.iter().map(node_line).collect(),
            next: next.map(|id| id.to_hex()),
        },
        _ => return Err(CliError::Io(format!("{addr} answered a different question"))),
    })
}

fn header(what: &QueryKind) -> String {
    match what {
        QueryKind::Nodes(_) => format!(
            "{:<12} {:<20} {:<11} {:<8} {:>5}  {:<24} {}",
            "key", "name", "role", "status", "trust", "addresses", "capabilities"
        ),
        QueryKind::Services(_) => format!(
            "{:<36} {:<14} {:<12} {:<8} {:<8} {:>5}  {:<30} {}",
            "id", "name", "node", "status", "health", "trust", "endpoints", "capabilities"
        ),
    }
}

fn node_line(n: &NodeRecord) -> String {
    format!(
        "{:<12} {:<20} {:<11} {:<8} {:>5}  {:<24} {}",
        n.node.short(),
        n.name,
        n.role.to_string(),
        n.status.to_string(),
        n.trust.to_string(),
        n.addresses.join(","),
        n.capabilities.join(",")
    )
}

fn found_line(f: &FoundService) -> String {
    let s = &f.record.service;
    let status = f.node_status.map_or_else(|| "unknown".to_string(), |st| st.to_string());
    let health = if f.critical.is_some() { "critical" } else { "passing" };
    format!(
        "{:<36} {:<14} {:<12} {:<8} {:<8} {:>5}  {:<30} {}",
        s.service_id,
        s.name,
        s.node.short(),
        status,
        health,
        f.node_trust.to_string(),
        endpoints(&f.record),
        s.capabilities.join(",")
    )
}

fn endpoints(r: &ServiceRecord) -> String {
    let eps: Vec<String> = r.service.endpoints.iter().map(|e| format!("{}://{}", e.protocol, e.address)).collect();
    eps.join(" ")
}

/// `spore query --tiered`: the answer of the most authoritative tier that has one, and which.
async fn tiered_query(addr: &str, key: Option<&str>, what: &QueryKind, timeout: Duration, o: &mut Out) -> CliResult {
    // A tiered answer comes from one tier's registries as they were: by name or capability.
    let q = match what {
        QueryKind::Nodes(f) if f.status == Some(mycnet_spores::NodeStatus::Offline) => RegistryQuery::OfflineNodes,
        QueryKind::Nodes(_) => RegistryQuery::Nodes,
        QueryKind::Services(f) => match (&f.name, &f.capability) {
            (Some(n), None) => RegistryQuery::ServicesByName(n.clone()),
            (None, Some(c)) => RegistryQuery::ServicesByCapability(c.clone()),
            (None, None) => RegistryQuery::Services,
            _ => return Err(CliError::usage("with --tiered, --name and --capability exclude each other")),
        },
    };
    let t = match ask(addr, key, Query::Tiered(q), timeout).await? {
        QueryAnswer::Tiered(None) if o.json => {
            return o.json_line(&serde_json::json!({ "tier": null, "at": null, "answer": [] }))
        }
        QueryAnswer::Tiered(None) => return o.line("no tier has an answer"),
        QueryAnswer::Tiered(Some(t)) => t,
        _ => return Err(CliError::Io(format!("{addr} answered a different question"))),
    };
    if o.json {
        let inner = match t.value {
            RegistryAnswer::Nodes(n) => serde_json::to_value(n),
            RegistryAnswer::Services(s) => serde_json::to_value(s),
        }
        .map_err(|e| CliError::Io(e.to_string()))?;
        return o.json_line(&serde_json::json!({ "tier": t.tier, "at": t.at, "stale": t.stale, "answer": inner }));
    }
    let stale = if t.stale { " (may be stale: this node cannot confirm it is current)" } else { "" };
    o.line(format!("answered from the {:?} tier, as of seq {}{stale}", t.tier, t.at.seq))?;
    match t.value {
        RegistryAnswer::Nodes(nodes) => {
            o.line(header(what))?;
            for n in &nodes {
                o.line(node_line(n))?;
            }
        }
        RegistryAnswer::Services(services) => {
            o.line(format!("{:<36} {:<14} {:<12} {:<30} {}", "id", "name", "node", "endpoints", "capabilities"))?;
            for s in &services {
                o.line(format!(
                    "{:<36} {:<14} {:<12} {:<30} {}",
                    s.service.service_id,
                    s.service.name,
                    s.service.node.short(),
                    endpoints(s),
                    s.service.capabilities.join(",")
                ))?;
            }
        }
    }
    Ok(())
}
