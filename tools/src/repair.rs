//! `spore repair --data-dir D (--from-seed FILE | --from-peer ADDR)`: a node data dir whose
//! ledger is damaged (fjall cannot open it, or `verify` finds damage) is rebuilt from a seed or
//! from a peer's chain, keeping the node key. The damaged ledger is kept beside it
//! (`ledger.damaged-<unix seconds>`), never deleted; if the rebuild fails it is put back.
//!
//! The rebuilt ledger is marked as imported: its Raft state (vote, log) went with the damaged
//! database, so the node rejoins its network (`spore node --data-dir D --join-addr …`), and
//! Raft starts its ledger over from the leader, as for a node restored from a seed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::seed::VerifyPolicy;
use mycnet_spores::wire::query::{Query, QueryAnswer, EVENTS_PER_QUERY_MAX};
use mycnet_spores::{Ledger, LedgerConfig, LedgerError, LedgerReader, NetworkFingerprint};
use serde_json::json;

use crate::output::{CliError, CliResult, Out};

/// Where the chain comes from.
pub(crate) enum Source {
    /// A seed file (with events, or state-only: the history then comes by gossip).
    Seed(PathBuf),
    /// A running member's QUIC address (its read-only admin protocol).
    Peer(String),
}

/// What is wrong with the ledger at `dir`, if anything, and its network when that is known.
fn diagnose(dir: &Path) -> Result<(Option<String>, Option<NetworkFingerprint>), CliError> {
    let reader = match LedgerReader::open(dir) {
        Ok(r) => r,
        Err(e @ (LedgerError::Damaged { .. } | LedgerError::Corrupt { .. })) => return Ok((Some(e.to_string()), None)),
        Err(e) => return Err(CliError::ledger(e)),
    };
    let report = reader.verify(&|_| {}).map_err(CliError::ledger)?;
    Ok((report.first_error.map(|(seq, c)| format!("damaged at seq {seq}: {c}")), report.fingerprint))
}

/// See the module doc. `force` rebuilds a ledger that verifies too.
pub(crate) fn repair(data_dir: &Path, source: Source, force: bool, timeout: Duration, o: &mut Out) -> CliResult {
    let ledger_dir = data_dir.join("ledger");
    if !ledger_dir.is_dir() {
        return Err(CliError::usage(format!("{} holds no ledger to repair", data_dir.display())));
    }
    let (damage, fingerprint) = diagnose(&ledger_dir)?;
    if damage.is_none() && !force {
        return Err(CliError::usage(format!(
            "the ledger in {} verifies: nothing to repair (--force rebuilds it anyway)",
            data_dir.display()
        )));
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let kept = data_dir.join(format!("ledger.damaged-{stamp}"));
    std::fs::rename(&ledger_dir, &kept).map_err(|e| CliError::io(&ledger_dir, e))?;
    let rebuilt = match &source {
        Source::Seed(file) => {
            let policy = VerifyPolicy { require_quorum: false, expected_network: fingerprint };
            crate::seedcmd::import_into(data_dir, file, policy).and_then(|_| mark_imported(&ledger_dir))
        }
        Source::Peer(addr) => from_peer(&ledger_dir, addr, fingerprint, timeout),
    };
    let head = match rebuilt {
        Ok(head) => head,
        Err(e) => {
            // Put the damaged ledger back: a failed repair changes nothing.
            let _ = std::fs::remove_dir_all(&ledger_dir);
            std::fs::rename(&kept, &ledger_dir).map_err(|err| CliError::io(&kept, err))?;
            return Err(e);
        }
    };
    let damage = damage.unwrap_or_else(|| "none (forced)".into());
    if o.json {
        o.json_line(&json!({ "data_dir": data_dir, "damage": damage, "kept": kept, "head": head.map(|(s, h)| json!({"seq": s, "hash": h})) }))
    } else {
        o.line(format!("damage: {damage}"))?;
        o.line(format!("the damaged ledger is kept in {}", kept.display()))?;
        o.line(format!("rebuilt ledger head: {}", head.map_or("-".into(), |(s, h)| format!("{s} {h}"))))?;
        o.line(format!(
            "next: start the node and let it rejoin, e.g. `spore node --data-dir {} --join-addr ADDR --join-key KEY`",
            data_dir.display()
        ))
    }
}

/// The head of the ledger at `dir` after marking it imported (see the module doc).
fn mark_imported(dir: &Path) -> Result<Option<(u64, mycnet_spores::ChainHash)>, CliError> {
    let mut ledger =
        Ledger::open(dir, LedgerConfig { create: false, ..LedgerConfig::default() }).map_err(CliError::ledger)?;
    ledger.set_imported(true).map_err(CliError::ledger)?;
    Ok(ledger.head().map(|h| (h.seq, h.hash)))
}

/// Copies the peer's chain page by page into a new ledger at `dir`; every range is checked as
/// gossip checks it (links, hashes, signatures, rules) and must be of `network` when known.
fn from_peer(
    dir: &Path,
    addr: &str,
    network: Option<NetworkFingerprint>,
    timeout: Duration,
) -> Result<Option<(u64, mycnet_spores::ChainHash)>, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("tokio runtime: {e}")))?;
    let call = |req| rt.block_on(crate::remote::admin(addr, None, RpcRequest::Query(req), timeout));
    let (peer_head, peer_network) = match call(Query::ChainAt(0))? {
        (_, RpcResponse::Query(Ok(QueryAnswer::Chain { head, fingerprint, .. }))) => (head, fingerprint),
        _ => return Err(CliError::Io(format!("{addr} did not say where its chain is"))),
    };
    if let (Some(ours), Some(theirs)) = (network, peer_network) {
        if ours != theirs {
            return Err(CliError::BadData(format!("{addr} belongs to network {theirs}, this data dir to {ours}")));
        }
    }
    let Some(peer_head) = peer_head else { return Err(CliError::Io(format!("{addr} holds no chain"))) };
    let config = LedgerConfig { create: true, expected_network: network.or(peer_network), ..LedgerConfig::default() };
    let mut ledger = Ledger::open(dir, config).map_err(CliError::ledger)?;
    let mut from = 0;
    while from <= peer_head.seq {
        let events = match call(Query::Events { from, max: EVENTS_PER_QUERY_MAX })? {
            (_, RpcResponse::Query(Ok(QueryAnswer::Events(e)))) if !e.is_empty() => e,
            _ => return Err(CliError::Io(format!("{addr} did not send the events from seq {from}"))),
        };
        let head = ledger
            .append_range(&events)
            .map_err(|e| CliError::BadData(format!("{addr} sent a range this chain refuses: {e}")))?;
        from = head.seq + 1;
    }
    ledger.set_imported(true).map_err(CliError::ledger)?;
    Ok(ledger.head().map(|h| (h.seq, h.hash)))
}
