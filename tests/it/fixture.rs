//! Shared fixtures for the ledger tests: synthetic histories, ledgers built from them, and raw
//! fjall access to damage a closed ledger the way a failing disk or an attacker would.

use std::path::Path;
use std::sync::OnceLock;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use mycnet_spores::store::record::{decode_record, encode_record};
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::{
    ChainHash, ChainHead, ChainedEvent, Ledger, LedgerConfig, LedgerError, LedgerReader, NetworkFingerprint, NodeKey,
    SignedEvent, VerifyReport,
};

/// Length of the shared history.
pub const HISTORY_LEN: usize = 600;

/// A valid synthetic history plus what is needed to extend or forge it.
pub struct History {
    /// `HISTORY_LEN` valid events, genesis first.
    pub events: Vec<SignedEvent>,
    /// Valid events that continue `events`.
    pub continuation: Vec<SignedEvent>,
    /// Every key of the synthetic network (index 0 is the founder).
    pub keys: Vec<NodeKey>,
    /// The network.
    pub fingerprint: NetworkFingerprint,
}

impl History {
    /// The key that signed `event`.
    pub fn key_of(&self, event: &SignedEvent) -> &NodeKey {
        self.keys.iter().find(|k| k.node_id() == event.author).expect("every synthetic author has a key")
    }
}

/// Generates `n` valid events of the synthetic network `seed`, in chunks like a live network.
pub fn synth_events(seed: u64, n: usize) -> (Vec<SignedEvent>, Synth) {
    let mut synth = Synth::new(SynthConfig { seed, nodes: 12, ..Default::default() });
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let want = (n - events.len()).min(150);
        let chunk = synth.next_chunk(want);
        // Exact chunks keep `synth` in step with `events`, so it can continue the history.
        assert_eq!(chunk.len(), want, "synth returns exactly the events asked for");
        events.extend(chunk);
    }
    (events, synth)
}

/// The history shared by every test in this binary (signing is the expensive part).
pub fn history() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(|| {
        let (events, mut synth) = synth_events(0x5eed, HISTORY_LEN);
        let continuation = synth.next_chunk(40);
        History { events, continuation, keys: synth.keys().to_vec(), fingerprint: synth.fingerprint() }
    })
}

/// A ledger config with the given checkpoint interval (0 = never, so every open replays all).
pub fn config(checkpoint_interval: u64) -> LedgerConfig {
    LedgerConfig { checkpoint_interval, ..Default::default() }
}

/// Appends `events` to a new ledger at `dir` in batches of `batch`, all of which must be
/// accepted; closes it and returns the head.
pub fn build_ledger(dir: &Path, events: &[SignedEvent], cfg: LedgerConfig, batch: usize) -> ChainHead {
    let mut ledger = Ledger::open(dir, cfg).expect("create ledger");
    for chunk in events.chunks(batch.max(1)) {
        let outcome = ledger.append(chunk.to_vec()).expect("append");
        for (i, r) in outcome.iter().enumerate() {
            assert!(r.is_ok(), "valid event {i} of a batch was rejected: {r:?}");
        }
    }
    ledger.head().expect("non-empty ledger has a head")
}

/// Runs the inspector's verify on the (closed) ledger at `dir`.
pub fn verify(dir: &Path) -> VerifyReport {
    let reader = LedgerReader::open(dir).expect("open reader");
    reader.verify(&|_| {}).expect("verify runs (damage is reported in the report, not as an error)")
}

/// `Ledger::open` of a damaged ledger must fail with `Corrupt`; returns its seq and reason.
pub fn open_must_fail(dir: &Path) -> (u64, mycnet_spores::Corruption) {
    match Ledger::open(dir, config(0)) {
        Err(LedgerError::Corrupt { seq, corruption, .. }) => (seq, *corruption),
        Err(e) => panic!("open failed, but not as Corrupt: {e}"),
        Ok(l) => panic!("open loaded a damaged ledger (head {:?})", l.head()),
    }
}

/// A closed ledger opened as a plain fjall database, below every check of the library.
pub struct RawLedger {
    db: Database,
    ledger: Keyspace,
    meta: Keyspace,
}

impl RawLedger {
    /// Opens the fjall database of a closed ledger.
    pub fn open(dir: &Path) -> RawLedger {
        let db = Database::builder(dir).open().expect("open fjall database");
        let ledger = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("ledger keyspace");
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).expect("meta keyspace");
        RawLedger { db, ledger, meta }
    }

    /// The stored bytes of `seq`.
    pub fn value(&self, seq: u64) -> Vec<u8> {
        self.ledger.get(seq.to_be_bytes()).expect("read").expect("record present").to_vec()
    }

    /// The decoded record of `seq`.
    pub fn record(&self, seq: u64) -> ChainedEvent {
        decode_record(&self.value(seq)).expect("intact record decodes")
    }

    /// Overwrites the bytes stored under `seq`.
    pub fn put_value(&self, seq: u64, bytes: &[u8]) {
        self.ledger.insert(seq.to_be_bytes(), bytes.to_vec()).expect("write");
    }

    /// Deletes `seq`.
    pub fn remove(&self, seq: u64) {
        self.ledger.remove(seq.to_be_bytes()).expect("remove");
    }

    /// The last stored sequence number.
    pub fn last_seq(&self) -> u64 {
        let kv = self.ledger.last_key_value().expect("non-empty");
        let key = kv.key().expect("read key");
        u64::from_be_bytes(<[u8; 8]>::try_from(key.as_ref()).expect("8-byte key"))
    }

    /// A `meta` value.
    pub fn meta_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.meta.get(key).expect("read meta").map(|v| v.to_vec())
    }

    /// Overwrites a `meta` value.
    pub fn put_meta(&self, key: &[u8], value: &[u8]) {
        self.meta.insert(key.to_vec(), value.to_vec()).expect("write meta");
    }

    /// Rewrites the durable head in `meta` (seq u64 BE ‖ hash).
    pub fn set_head(&self, seq: u64, hash: ChainHash) {
        let mut v = seq.to_be_bytes().to_vec();
        v.extend_from_slice(hash.as_bytes());
        self.meta.insert(b"head".to_vec(), v).expect("write head");
    }

    /// Puts `replacement` at `seq` and re-chains every later record (and the head) so that
    /// all links and hashes are consistent again: only signatures and rules can catch it.
    pub fn replace_and_rechain(&self, seq: u64, replacement: SignedEvent) {
        let last = self.last_seq();
        let mut prev = if seq == 0 { ChainHash::ZERO } else { self.record(seq - 1).hash };
        for s in seq..=last {
            let event = if s == seq { replacement.clone() } else { self.record(s).event };
            let linked = ChainedEvent::link(s, prev, event);
            self.put_value(s, &encode_record(&linked));
            prev = linked.hash;
        }
        self.set_head(last, prev);
    }

    /// Makes everything durable and closes the database.
    pub fn close(self) {
        self.db.persist(PersistMode::SyncAll).expect("persist");
    }
}
