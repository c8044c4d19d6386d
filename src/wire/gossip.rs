//! The latent tier's frames ([`GossipMessage`]s on a `spores-gossip/1` stream): encoded, and
//! decoded within their limits, never panicking.
//!
//! # Wire format (`schema/gossip.md`)
//! One bidirectional stream per session. Each message is a frame: `u32` big-endian length, then
//! a tag byte and the body, at most [`limits::GOSSIP_FRAME_BYTES_MAX`] in all:
//! - `1` hello: postcard [`Digest`];
//! - `2` request: postcard `(from: u64, max_events: u32)`;
//! - `3` range: `u32` BE count, then per event `u32` BE length and the **ledger record bytes
//!   verbatim** (format tag + rkyv archive, exactly as stored; decoded with validated access);
//! - `4` bye: no body.
//!
//! Ranges are copied from the serving ledger without decoding, so what crosses the wire is
//! the records plus 4 bytes each.
//!
//! The records a range carries are in the ledger's record format (`crate::store::record`, a
//! layer above this one); the caller names it as a [`RecordFormat`].

use crate::core::event::ChainedEvent;
use crate::core::gossip::{Digest, ForkEvidence, GossipMessage, RangeRecords};
use crate::core::limits;
use crate::core::provisional::ProvisionalEvent;

const TAG_HELLO: u8 = 1;
const TAG_REQUEST: u8 = 2;
const TAG_RANGE: u8 = 3;
const TAG_BYE: u8 = 4;
const TAG_PROVISIONAL: u8 = 5;
const TAG_FORKS: u8 = 6;

/// The format of the records a range frame carries: the ledger's own (`crate::store::record`),
/// so ranges are copied from the serving ledger without decoding and stored as received.
pub trait RecordFormat {
    /// Why a record does not decode.
    type Error: std::fmt::Display;
    /// Encodes one chained event as a record.
    fn encode_record(event: &ChainedEvent) -> Vec<u8>;
    /// Decodes one record (validated), using `buf` as scratch space.
    fn decode_record_with(bytes: &[u8], buf: &mut rkyv::util::AlignedVec) -> Result<ChainedEvent, Self::Error>;
}

/// Why a gossip frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GossipFrameError {
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// An unknown tag.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    /// Over a size limit.
    #[error("{what} of {got} exceeds the limit {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Got.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// The body does not decode.
    #[error("undecodable {what}: {reason}")]
    Undecodable {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A range to send: ledger records verbatim.
pub struct RawRange<'a>(pub &'a [Vec<u8>]);

/// Encodes a message whose range (if any) is given as raw records. `msg` must not be a
/// `Range`; ranges go through [`encode_range_frame`].
pub fn encode_frame<F: RecordFormat>(msg: &GossipMessage) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    match msg {
        GossipMessage::Hello(d) => {
            out.push(TAG_HELLO);
            // A digest of bounded fields always encodes.
            out = postcard::to_extend(d, out).unwrap_or_else(|_| vec![0, 0, 0, 0, TAG_BYE]);
        }
        GossipMessage::Request { from, max_events } => {
            out.push(TAG_REQUEST);
            out = postcard::to_extend(&(*from, *max_events), out).unwrap_or_else(|_| vec![0, 0, 0, 0, TAG_BYE]);
        }
        GossipMessage::Range(events) => {
            let records: Vec<Vec<u8>> = events.iter().map(F::encode_record).collect();
            return encode_range_frame(RawRange(&records));
        }
        GossipMessage::Bye => out.push(TAG_BYE),
        GossipMessage::Provisional(list) => {
            out.push(TAG_PROVISIONAL);
            // Events are bounded (the rules refuse larger ones before anyone holds them).
            out = postcard::to_extend(list, out).unwrap_or_else(|_| vec![0, 0, 0, 0, TAG_BYE]);
        }
        GossipMessage::Forks(list) => {
            out.push(TAG_FORKS);
            // Two bounded events per record.
            out = postcard::to_extend(list, out).unwrap_or_else(|_| vec![0, 0, 0, 0, TAG_BYE]);
        }
    }
    let n = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&n.to_be_bytes());
    out
}

/// Encodes a range frame from ledger records.
pub fn encode_range_frame(records: RawRange<'_>) -> Vec<u8> {
    let body: usize = records.0.iter().map(|r| 4 + r.len()).sum();
    let mut out = Vec::with_capacity(4 + 1 + 4 + body);
    out.extend_from_slice(&((1 + 4 + body) as u32).to_be_bytes());
    out.push(TAG_RANGE);
    out.extend_from_slice(&(records.0.len() as u32).to_be_bytes());
    for r in records.0 {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn take_u32(bytes: &mut &[u8], what: &'static str) -> Result<u32, GossipFrameError> {
    if bytes.len() < 4 {
        return Err(GossipFrameError::Undecodable { what, reason: "truncated".into() });
    }
    let (n, rest) = bytes.split_at(4);
    *bytes = rest;
    Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]))
}

/// Decodes one frame body (without its length prefix). Never panics.
pub fn decode_frame<F: RecordFormat>(frame: &[u8]) -> Result<GossipMessage, GossipFrameError> {
    decode_frame_inner::<F>(frame, None)
}

/// [`decode_frame`] keeping the frame: for a range, also the ledger record each event was
/// decoded from (validated access and the canonical check of `crate::store::record::decode_record`), so
/// the store keeps the received bytes rather than encoding the events again.
pub(crate) fn decode_frame_with_records<F: RecordFormat>(
    frame: Vec<u8>,
) -> Result<(GossipMessage, Option<RangeRecords>), GossipFrameError> {
    let mut spans = Vec::new();
    let msg = decode_frame_inner::<F>(&frame, Some(&mut spans))?;
    let records = matches!(msg, GossipMessage::Range(_)).then(|| RangeRecords::new(frame, spans));
    Ok((msg, records))
}

/// `spans`, if given, receives where in `frame` each record of a range is.
fn decode_frame_inner<F: RecordFormat>(
    frame: &[u8],
    mut spans: Option<&mut Vec<std::ops::Range<usize>>>,
) -> Result<GossipMessage, GossipFrameError> {
    if frame.len() > limits::GOSSIP_FRAME_BYTES_MAX {
        return Err(GossipFrameError::TooLarge {
            what: "frame",
            got: frame.len(),
            max: limits::GOSSIP_FRAME_BYTES_MAX,
        });
    }
    let (&tag, body) = frame.split_first().ok_or(GossipFrameError::Empty)?;
    let undecodable = |what, e: postcard::Error| GossipFrameError::Undecodable { what, reason: e.to_string() };
    let exact = |what, rest: &[u8]| {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(GossipFrameError::Undecodable { what, reason: format!("{} trailing bytes", rest.len()) })
        }
    };
    // postcard also reads overlong varints; only the one encoding of a message is accepted, so
    // no two frames mean the same message.
    fn canonical<T: serde::Serialize>(what: &'static str, value: &T, body: &[u8]) -> Result<(), GossipFrameError> {
        match postcard::to_stdvec(value) {
            Ok(again) if again == body => Ok(()),
            _ => Err(GossipFrameError::Undecodable { what, reason: "not the canonical encoding".into() }),
        }
    }
    match tag {
        TAG_HELLO => {
            let (d, rest): (Digest, _) = postcard::take_from_bytes(body).map_err(|e| undecodable("hello", e))?;
            exact("hello", rest)?;
            canonical("hello", &d, body)?;
            if d.peers.len() > limits::GOSSIP_PEERS_MAX {
                return Err(GossipFrameError::TooLarge {
                    what: "peer list",
                    got: d.peers.len(),
                    max: limits::GOSSIP_PEERS_MAX,
                });
            }
            if let Some(p) = d.peers.iter().find(|p| p.addr.len() > limits::ADDRESS_BYTES_MAX) {
                return Err(GossipFrameError::TooLarge {
                    what: "peer address",
                    got: p.addr.len(),
                    max: limits::ADDRESS_BYTES_MAX,
                });
            }
            Ok(GossipMessage::Hello(d))
        }
        TAG_REQUEST => {
            let ((from, max_events), rest): ((u64, u32), _) =
                postcard::take_from_bytes(body).map_err(|e| undecodable("request", e))?;
            exact("request", rest)?;
            canonical("request", &(from, max_events), body)?;
            Ok(GossipMessage::Request { from, max_events })
        }
        TAG_RANGE => {
            let mut rest = body;
            let count = take_u32(&mut rest, "range")? as usize;
            if count > limits::GOSSIP_BATCH_EVENTS_MAX {
                return Err(GossipFrameError::TooLarge {
                    what: "range",
                    got: count,
                    max: limits::GOSSIP_BATCH_EVENTS_MAX,
                });
            }
            let mut events = Vec::with_capacity(count.min(rest.len() / 8));
            let mut buf = rkyv::util::AlignedVec::new();
            for _ in 0..count {
                let len = take_u32(&mut rest, "range")? as usize;
                if len > limits::RECORD_BYTES_MAX {
                    return Err(GossipFrameError::TooLarge { what: "record", got: len, max: limits::RECORD_BYTES_MAX });
                }
                if rest.len() < len {
                    return Err(GossipFrameError::Undecodable { what: "range", reason: "truncated record".into() });
                }
                let at = frame.len() - rest.len();
                let (rec, tail) = rest.split_at(len);
                rest = tail;
                let ev = F::decode_record_with(rec, &mut buf)
                    .map_err(|e| GossipFrameError::Undecodable { what: "record", reason: e.to_string() })?;
                events.push(ev);
                if let Some(spans) = spans.as_deref_mut() {
                    spans.push(at..at + len);
                }
            }
            if !rest.is_empty() {
                return Err(GossipFrameError::Undecodable {
                    what: "range",
                    reason: format!("{} trailing bytes", rest.len()),
                });
            }
            Ok(GossipMessage::Range(events))
        }
        TAG_PROVISIONAL => {
            let (list, rest): (Vec<ProvisionalEvent>, _) =
                postcard::take_from_bytes(body).map_err(|e| undecodable("provisional", e))?;
            exact("provisional", rest)?;
            canonical("provisional", &list, body)?;
            if list.len() > limits::GOSSIP_PROVISIONAL_MAX {
                return Err(GossipFrameError::TooLarge {
                    what: "provisional list",
                    got: list.len(),
                    max: limits::GOSSIP_PROVISIONAL_MAX,
                });
            }
            Ok(GossipMessage::Provisional(list))
        }
        TAG_FORKS => {
            let (list, rest): (Vec<ForkEvidence>, _) =
                postcard::take_from_bytes(body).map_err(|e| undecodable("forks", e))?;
            exact("forks", rest)?;
            canonical("forks", &list, body)?;
            if list.len() > limits::GOSSIP_FORKS_MAX {
                return Err(GossipFrameError::TooLarge {
                    what: "fork evidence list",
                    got: list.len(),
                    max: limits::GOSSIP_FORKS_MAX,
                });
            }
            Ok(GossipMessage::Forks(list))
        }
        TAG_BYE if body.is_empty() => Ok(GossipMessage::Bye),
        TAG_BYE => Err(GossipFrameError::Undecodable { what: "bye", reason: "unexpected body".into() }),
        other => Err(GossipFrameError::UnknownTag(other)),
    }
}
