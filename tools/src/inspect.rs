//! The log inspector: `generate`, `verify`, `dump`, `stats`, `state`, `replay`.
//!
//! Every command reads a ledger directory (or a node's data dir, whose `ledger/` it uses)
//! without changing it, except `generate`, which writes a new one.

use std::path::{Path, PathBuf};

use mycnet_spores::core::limits::{APPEND_BATCH_MAX, REPLAY_CHUNK_EVENTS};
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::{
    ChainedEvent, EventBody, Ledger, LedgerConfig, LedgerError, LedgerReader, Projection, ReplayOptions, StopAt,
    Timestamp,
};
use serde_json::json;

use crate::output::{progress_bar, CliError, CliResult, Out};

/// What `spore generate` writes.
pub(crate) enum Size {
    /// A history of this many events of every kind.
    Events(u64),
    /// A registry: every node joins, then this many services are registered.
    Registry {
        /// How many services.
        services: usize,
    },
}

/// `spore generate`.
pub(crate) fn generate(out_dir: &Path, size: Size, nodes: usize, seed: u64, o: &mut Out) -> CliResult {
    let (events, registry) = match size {
        Size::Events(0) => return Err(CliError::usage("--events must be at least 1")),
        Size::Events(n) => (n, None),
        // Genesis, the other joins, the registrations; the checkpoints between come on top.
        Size::Registry { services } => (nodes as u64 + services as u64, Some(services)),
    };
    if nodes == 0 {
        return Err(CliError::usage("--nodes must be at least 1"));
    }
    if out_dir.exists() && std::fs::read_dir(out_dir).map_err(|e| CliError::io(out_dir, e))?.next().is_some() {
        return Err(CliError::usage(format!("{} exists and is not empty; choose a new directory", out_dir.display())));
    }
    let started = std::time::Instant::now();
    let config = LedgerConfig { create: true, checkpoint_interval: 65_536, durable: false, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(out_dir, config).map_err(CliError::ledger)?;
    let mut synth = Synth::new(SynthConfig {
        seed,
        nodes,
        voters: nodes.clamp(1, 3),
        registry: registry.is_some(),
        ..Default::default()
    });
    let bar = progress_bar(o, events, "generating");
    let mut written = 0u64;
    let short = |synth: &Synth, written: u64| match registry {
        Some(services) => {
            let p = synth.projection().state();
            nodes.saturating_sub(p.nodes.len()) as u64 + services.saturating_sub(p.services.len()) as u64
        }
        None => events.saturating_sub(written),
    };
    while short(&synth, written) > 0 {
        // In a registry, every chunk after the first starts with a checkpoint event: room for
        // it too (a history counts it as one of its events).
        let want = (short(&synth, written) + u64::from(registry.is_some() && written > 0)) as usize;
        let want = want.min(APPEND_BATCH_MAX / 2);
        let chunk = synth.next_chunk(want);
        if chunk.is_empty() {
            return Err(CliError::Io(format!("the generator stalled after {written} events")));
        }
        let n = chunk.len() as u64;
        for outcome in ledger.append(chunk).map_err(CliError::ledger)? {
            if let Err(r) = outcome {
                return Err(CliError::Io(format!("the generator produced an invalid event ({r}); this is a bug")));
            }
        }
        written += n;
        bar.set_position(written.min(events));
    }
    ledger.write_checkpoint().map_err(CliError::ledger)?;
    ledger.sync().map_err(CliError::ledger)?;
    bar.finish_and_clear();
    let head = ledger.head().ok_or_else(|| CliError::Io("no head after generating".into()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let registered = ledger.projection().state().services.len();
    if o.json {
        o.json_line(&json!({
            "dir": out_dir, "events": written, "nodes": nodes, "seed": seed, "services": registered,
            "head": { "seq": head.seq, "hash": head.hash },
            "fingerprint": ledger.fingerprint(), "elapsed_secs": elapsed,
        }))?;
    } else {
        o.line(format!(
            "wrote {written} events of a {nodes}-node network with {registered} services (seed {seed}) to {}",
            out_dir.display()
        ))?;
        o.line(format!("head {} {}  in {elapsed:.1} s", head.seq, head.hash))?;
    }
    Ok(())
}

fn open(dir: &Path) -> Result<LedgerReader, CliError> {
    LedgerReader::open(dir).map_err(CliError::ledger)
}

/// `spore verify`: exit 1 when any record, link or signature is bad.
pub(crate) fn verify(dir: &Path, o: &mut Out) -> CliResult {
    let reader = open(dir)?;
    let total = reader.recorded_head().map_err(CliError::ledger)?.map_or(0, |h| h.0 + 1);
    let bar = progress_bar(o, total, "verifying");
    let report = reader.verify(&|n| bar.set_position(n)).map_err(CliError::ledger)?;
    bar.finish_and_clear();
    if o.json {
        o.json_line(&json!({
            "ok": report.is_ok(),
            "path": report.path,
            "events_verified": report.events_verified,
            "signatures_verified": report.signatures_verified,
            "head": report.recorded_head.map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
            "fingerprint": report.fingerprint,
            "first_error": report.first_error.as_ref().map(|(seq, c)| json!({"seq": seq, "reason": c.to_string(), "detail": c})),
            "history_from": report.history_from,
            "base": report.base.map(|p| json!({"seq": p.seq, "hash": p.hash})),
            "base_attested": report.base_attested,
            "caches_checked": report.caches_checked,
            "elapsed_secs": report.elapsed_secs,
        }))?;
    } else {
        match &report.first_error {
            None => {
                let head = report.recorded_head.map_or("empty".to_string(), |(s, h)| format!("{s} {h}"));
                o.line(format!(
                    "OK: {} events, {} signatures verified in {:.2} s; head {head}",
                    report.events_verified, report.signatures_verified, report.elapsed_secs
                ))?;
                if !report.caches_checked.is_empty() {
                    o.line(format!("stored caches match the replay: {}", report.caches_checked.join(", ")))?;
                }
                if let Some(base) = report.base {
                    o.line(format!(
                        "history held from seq {} (loaded from a state-only seed at {} {}; the rest is backfilled by gossip): events below the seed's head checked back from its hash, the rules from its state",
                        report.history_from, base.seq, base.hash
                    ))?;
                    o.line(if report.base_attested == Some(true) {
                        format!("the state at seq {} is the one the chain attests (state checkpoint at seq {})", base.seq, base.seq + 1)
                    } else {
                        format!("NOT proven: the state at seq {} rests on the seed's signers alone (no state checkpoint in the chain attests it)", base.seq)
                    })?;
                }
            }
            Some((seq, c)) => {
                o.line(format!("DAMAGED at seq {seq}: {c}"))?;
                o.line(format!("{} events before it verified", report.events_verified))?;
            }
        }
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::Reported)
    }
}

/// A one-line human summary of an event.
pub(crate) fn summary(body: &EventBody) -> String {
    match body {
        EventBody::Genesis { network, founder } => {
            format!("network {:?} founded by {}", network.network_name, founder.name)
        }
        EventBody::NodeJoined(n) => format!("{} ({}) joined as {}", n.name, n.node.short(), n.role),
        EventBody::NodeUpdated { node, name, role } => {
            format!("{} updated: name {name:?}, role {role:?}", node.short())
        }
        EventBody::NodeLeft { node, reason } => format!("{} left: {reason}", node.short()),
        EventBody::CapabilitiesChanged { node, capabilities } => {
            format!("{} capabilities [{}]", node.short(), capabilities.join(","))
        }
        EventBody::AddressesChanged { node, addresses } => {
            format!("{} addresses [{}]", node.short(), addresses.join(","))
        }
        EventBody::TrustScoreChanged { node, score, reason } => format!("{} trust {score}: {reason}", node.short()),
        EventBody::ServiceRegistered(s) => format!("service {} {} on {}", s.name, s.service_id, s.node.short()),
        EventBody::ServiceDeregistered { service_id, reason } => format!("service {service_id} deregistered: {reason}"),
        EventBody::NodeWentOffline { node, last_seen } => format!("{} offline (last seen {last_seen})", node.short()),
        EventBody::NodeBackOnline { node } => format!("{} back online", node.short()),
        EventBody::ServiceHealthChanged { service_id, passing, reason } => {
            format!("service {service_id} {}: {reason}", if *passing { "passing" } else { "critical" })
        }
        EventBody::Checkpoint { head_seq, head_hash } => format!("checkpoint of {head_seq} {}", head_hash.short()),
        EventBody::StateCheckpoint { head_seq, head_hash, state_digest } => {
            format!("checkpoint of {head_seq} {}, state {}", head_hash.short(), state_digest.short())
        }
        EventBody::SplitBrainResolved(r) => format!(
            "split-brain at {} resolved by {}: branch up to {} {} folded in ({} adopted, {} conflicts)",
            r.fork_seq,
            r.decided_by,
            r.loser_head_seq,
            r.loser_head.short(),
            r.adopted,
            r.conflicts
        ),
    }
}

/// One event as JSON (the `spore dump --json` line shape).
pub(crate) fn event_json(e: &ChainedEvent) -> serde_json::Value {
    json!({
        "seq": e.seq, "hash": e.hash, "prev_hash": e.prev_hash,
        "timestamp": e.event.timestamp, "author": e.event.author, "kind": e.event.body.kind(),
        "schema_version": e.event.schema_version, "body": e.event.body, "signature": e.event.signature,
    })
}

/// `spore dump`: events `from..=to` (JSON Lines with `--json`).
pub(crate) fn dump(dir: &Path, from: u64, to: Option<u64>, o: &mut Out) -> CliResult {
    let reader = open(dir)?;
    let Some((head, _)) = reader.recorded_head().map_err(CliError::ledger)? else {
        return Ok(());
    };
    let to = to.unwrap_or(head).min(head);
    let held = reader.history_from();
    let from = if from < held {
        eprintln!("spore: the ledger holds its history from seq {held} (loaded from a state-only seed, still backfilling); dumping from there");
        if held > to {
            return Ok(());
        }
        held
    } else {
        from
    };
    if from > to {
        return Err(CliError::usage(format!("--from {from} is after --to {to} (head is {head})")));
    }
    let mut at = from;
    while at <= to {
        let end = (at + REPLAY_CHUNK_EVENTS as u64 - 1).min(to);
        let page = match reader.range(at, end) {
            Ok(p) => p,
            Err(LedgerError::Corrupt { seq, corruption, .. }) => {
                o.flush()?;
                eprintln!("spore: ledger damaged at seq {seq}: {corruption}");
                return Err(CliError::Reported);
            }
            Err(e) => return Err(CliError::ledger(e)),
        };
        if page.is_empty() {
            break;
        }
        // Nothing is printed from a record whose signature fails: the dump stops there.
        if let Some(bad) = mycnet_spores::store::ledger::verify_signatures(&page).iter().position(|ok| !ok) {
            let e = &page[bad];
            o.flush()?;
            eprintln!("spore: ledger damaged at seq {}: bad signature by {}", e.seq, e.event.author);
            return Err(CliError::Reported);
        }
        for e in &page {
            if o.json {
                o.json_line(&event_json(e))?;
            } else {
                o.line(format!(
                    "{:>8}  {}  {}  {:<12} {:<21} {}",
                    e.seq,
                    e.hash.short(),
                    e.event.timestamp,
                    e.event.author.short(),
                    e.event.body.kind(),
                    summary(&e.event.body)
                ))?;
            }
        }
        at = end + 1;
    }
    Ok(())
}

/// `spore stats`.
pub(crate) fn stats(dir: &Path, o: &mut Out) -> CliResult {
    let reader = open(dir)?;
    let total = reader.recorded_head().map_err(CliError::ledger)?.map_or(0, |h| h.0 + 1);
    let bar = progress_bar(o, total, "reading");
    let st = reader.stats(&|n| bar.set_position(n)).map_err(corrupt_is_bad_data)?;
    bar.finish_and_clear();
    if o.json {
        return o.json_line(&st);
    }
    o.line(format!(
        "network      {} ({})",
        st.network_name.as_deref().unwrap_or("-"),
        st.fingerprint.map_or("-".into(), |f| f.to_hex())
    ))?;
    o.line(format!("events       {}", st.events))?;
    if st.history_from > 0 {
        o.line(format!(
            "history      held from seq {} (loaded from a state-only seed; the rest is backfilled by gossip)",
            st.history_from
        ))?;
    }
    o.line(format!("head         {}", st.head.map_or("-".into(), |(s, h)| format!("{s} {h}"))))?;
    o.line(format!(
        "time span    {} .. {}",
        st.first_time.map_or("-".into(), |t| t.to_string()),
        st.last_time.map_or("-".into(), |t| t.to_string())
    ))?;
    o.line(format!("authors      {}", st.authors))?;
    o.line(format!("nodes        {} ({} active, {} offline)", st.nodes, st.active_nodes, st.offline_nodes))?;
    o.line(format!("services     {}", st.services))?;
    o.line(format!("record bytes {}  (disk {})", st.record_bytes, st.disk_bytes))?;
    o.line("by kind:")?;
    for (k, n) in &st.by_kind {
        o.line(format!("  {k:<22} {n}"))?;
    }
    Ok(())
}

fn corrupt_is_bad_data(e: LedgerError) -> CliError {
    match e {
        LedgerError::Corrupt { seq, corruption, .. } => {
            eprintln!("spore: ledger damaged at seq {seq}: {corruption}");
            CliError::Reported
        }
        e => CliError::ledger(e),
    }
}

/// Where `spore state` stops.
pub(crate) enum At {
    /// The head.
    Head,
    /// After this sequence number.
    Seq(u64),
    /// The last event at or before this time.
    Time(Timestamp),
}

/// `spore state`: the registries as of a point.
pub(crate) fn state(dir: &Path, at: At, o: &mut Out) -> CliResult {
    let reader = open(dir)?;
    let stop = match at {
        At::Head => StopAt::End,
        At::Seq(s) => StopAt::Seq(s),
        At::Time(t) => StopAt::Time(t),
    };
    let head = reader.recorded_head().map_err(CliError::ledger)?;
    if let (At::Seq(s), head_seq) = (&at, head.map(|h| h.0)) {
        if head_seq.is_none_or(|h| *s > h) {
            let held = head_seq.map_or("the ledger is empty".to_string(), |h| format!("the head is seq {h}"));
            return Err(CliError::usage(format!("--at-seq {s} is past the head: {held}")));
        }
    }
    let total = head.map_or(0, |h| h.0 + 1);
    let bar = progress_bar(o, total, "auditing");
    let p = if reader.archives().is_empty() {
        reader.replay(&ReplayOptions { audit: true, stop }, &|n| bar.set_position(n)).map_err(corrupt_is_bad_data)?.0
    } else {
        // A pruned ledger: read with its archives as one history.
        drop(reader);
        crate::forensics::open(dir)?.projection(stop, &|n| bar.set_position(n)).map_err(crate::forensics::cli_err)?
    };
    bar.finish_and_clear();
    print_registries(&p, o)
}

/// Prints the node and service registries of `p`.
pub(crate) fn print_registries(p: &Projection, o: &mut Out) -> CliResult {
    if o.json {
        let nodes: Vec<_> = p.nodes().collect();
        let services: Vec<_> = p.services().collect();
        return o.json_line(&json!({
            "network": p.network(), "fingerprint": p.fingerprint(),
            "head": p.head().map(|h| json!({"seq": h.seq, "hash": h.hash, "timestamp": h.timestamp})),
            "nodes": nodes, "services": services,
        }));
    }
    match p.head() {
        None => return o.line("empty ledger (no events up to that point)"),
        Some(h) => o.line(format!("as of seq {} ({}), {}", h.seq, h.hash.short(), h.timestamp))?,
    }
    o.line(format!("\nnodes ({}):", p.nodes().count()))?;
    o.line(format!(
        "  {:<12} {:<20} {:<11} {:<8} {:>5}  {}",
        "key", "name", "role", "status", "trust", "capabilities"
    ))?;
    for n in p.nodes() {
        let status = n.status.to_string();
        o.line(format!(
            "  {:<12} {:<20} {:<11} {:<8} {:>5}  {}",
            n.node.short(),
            n.name,
            n.role.to_string(),
            status,
            n.trust.to_string(),
            n.capabilities.join(",")
        ))?;
    }
    o.line(format!("\nservices ({}):", p.services().count()))?;
    o.line(format!("  {:<36} {:<14} {:<12} {}", "id", "name", "node", "endpoints"))?;
    for s in p.services() {
        let eps: Vec<String> = s.service.endpoints.iter().map(|e| format!("{}://{}", e.protocol, e.address)).collect();
        o.line(format!(
            "  {:<36} {:<14} {:<12} {}",
            s.service.service_id,
            s.service.name,
            s.service.node.short(),
            eps.join(" ")
        ))?;
    }
    Ok(())
}

/// `spore replay`: replays the whole ledger and reports the rate.
pub(crate) fn replay(dir: &Path, audit: bool, o: &mut Out) -> CliResult {
    let reader = open(dir)?;
    let total = reader.recorded_head().map_err(CliError::ledger)?.map_or(0, |h| h.0 + 1);
    let bar = progress_bar(o, total, if audit { "auditing" } else { "replaying" });
    let (p, stats) = reader
        .replay(&ReplayOptions { audit, stop: StopAt::End }, &|n| bar.set_position(n))
        .map_err(corrupt_is_bad_data)?;
    bar.finish_and_clear();
    let rate = stats.events_per_sec();
    if o.json {
        o.json_line(&json!({
            "audit": audit, "events": stats.events, "bytes": stats.bytes,
            "signatures_verified": stats.signatures_verified, "elapsed_secs": stats.elapsed.as_secs_f64(),
            "events_per_sec": rate, "head": p.head().map(|h| json!({"seq": h.seq, "hash": h.hash})),
        }))
    } else {
        o.line(format!(
            "{} {} events ({} bytes, {} signatures verified) in {:.3} s: {:.0} events/s",
            if audit { "audited" } else { "replayed" },
            stats.events,
            stats.bytes,
            stats.signatures_verified,
            stats.elapsed.as_secs_f64(),
            rate
        ))?;
        o.line(format!("head {}", p.head().map_or("-".into(), |h| format!("{} {}", h.seq, h.hash))))
    }
}

/// Parses `--at-time`: RFC 3339, or microseconds since the epoch.
pub(crate) fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Ok(micros) = s.parse::<i64>() {
        return Ok(Timestamp(micros));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| Timestamp::from_datetime(t.with_timezone(&chrono::Utc)))
        .map_err(|e| format!("not an RFC 3339 time or microseconds: {e}"))
}

/// A directory argument that must exist.
pub(crate) fn existing_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(format!("{s} is not a directory"))
    }
}
