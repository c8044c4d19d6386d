//! `spore seed export|verify|inspect|list`: seed spores, the signed snapshot files anyone can
//! verify offline.

use std::path::Path;

use mycnet_spores::seed::{self, Seed, SeedError, VerifyPolicy};
use mycnet_spores::store::inspect::resolve_ledger_dir;
use mycnet_spores::store::keyfile;
use mycnet_spores::{Ledger, LedgerConfig, NetworkFingerprint};
use serde_json::json;

use crate::output::{CliError, CliResult, Out};

fn seed_err(e: SeedError) -> CliError {
    match e {
        SeedError::Io { .. } => CliError::Io(e.to_string()),
        SeedError::RaftManaged => CliError::Usage(e.to_string()),
        e => CliError::BadData(e.to_string()),
    }
}

/// `spore seed import --data-dir DIR FILE`: verifies the seed, then imports its events into
/// a new (or import-only) ledger — the start of `spore node --from-seed`, or an offline copy
/// for the inspector. Refuses a Raft member's data dir.
pub(crate) fn import(data_dir: &Path, file: &Path, policy: VerifyPolicy, o: &mut Out) -> CliResult {
    let (imported, head, fingerprint, history_from) = import_into(data_dir, file, policy)?;
    if o.json {
        o.json_line(&json!({ "data_dir": data_dir, "imported_events": imported, "head": { "seq": head.seq, "hash": head.hash }, "fingerprint": fingerprint, "history_from": history_from }))
    } else if history_from > 0 {
        o.line(format!(
            "imported the state at head {} {} into {} (no events: the history below is backfilled by gossip once the node runs)",
            head.seq,
            head.hash,
            data_dir.display()
        ))
    } else {
        o.line(format!("imported {imported} events into {}: head {} {}", data_dir.display(), head.seq, head.hash))
    }
}

/// [`import`] without output: returns the events imported, the head, the network and where
/// the history held starts.
pub(crate) fn import_into(
    data_dir: &Path,
    file: &Path,
    policy: VerifyPolicy,
) -> Result<(u64, mycnet_spores::ChainHead, Option<mycnet_spores::NetworkFingerprint>, u64), CliError> {
    let bytes = std::fs::read(file).map_err(|e| CliError::io(file, e))?;
    // A quorum-signed seed is checked on its voters' signatures over its exact bytes and, into
    // an empty ledger, bulk-loaded verbatim; anything else is verified event by event.
    let quorum = if policy.require_quorum {
        Some(seed::verify_quorum(&bytes, policy.expected_network).map_err(seed_err)?)
    } else {
        None
    };
    let full = if quorum.is_none() { Some(seed::verify(&bytes, policy).map_err(seed_err)?) } else { None };
    let fingerprint = quorum.as_ref().map(|q| q.header.fingerprint).or(full.as_ref().map(|s| s.header.fingerprint));
    std::fs::create_dir_all(data_dir).map_err(|e| CliError::io(data_dir, e))?;
    let config = LedgerConfig { create: true, expected_network: fingerprint, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(data_dir.join("ledger"), config).map_err(CliError::ledger)?;
    let before = ledger.head().map(|h| h.seq);
    let head = match (&quorum, full) {
        (Some(q), _) if before.is_none() => seed::import_quorum(&mut ledger, q).map_err(seed_err)?,
        (_, Some(s)) => seed::import(&mut ledger, &s).map_err(seed_err)?,
        (Some(_), None) => {
            let s = seed::verify(&bytes, policy).map_err(seed_err)?;
            seed::import(&mut ledger, &s).map_err(seed_err)?
        }
        (None, None) => return Err(CliError::Io("nothing verified".into())),
    };
    // A state-only seed brings its state and head; the history below comes later by gossip.
    let history_from = ledger.history_from();
    let imported = (head.seq + 1).saturating_sub(before.map_or(0, |b| b + 1).max(history_from));
    Ok((imported, head, fingerprint, history_from))
}

/// `spore seed export --data-dir DIR --out FILE`: from a stopped node's data dir, signed with
/// its key.
pub(crate) fn export(data_dir: &Path, out: &Path, include_events: bool, o: &mut Out) -> CliResult {
    let key = keyfile::load(&data_dir.join(keyfile::KEY_FILE_NAME)).map_err(|e| CliError::Io(e.to_string()))?;
    let config = LedgerConfig { create: false, ..LedgerConfig::default() };
    let ledger = Ledger::open(resolve_ledger_dir(data_dir), config).map_err(CliError::ledger)?;
    let ledger = std::sync::RwLock::new(ledger);
    let done = seed::export(&ledger, &key, out, include_events).map_err(seed_err)?;
    let head = done.head;
    let size = std::fs::metadata(out).map_err(|e| CliError::io(out, e))?.len();
    if o.json {
        o.json_line(&json!({ "file": out, "head": { "seq": head.seq, "hash": head.hash }, "bytes": size, "signer": key.node_id(), "includes_events": done.includes_events, "state_seq": done.state_seq }))
    } else {
        let what = match (done.includes_events, include_events) {
            (true, true) => "every event from genesis".to_string(),
            (true, false) => "every event from genesis (no attested state is held yet)".to_string(),
            (false, _) => format!("the state attested at seq {} and the events after it", done.state_seq),
        };
        o.line(format!(
            "wrote {} ({size} bytes): head {} {}, {what}, signed by {}",
            out.display(),
            head.seq,
            head.hash,
            key.node_id().short()
        ))
    }
}

/// `spore seed export --addr A --key-file F --out PATH`: a running node writes the seed on its
/// own host, at its committed head, while writes continue.
pub(crate) async fn export_running(
    addr: &str,
    key_file: &Path,
    out: &Path,
    include_events: bool,
    o: &mut Out,
) -> CliResult {
    use mycnet_spores::net::quic;
    use mycnet_spores::raft::{RpcRequest, RpcResponse};
    let key = keyfile::load(key_file).map_err(|e| CliError::Io(e.to_string()))?;
    // A relative path would resolve against the node's working directory, not ours.
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| CliError::Io(e.to_string()))?.join(out)
    };
    let req = RpcRequest::ExportSeed { path: out.display().to_string(), include_events };
    let timeout = std::time::Duration::from_secs(600);
    let (node, resp) = quic::call_once(&key, addr, Some(key.node_id()), quic::ALPN_RAFT, req, timeout)
        .await
        .map_err(|e| CliError::Io(format!("{e} (is --key-file the key of the node at {addr}?)")))?;
    let head = match resp {
        RpcResponse::ExportSeed(Ok(h)) => h,
        RpcResponse::ExportSeed(Err(e)) => return Err(CliError::Io(format!("{addr} could not export: {e}"))),
        _ => return Err(CliError::Io(format!("{addr} answered with an unexpected response"))),
    };
    if o.json {
        o.json_line(&json!({ "file": out, "head": { "seq": head.seq, "hash": head.hash }, "signer": node, "includes_events": include_events }))
    } else {
        o.line(format!("{addr} wrote {}: head {} {}, signed by {}", out.display(), head.seq, head.hash, node.short()))
    }
}

/// `spore seed verify FILE`: exit 0 when it verifies, 1 with the exact reason when not.
pub(crate) fn verify(file: &Path, network: Option<NetworkFingerprint>, quorum: bool, o: &mut Out) -> CliResult {
    let policy = VerifyPolicy { require_quorum: quorum, expected_network: network };
    match seed::read_file(file, policy) {
        Ok(s) => {
            if o.json {
                o.json_line(&json!({ "ok": true, "file": file, "format_version": s.version, "head": { "seq": s.header.head_seq, "hash": s.header.head_hash }, "fingerprint": s.header.fingerprint, "signers": s.signers, "state": s.proof }))
            } else {
                o.line(format!(
                    "OK: seed of {:?} at {} {}, {} valid signature(s)",
                    s.header.network.network_name,
                    s.header.head_seq,
                    s.header.head_hash,
                    s.signers.len()
                ))?;
                o.line(format!("state: {}", s.proof))
            }
        }
        Err(e @ SeedError::Io { .. }) => Err(CliError::Io(e.to_string())),
        Err(e) => {
            if o.json {
                o.json_line(&json!({ "ok": false, "file": file, "error": e.to_string() }))?;
            } else {
                o.line(format!("INVALID: {e}"))?;
            }
            Err(CliError::Reported)
        }
    }
}

/// `spore seed sign FILE --key-file K`: co-signs a seed with a voter's key.
pub(crate) fn sign(file: &Path, key_file: &Path, out: Option<&Path>, o: &mut Out) -> CliResult {
    let key = keyfile::load(key_file).map_err(|e| CliError::Io(e.to_string()))?;
    let bytes = std::fs::read(file).map_err(|e| CliError::io(file, e))?;
    let signed = seed::add_signature(&bytes, &key).map_err(seed_err)?;
    let dest = out.unwrap_or(file);
    seed::write_atomically(dest, &signed).map_err(seed_err)?;
    let s = seed::verify(&signed, VerifyPolicy::default()).map_err(seed_err)?;
    let voters =
        s.projection().nodes().filter(|n| n.role.is_authority() && n.status != mycnet_spores::NodeStatus::Left).count();
    let quorum = s.signers.len() > voters / 2;
    if o.json {
        o.json_line(&json!({ "file": dest, "signers": s.signers, "voters": voters, "quorum_signed": quorum }))
    } else {
        o.line(format!(
            "signed by {} of {voters} voters{}",
            s.signers.len(),
            if quorum { ": quorum-signed" } else { "" }
        ))
    }
}

/// `spore seed inspect FILE`: header, head, counts and signers (after verifying it).
pub(crate) fn inspect(file: &Path, o: &mut Out) -> CliResult {
    let s: Seed = seed::read_file(file, VerifyPolicy::default()).map_err(seed_err)?;
    let size = std::fs::metadata(file).map_err(|e| CliError::io(file, e))?.len();
    let p = s.projection();
    let voters = p.nodes().filter(|n| n.role.is_authority() && n.status != mycnet_spores::NodeStatus::Left).count();
    if o.json {
        return o.json_line(&json!({
            "file": file, "bytes": size, "format_version": s.version, "state": s.proof,
            "network": s.header.network, "fingerprint": s.header.fingerprint,
            "head": { "seq": s.header.head_seq, "hash": s.header.head_hash },
            "includes_events": s.header.includes_events, "events": s.events.len(),
            "nodes": p.nodes().count(), "services": p.services().count(), "voters": voters,
            "digest": hex::encode(s.digest), "signers": s.signers,
        }));
    }
    o.line(format!("file         {} ({size} bytes, format v{})", file.display(), s.version))?;
    o.line(format!("network      {:?} {}", s.header.network.network_name, s.header.network.network_id))?;
    o.line(format!("fingerprint  {}", s.header.fingerprint))?;
    o.line(format!("head         {} {}", s.header.head_seq, s.header.head_hash))?;
    o.line(format!(
        "events       {}",
        match &s.base {
            _ if s.header.includes_events => s.events.len().to_string(),
            Some(_) => format!("{} after the attested state", s.events.len()),
            None => "not included".into(),
        }
    ))?;
    o.line(format!("state        {}", s.proof))?;
    o.line(format!("registry     {} nodes ({voters} voters), {} services", p.nodes().count(), p.services().count()))?;
    o.line(format!("digest       {}", hex::encode(s.digest)))?;
    o.line(format!("signers      {}", s.signers.iter().map(|k| k.short()).collect::<Vec<_>>().join(" ")))?;
    Ok(())
}

/// One file `spore seed list` reports.
struct Listed {
    path: std::path::PathBuf,
    bytes: u64,
    /// When it was taken: the time in a backup's name, else the file's modification time.
    at: chrono::DateTime<chrono::Utc>,
    verdict: Result<Summary, SeedError>,
}

/// What `seed list` keeps of a seed that verified (not its events: a directory may hold many
/// large ones).
struct Summary {
    head_seq: u64,
    head_hash: mycnet_spores::ChainHash,
    includes_events: bool,
    signers: Vec<mycnet_spores::NodeId>,
}

/// Whether `path` is a seed file to list: named `*.seed`, or starting with the seed magic
/// (hidden files, such as a backup's staging file, are left out).
fn is_seed_file(path: &Path, name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    if name.ends_with(".seed") {
        return true;
    }
    let mut magic = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == seed::SEED_MAGIC
}

/// `spore seed list DIR`: every seed file in DIR, newest first, each verified (default policy).
/// Exit 1 if any does not verify, 2 if DIR cannot be read.
pub(crate) fn list(dir: &Path, o: &mut Out) -> CliResult {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CliError::io(dir, e))? {
        let entry = entry.map_err(|e| CliError::io(dir, e))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| CliError::io(&path, e))?;
        let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
        if !meta.is_file() || !is_seed_file(&path, &name) {
            continue;
        }
        let at = match mycnet_spores::node::backup::BackupName::parse(&name) {
            Some(b) => b.at,
            None => meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default(),
        };
        let verdict = seed::read_file(&path, VerifyPolicy::default()).map(|s| Summary {
            head_seq: s.header.head_seq,
            head_hash: s.header.head_hash,
            includes_events: s.header.includes_events,
            signers: s.signers,
        });
        if let Err(e @ SeedError::Io { .. }) = &verdict {
            return Err(CliError::Io(e.to_string()));
        }
        found.push(Listed { path, bytes: meta.len(), at, verdict });
    }
    found.sort_by(|a, b| (b.at, &b.path).cmp(&(a.at, &a.path)));
    let bad = found.iter().filter(|l| l.verdict.is_err()).count();
    if o.json {
        let list: Vec<serde_json::Value> = found
            .iter()
            .map(|l| match &l.verdict {
                Ok(s) => json!({
                    "file": l.path, "bytes": l.bytes, "at": l.at.to_rfc3339(), "ok": true,
                    "head": { "seq": s.head_seq, "hash": s.head_hash },
                    "includes_events": s.includes_events, "signers": s.signers,
                }),
                Err(e) => json!({
                    "file": l.path, "bytes": l.bytes, "at": l.at.to_rfc3339(), "ok": false,
                    "head": null, "signers": [], "error": e.to_string(),
                }),
            })
            .collect();
        o.json_line(&list)?;
    } else {
        o.line(format!("{:<48} {:>10} {:>10}  {:<8} {}", "file", "head", "bytes", "verdict", "signers"))?;
        for l in &found {
            let name = l.path.file_name().map_or_else(|| l.path.display().to_string(), |n| n.to_string_lossy().into());
            match &l.verdict {
                Ok(s) => o.line(format!(
                    "{name:<48} {:>10} {:>10}  {:<8} {}",
                    s.head_seq,
                    l.bytes,
                    "OK",
                    s.signers.iter().map(|k| k.short()).collect::<Vec<_>>().join(" ")
                ))?,
                Err(e) => o.line(format!("{name:<48} {:>10} {:>10}  {:<8} {e}", "-", l.bytes, "INVALID"))?,
            }
        }
        o.line(format!("{} seed file(s), {bad} invalid", found.len()))?;
    }
    if bad > 0 {
        o.flush()?;
        return Err(CliError::Reported);
    }
    Ok(())
}
