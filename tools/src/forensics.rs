//! Forensics: `diff` (fork point, each branch's events after it, per-entity differences),
//! `blame` (every event that touched a node or service) and `state` of a seed file.
//!
//! Every source is a data dir, a ledger dir or a seed file (`mycnet_spores::Branch`). Exit
//! codes: 0 when the question was answered (two branches that diverged are an answer, not an
//! error), 1 for bad data (damage, a seed that does not verify, two different networks), 2
//! for usage and I/O (a missing path, a question a seed without events cannot answer, a
//! target that is not there).

use std::path::{Path, PathBuf};

use mycnet_spores::forensics::{
    self, BlameOptions, BlameReport, BlameTarget, BranchEvents, BranchInfo, EntityDiff, ForkPoint, Relation, Side,
    SourceKind, Touch, Verdict,
};
use mycnet_spores::store::inspect::resolve_ledger_dir;
use mycnet_spores::{Branch, ForensicsError, NodeRecord, ServiceRecord, StopAt};
use serde_json::{json, Value};

use crate::inspect::{event_json, print_registries, summary, At};
use crate::output::{progress_bar, CliError, CliResult, Out};

/// Maps a forensic error to an exit code: bad data 1, the rest 2.
pub(crate) fn cli_err(e: ForensicsError) -> CliError {
    if e.is_bad_data() {
        CliError::BadData(e.to_string())
    } else if matches!(
        e,
        ForensicsError::Io { .. }
            | ForensicsError::NotASource(_)
            | ForensicsError::Ledger(_)
            | ForensicsError::Seed { .. }
    ) {
        CliError::Io(e.to_string())
    } else {
        CliError::Usage(e.to_string())
    }
}

pub(crate) fn open(path: &Path) -> Result<Branch, CliError> {
    Branch::open(path).map_err(cli_err)
}

/// A path argument that must exist (a directory or a seed file).
pub(crate) fn existing_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{s} does not exist"))
    }
}

fn source_text(info: &BranchInfo) -> String {
    let kind = match &info.source {
        SourceKind::Ledger => "ledger".to_string(),
        SourceKind::Seed { includes_events: true } => "seed with events".to_string(),
        SourceKind::Seed { includes_events: false } => "seed without events".to_string(),
        SourceKind::ArchivedLedger { archives } => format!("ledger with {} archives", archives.len()),
    };
    format!(
        "{kind} {}  head {} {}  {}  (network {}, {})",
        info.path.display(),
        info.head.seq,
        info.head.hash.short(),
        info.head_time,
        info.network_name,
        info.fingerprint.short()
    )
}

fn branch_json(info: &BranchInfo) -> Value {
    let (kind, includes_events, archives) = match &info.source {
        SourceKind::Ledger => ("ledger", true, Vec::new()),
        SourceKind::Seed { includes_events } => ("seed", *includes_events, Vec::new()),
        SourceKind::ArchivedLedger { archives } => ("ledger", true, archives.clone()),
    };
    json!({
        "path": info.path, "source": kind, "includes_events": includes_events, "archives": archives,
        "fingerprint": info.fingerprint, "network_name": info.network_name,
        "head": { "seq": info.head.seq, "hash": info.head.hash, "timestamp": info.head_time },
    })
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::A => "a",
        Side::B => "b",
    }
}

fn fork_json(fork: &ForkPoint) -> Value {
    let point = |p: Option<mycnet_spores::ChainPoint>| p.map(|p| json!({"seq": p.seq, "hash": p.hash}));
    match &fork.relation {
        Relation::Identical { head } => {
            json!({"relation": "identical", "last_common": point(Some(*head)), "first_diverging_seq": null, "ahead": null})
        }
        Relation::Prefix { ahead, common } => {
            json!({"relation": "prefix", "last_common": point(Some(*common)), "first_diverging_seq": null, "ahead": side_name(*ahead)})
        }
        Relation::Diverged { last_common, first_diverging_seq } => {
            json!({"relation": "diverged", "last_common": point(*last_common), "first_diverging_seq": first_diverging_seq, "ahead": null})
        }
        Relation::Unresolved { last_common_known, diverged_at_or_before, reason } => json!({
            "relation": "unresolved", "last_common": point(*last_common_known), "first_diverging_seq": null,
            "diverged_at_or_before": diverged_at_or_before, "ahead": null, "reason": reason,
        }),
    }
}

fn fork_text(fork: &ForkPoint) -> String {
    let name = |s: Side| if s == Side::A { "A" } else { "B" };
    match &fork.relation {
        Relation::Identical { head } => format!("identical: both end at seq {} {}", head.seq, head.hash.short()),
        Relation::Prefix { ahead, common } => {
            let (ahead_info, behind) = if *ahead == Side::A { (&fork.a, Side::B) } else { (&fork.b, Side::A) };
            format!(
                "{} is a prefix of {}: they share seq 0..={} ({}), {} is {} events ahead",
                name(behind),
                name(*ahead),
                common.seq,
                common.hash.short(),
                name(*ahead),
                ahead_info.head.seq - common.seq
            )
        }
        Relation::Diverged { last_common: Some(c), first_diverging_seq } => {
            format!("diverged after seq {} ({}): first diverging seq {first_diverging_seq}", c.seq, c.hash.short())
        }
        Relation::Diverged { last_common: None, first_diverging_seq } => {
            format!("diverged from genesis: first diverging seq {first_diverging_seq}")
        }
        Relation::Unresolved { last_common_known, diverged_at_or_before, reason } => format!(
            "unresolved: last known common seq {}, differ at or before seq {}: {reason}",
            last_common_known.map_or("-".into(), |p| p.seq.to_string()),
            diverged_at_or_before.map_or("-".into(), |s| s.to_string())
        ),
    }
}

fn events_json(ev: &BranchEvents) -> Value {
    json!({
        "after_seq": ev.after_seq, "total": ev.total, "available": ev.available, "more": ev.more,
        "events": ev.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

fn event_line(e: &mycnet_spores::ChainedEvent) -> String {
    format!(
        "    {:>8}  {}  {}  {:<12} {:<21} {}",
        e.seq,
        e.hash.short(),
        e.event.timestamp,
        e.event.author.short(),
        e.event.body.kind(),
        summary(&e.event.body)
    )
}

fn print_events(label: &str, ev: &BranchEvents, o: &mut Out) -> CliResult {
    o.line(format!("  {label} ({}):", ev.total))?;
    if !ev.available && ev.total > 0 {
        return o.line("    (a seed without events: only their count is known)");
    }
    for e in &ev.events {
        o.line(event_line(e))?;
    }
    if ev.more > 0 {
        o.line(format!("    … and {} more", ev.more))?;
    }
    Ok(())
}

fn node_field(n: &NodeRecord, field: &str) -> String {
    match field {
        "name" => n.name.to_string(),
        "role" => n.role.to_string(),
        "status" => n.status.to_string(),
        "trust" => n.trust.to_string(),
        "capabilities" => format!("[{}]", n.capabilities.join(",")),
        "addresses" => format!("[{}]", n.addresses.join(",")),
        _ => String::new(),
    }
}

fn service_field(s: &ServiceRecord, field: &str) -> String {
    let a = &s.service;
    match field {
        "name" => a.name.to_string(),
        "node" => a.node.short(),
        "capabilities" => format!("[{}]", a.capabilities.join(",")),
        "endpoints" => format!(
            "[{}]",
            a.endpoints.iter().map(|e| format!("{}://{}", e.protocol, e.address)).collect::<Vec<_>>().join(" ")
        ),
        "metadata" => format!("[{}]", a.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
        "registered_by" => s.registered_by.short(),
        _ => String::new(),
    }
}

fn node_line(n: &NodeRecord) -> String {
    format!("{} {:<16} {:<11} {:<8} {}", n.node.short(), n.name, n.role.to_string(), n.status.to_string(), n.trust)
}

fn service_line(s: &ServiceRecord) -> String {
    format!(
        "{} {:<14} on {} {}",
        s.service.service_id,
        s.service.name,
        s.service.node.short(),
        service_field(s, "endpoints")
    )
}

fn print_entities(d: &EntityDiff, o: &mut Out) -> CliResult {
    if d.is_empty() {
        return o.line("registries: no differences");
    }
    o.line(format!(
        "nodes: {} only in A, {} only in B, {} changed",
        d.nodes_only_in_a.len(),
        d.nodes_only_in_b.len(),
        d.nodes_changed.len()
    ))?;
    for n in &d.nodes_only_in_a {
        o.line(format!("  only in A  {}", node_line(n)))?;
    }
    for n in &d.nodes_only_in_b {
        o.line(format!("  only in B  {}", node_line(n)))?;
    }
    for c in &d.nodes_changed {
        o.line(format!("  changed    {} {}", c.node.short(), c.a.name))?;
        for f in &c.fields {
            o.line(format!("               {f}: A {}  B {}", node_field(&c.a, f), node_field(&c.b, f)))?;
        }
    }
    o.line(format!(
        "services: {} only in A, {} only in B, {} changed",
        d.services_only_in_a.len(),
        d.services_only_in_b.len(),
        d.services_changed.len()
    ))?;
    for s in &d.services_only_in_a {
        o.line(format!("  only in A  {}", service_line(s)))?;
    }
    for s in &d.services_only_in_b {
        o.line(format!("  only in B  {}", service_line(s)))?;
    }
    for c in &d.services_changed {
        o.line(format!("  changed    {} {}", c.service_id, c.a.service.name))?;
        for f in &c.fields {
            o.line(format!("               {f}: A {}  B {}", service_field(&c.a, f), service_field(&c.b, f)))?;
        }
    }
    Ok(())
}

fn entities_json(d: &EntityDiff) -> Value {
    json!({
        "nodes": { "only_in_a": d.nodes_only_in_a, "only_in_b": d.nodes_only_in_b, "changed": d.nodes_changed },
        "services": { "only_in_a": d.services_only_in_a, "only_in_b": d.services_only_in_b, "changed": d.services_changed },
    })
}

/// `spore diff A B`: the fork point, each branch's events after it (at most `limit` each),
/// and the per-entity differences of the registries at both heads.
pub(crate) fn diff(a_path: &Path, b_path: &Path, limit: usize, o: &mut Out) -> CliResult {
    // A ledger can be opened once at a time (fjall locks it): the same source twice is a
    // mistake worth naming, not a storage error.
    let same = |p: &Path| std::fs::canonicalize(if p.is_dir() { resolve_ledger_dir(p) } else { p.to_path_buf() }).ok();
    if same(a_path).is_some() && same(a_path) == same(b_path) {
        return Err(CliError::usage(format!("{} and {} are the same source", a_path.display(), b_path.display())));
    }
    let a = open(a_path)?;
    let b = open(b_path)?;
    let fork = forensics::fork_point(&a, &b).map_err(cli_err)?;
    let after = fork.relation.last_common_seq();
    let a_events = forensics::events_after(&a, after, limit).map_err(cli_err)?;
    let b_events = forensics::events_after(&b, after, limit).map_err(cli_err)?;
    let entities = if matches!(fork.relation, Relation::Identical { .. }) {
        EntityDiff::default()
    } else {
        // Both heads' registries: a shared ledger prefix is replayed once (a seed's state is
        // at hand).
        let bar = progress_bar(o, forensics::head_projections_work(&a, &b, &fork.relation), "replaying");
        let (pa, pb) =
            forensics::head_projections(&a, &b, &fork.relation, &|n| bar.set_position(n)).map_err(cli_err)?;
        bar.finish_and_clear();
        forensics::entity_diff(&pa, &pb)
    };
    let verdict = forensics::verdict(&a, &b, &fork.relation).map_err(cli_err)?;
    if o.json {
        return o.json_line(&json!({
            "a": branch_json(&fork.a), "b": branch_json(&fork.b),
            "fork": fork_json(&fork),
            "events": { "a": events_json(&a_events), "b": events_json(&b_events) },
            "entities": entities_json(&entities),
            "verdict": verdict,
        }));
    }
    o.line(format!("A: {}", source_text(&fork.a)))?;
    o.line(format!("B: {}", source_text(&fork.b)))?;
    o.line(format!("fork: {}", fork_text(&fork)))?;
    if !matches!(fork.relation, Relation::Identical { .. }) {
        match after {
            Some(s) => o.line(format!("events after seq {s}:"))?,
            None => o.line("events from genesis:")?,
        }
        print_events("A", &a_events, o)?;
        print_events("B", &b_events, o)?;
    }
    print_entities(&entities, o)?;
    o.line(format!("verdict: {}", verdict_text(&verdict)))
}

/// One line on what a split-brain resolution would keep.
fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Wins { winner, decided_by, a, b } => {
            let side = |s: &mycnet_spores::core::authority::BranchSummary| {
                format!("{:?} tier, {} active nodes, {} events", s.tier, s.active_nodes, s.events)
            };
            format!(
                "{} would be kept, by {decided_by} (A: {}; B: {})",
                side_name(*winner).to_uppercase(),
                side(a),
                side(b)
            )
        }
        Verdict::CannotWin { refused } => refused
            .iter()
            .map(|r| format!("{} cannot win: {}", side_name(r.side).to_uppercase(), r.reason))
            .collect::<Vec<_>>()
            .join("; "),
        Verdict::Undecided { reason } => format!("nothing decided ({reason})"),
    }
}

fn touch_text(t: &Touch) -> String {
    match t {
        Touch::Subject => "subject".into(),
        // The service id is in the event's summary next to it.
        Touch::ServiceOfNodeRegistered { .. } => "its service registered".into(),
        Touch::ServiceOfNodeDeregistered { .. } => "its service deregistered".into(),
        Touch::RemovedWithNode { node } => format!("removed with its node {}", node.short()),
        Touch::Authored => "signed by it".into(),
    }
}

fn target_text(r: &BlameReport) -> String {
    match &r.target {
        BlameTarget::Node { node } => format!("node {node}"),
        BlameTarget::Service { service_id } => format!("service {service_id}"),
        BlameTarget::ServiceName { name } => {
            format!("services named {name:?} ({} ids)", r.services.len())
        }
    }
}

/// `spore blame SOURCE TARGET`: every event that touched a node or service, who signed it
/// and when.
pub(crate) fn blame(source: &Path, target: &str, options: BlameOptions, o: &mut Out) -> CliResult {
    let branch = open(source)?;
    let total = if branch.has_events() { branch.head().seq + 1 } else { 0 };
    let target = match BlameTarget::parse_exact(target) {
        Some(t) => t,
        None => {
            let bar = progress_bar(o, if branch.info().source == SourceKind::Ledger { total } else { 0 }, "resolving");
            let t = forensics::resolve_target(&branch, target, &|n| bar.set_position(n)).map_err(cli_err)?;
            bar.finish_and_clear();
            t
        }
    };
    let bar = progress_bar(o, total, "searching");
    let report = forensics::blame(&branch, &target, options, &|n| bar.set_position(n)).map_err(cli_err)?;
    bar.finish_and_clear();
    if o.json {
        return o.json_line(&json!({
            "source": branch_json(&report.source), "target": report.target, "services": report.services,
            "total": report.total, "omitted": report.omitted, "entries": report.entries,
        }));
    }
    o.line(format!("{} in {}", target_text(&report), source_text(&report.source)))?;
    o.line(format!("{} events touched it", report.total))?;
    if report.omitted > 0 {
        o.line(format!("  … {} earlier ones omitted (raise --limit)", report.omitted))?;
    }
    o.line(format!(
        "  {:>8}  {:<12}  {:<27}  {:<12} {:<21} {:<30} {}",
        "seq", "hash", "time", "author", "kind", "how", "what"
    ))?;
    for e in &report.entries {
        let removed = if e.services_removed.is_empty() {
            String::new()
        } else {
            format!(" (removed {} services)", e.services_removed.len())
        };
        o.line(format!(
            "  {:>8}  {}  {}  {:<12} {:<21} {:<30} {}{removed}",
            e.seq,
            e.hash.short(),
            e.timestamp,
            e.author.short(),
            e.kind,
            touch_text(&e.touch),
            summary(&e.body)
        ))?;
    }
    Ok(())
}

/// `spore state SEED_FILE`: the registries of a seed, at its head from its state, before its
/// head by replaying its events (if it carries them).
pub(crate) fn state_of_seed(file: &Path, at: At, o: &mut Out) -> CliResult {
    let branch = open(file)?;
    let stop = match at {
        At::Head => StopAt::End,
        At::Seq(s) => StopAt::Seq(s),
        At::Time(t) => StopAt::Time(t),
    };
    let p = branch.projection(stop, &|_| {}).map_err(cli_err)?;
    print_registries(&p, o)
}
