//! On-disk record formats (specified in `schema/records.md`).
//!
//! A **ledger record** is the value stored under key `seq` (8 bytes, big-endian) in the
//! `ledger` keyspace:
//!
//! ```text
//! byte 0      format tag: RECORD_FORMAT_V1 (0x01)
//! bytes 1..   rkyv 0.8 archive of `ChainedEvent` (little-endian, aligned, 32-bit offsets)
//! ```
//!
//! A **projection checkpoint** (key `checkpoint` in `meta`) has the same framing with tag
//! `CHECKPOINT_FORMAT_V1` (0x01) and an rkyv archive of `ProjectionState` (whose `critical`
//! map is not in that archive). A state with critical services is written with tag
//! `CHECKPOINT_FORMAT_V2` (0x02): the length of the state's archive (u64, little-endian), that
//! archive, then an rkyv archive of the `critical` map. Format 1 is byte for byte what code
//! before health checks wrote, so their checkpoints and seeds still decode.
//!
//! Bytes read back are untrusted: they only ever go through `rkyv::access` with bytecheck,
//! after being copied into an aligned buffer. bytecheck proves memory safety; a ledger record
//! must also be the canonical encoding of what it decodes to, so that no byte of it escapes the
//! integrity checks, which come from the chain hash and the signatures, checked by the reader.
//! A projection checkpoint has no chain hash of its own: whoever stores one stores a digest
//! with it (the ledger's `meta`, the seed file's digest).

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::core::event::{ChainedEvent, SignedEvent};
use crate::core::limits;
use crate::core::projection::ProjectionState;
use crate::core::types::ChainHash;

/// Format tag of a ledger record.
pub const RECORD_FORMAT_V1: u8 = 1;
/// Format tag of a projection checkpoint.
pub const CHECKPOINT_FORMAT_V1: u8 = 1;
/// Format tag of a projection checkpoint with critical services (see the module doc).
pub const CHECKPOINT_FORMAT_V2: u8 = 2;

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty record")]
    Empty,
    /// Larger than any record this code writes.
    #[error("record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A format tag this code does not know.
    #[error("unknown record format tag {0:#04x}")]
    UnknownFormat(u8),
    /// The archive failed validation.
    #[error("record does not validate: {0}")]
    Invalid(String),
    /// The archive validates but is not the canonical encoding of what it decodes to (bytes
    /// that validation does not look at, such as padding, were changed).
    #[error("record is not the canonical encoding of its content")]
    NonCanonical,
}

/// The 8-byte big-endian key of `seq`.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Parses a ledger key; `None` unless it is exactly 8 bytes.
pub fn parse_seq_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// Encodes a chained event as a ledger record.
pub fn encode_record(event: &ChainedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    encode_record_into(event, &mut out);
    out
}

/// An rkyv writer that appends to a `Vec` after a frame prefix, reporting positions relative
/// to the archive's start: the bytes are exactly those of `rkyv::to_bytes`, written in place
/// (no intermediate buffer, no copy).
struct AfterPrefix<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
}

impl rkyv::ser::Positional for AfterPrefix<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.out.len() - self.base
    }
}

impl<E> rkyv::ser::Writer<E> for AfterPrefix<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the ledger record of `event` (tag + archive) to `out`.
pub fn encode_record_into(event: &ChainedEvent, out: &mut Vec<u8>) {
    encode_framed_into(event, out)
}

/// A chained event whose signed event is borrowed, archived exactly as [`ChainedEvent`] is
/// (the same fields in the same order, the event inline): its record can be encoded without
/// owning the event. Pinned to [`encode_record_into`] by a test.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub(crate) struct ChainedEventRef<'a> {
    pub(crate) seq: u64,
    pub(crate) prev_hash: ChainHash,
    pub(crate) hash: ChainHash,
    #[rkyv(with = rkyv::with::Inline)]
    pub(crate) event: &'a SignedEvent,
}

/// Appends the ledger record of the chained event `event` stands for to `out`: the same bytes
/// as [`encode_record_into`] of the owned event.
pub(crate) fn encode_record_ref_into(event: &ChainedEventRef<'_>, out: &mut Vec<u8>) {
    encode_framed_into(event, out)
}

fn encode_framed_into<T>(value: &T, out: &mut Vec<u8>)
where
    T: for<'a, 'b> rkyv::Serialize<
        rkyv::api::high::HighSerializer<AfterPrefix<'b>, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let start = out.len();
    out.push(RECORD_FORMAT_V1);
    let base = out.len();
    let r = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, AfterPrefix { out: &mut *out, base });
    // Serialising our own in-memory values into a growable buffer cannot fail.
    debug_assert!(r.is_ok());
    if r.is_err() {
        out.truncate(start);
    }
}

/// Encodes a projection state as a checkpoint record: format 1 while no service is critical
/// (byte for byte what every earlier version wrote), format 2 otherwise (see the module doc).
pub fn encode_checkpoint(state: &ProjectionState) -> Vec<u8> {
    let v1 = framed(CHECKPOINT_FORMAT_V1, rkyv::to_bytes::<rancor::Error>(state));
    if state.critical.is_empty() {
        return v1;
    }
    let critical: Critical = state.critical.iter().map(|(id, h)| (*id, (**h).clone())).collect();
    let critical = rkyv::to_bytes::<rancor::Error>(&critical).map(|v| v.into_vec()).unwrap_or_default();
    debug_assert!(!critical.is_empty());
    let archive = &v1[1..];
    let mut out = Vec::with_capacity(9 + archive.len() + critical.len());
    out.push(CHECKPOINT_FORMAT_V2);
    out.extend_from_slice(&(archive.len() as u64).to_le_bytes());
    out.extend_from_slice(archive);
    out.extend_from_slice(&critical);
    out
}

fn framed(tag: u8, archived: Result<AlignedVec, rancor::Error>) -> Vec<u8> {
    // Serialising our own in-memory values into a growable buffer cannot fail.
    let bytes = archived.map(|v| v.into_vec()).unwrap_or_default();
    debug_assert!(!bytes.is_empty());
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(tag);
    out.extend_from_slice(&bytes);
    out
}

fn unframe(bytes: &[u8], tag: u8, max: usize, buf: &mut AlignedVec) -> Result<(), DecodeError> {
    let (&first, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > max {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if first != tag {
        return Err(DecodeError::UnknownFormat(first));
    }
    buf.clear();
    buf.extend_from_slice(rest);
    Ok(())
}

thread_local! {
    /// Scratch buffer of the canonical-encoding check (reused: one per reading thread).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes a ledger record through validated access. Never panics on any input.
pub fn decode_record(bytes: &[u8]) -> Result<ChainedEvent, DecodeError> {
    let mut buf = AlignedVec::new();
    decode_record_with(bytes, &mut buf)
}

/// [`decode_record`] reusing an aligned scratch buffer.
pub fn decode_record_with(bytes: &[u8], buf: &mut AlignedVec) -> Result<ChainedEvent, DecodeError> {
    unframe(bytes, RECORD_FORMAT_V1, limits::RECORD_BYTES_MAX, buf)?;
    let archived = rkyv::access::<rkyv::Archived<ChainedEvent>, rancor::Error>(buf)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let event =
        rkyv::deserialize::<ChainedEvent, rancor::Error>(archived).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    // bytecheck proves the archive is safe to read, not that every byte of it means something:
    // a flipped bit in padding or in the unused part of an inline string decodes to the same
    // event and would go unnoticed by the chain hash. Accepting only the canonical encoding
    // makes every bit of a record count.
    let canonical = SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        // Positions start at 0 in both buffers, so the bytes are those of `rkyv::to_bytes`.
        let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&event, &mut *scratch).map(|_| ());
        written.map(|()| scratch.as_slice() == buf.as_slice())
    });
    match canonical {
        Ok(true) => Ok(event),
        Ok(false) => Err(DecodeError::NonCanonical),
        Err(e) => Err(DecodeError::Invalid(e.to_string())),
    }
}

/// Decodes a projection checkpoint (format 1 or 2) through validated access. Never panics on
/// any input.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<ProjectionState, DecodeError> {
    let mut buf = AlignedVec::new();
    if bytes.first() != Some(&CHECKPOINT_FORMAT_V2) {
        unframe(bytes, CHECKPOINT_FORMAT_V1, limits::CHECKPOINT_BYTES_MAX, &mut buf)?;
        return decode_state(&buf);
    }
    unframe(bytes, CHECKPOINT_FORMAT_V2, limits::CHECKPOINT_BYTES_MAX, &mut buf)?;
    let invalid = |why: &str| DecodeError::Invalid(format!("format 2 checkpoint: {why}"));
    let (len, rest) = buf.split_at_checked(8).ok_or_else(|| invalid("shorter than its length"))?;
    let len = usize::try_from(u64::from_le_bytes(len.try_into().map_err(|_| invalid("length"))?))
        .map_err(|_| invalid("length"))?;
    let (state, critical) = rest.split_at_checked(len).ok_or_else(|| invalid("state longer than the record"))?;
    let mut part = AlignedVec::new();
    part.extend_from_slice(state);
    let mut decoded = decode_state(&part)?;
    part.clear();
    part.extend_from_slice(critical);
    let archived = rkyv::access::<rkyv::Archived<Critical>, rancor::Error>(&part)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    decoded.critical = rkyv::deserialize::<Critical, rancor::Error>(archived)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?
        .into_iter()
        .map(|(id, h)| (id, std::sync::Arc::new(h)))
        .collect();
    if decoded.critical.is_empty() {
        return Err(invalid("no critical service (format 1 says that)"));
    }
    Ok(decoded)
}

/// What a format 2 checkpoint archives after the state.
type Critical = std::collections::BTreeMap<uuid::Uuid, crate::core::projection::ServiceHealth>;

fn decode_state(buf: &AlignedVec) -> Result<ProjectionState, DecodeError> {
    let archived = rkyv::access::<rkyv::Archived<ProjectionState>, rancor::Error>(buf)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    rkyv::deserialize::<ProjectionState, rancor::Error>(archived).map_err(|e| DecodeError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::projection::Projection;
    use crate::store::synth::{Synth, SynthConfig};

    /// The in-place framed encoding is byte for byte the tag followed by `rkyv::to_bytes`,
    /// and decodes back (the canonical check accepts it).
    #[test]
    fn in_place_encoding_is_tag_plus_rkyv_archive() {
        let mut synth = Synth::new(SynthConfig::default());
        let mut p = Projection::new();
        let mut out = vec![0xaa];
        for ev in synth.next_chunk(200) {
            let chained = p.append(ev).expect("valid");
            let reference = framed(RECORD_FORMAT_V1, rkyv::to_bytes::<rancor::Error>(&chained));
            assert_eq!(encode_record(&chained), reference);
            out.truncate(1);
            encode_record_into(&chained, &mut out);
            assert_eq!(&out[1..], reference.as_slice());
            assert_eq!(decode_record(&reference).as_ref(), Ok(&chained));
            let by_ref = ChainedEventRef {
                seq: chained.seq,
                prev_hash: chained.prev_hash,
                hash: chained.hash,
                event: &chained.event,
            };
            let mut borrowed = vec![0xbb];
            encode_record_ref_into(&by_ref, &mut borrowed);
            assert_eq!(&borrowed[1..], reference.as_slice());
        }
    }

    /// A state with a critical service is a format 2 checkpoint that decodes back whole; the
    /// same state without it is format 1, and the two share the state's archive.
    #[test]
    fn a_checkpoint_with_critical_services_is_format_2_and_decodes_back() {
        let mut synth = Synth::new(SynthConfig::default());
        let mut p = Projection::new();
        for ev in synth.next_chunk(100) {
            p.append(ev).expect("valid");
        }
        let mut state = p.state().clone();
        let v1 = encode_checkpoint(&state);
        assert_eq!(v1[0], CHECKPOINT_FORMAT_V1);
        assert_eq!(decode_checkpoint(&v1), Ok(state.clone()));
        let health = crate::core::projection::ServiceHealth {
            since_seq: 7,
            since: crate::core::types::Timestamp(9),
            reason: "connect refused".into(),
        };
        state.critical.insert(uuid::Uuid::from_u128(1), std::sync::Arc::new(health));
        let v2 = encode_checkpoint(&state);
        assert_eq!(v2[0], CHECKPOINT_FORMAT_V2);
        assert_eq!(&v2[9..9 + v1.len() - 1], &v1[1..], "the state's archive is the format 1 one");
        assert_eq!(decode_checkpoint(&v2), Ok(state));
        assert!(decode_checkpoint(&v2[..v2.len() - 1]).is_err());
        assert!(decode_checkpoint(&v2[..12]).is_err());
    }
}
