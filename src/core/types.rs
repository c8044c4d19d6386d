//! Identities and scalar value types of the spore data model.
//!
//! Everything here is plain data: no I/O, no clock. Every type that is part of a signed
//! event derives `serde` (its canonical BCS encoding, see `schema/events.md`) and `rkyv`
//! (its on-disk record encoding, see `schema/records.md`).

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::core::compact::Str;

/// The identity of a Mycelium network, exactly as the seed README's usage writes it.
///
/// Together with the founder's key it defines the [`NetworkFingerprint`], which every
/// signature in the network covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIdentity {
    /// Random identifier chosen when the network is formed.
    pub network_id: Uuid,
    /// Human-readable name; not unique, not trusted.
    pub network_name: String,
    /// When the network was formed. Stored at microsecond precision.
    pub genesis_timestamp: DateTime<Utc>,
}

impl NetworkIdentity {
    /// The identity in the form that is signed and stored (timestamp in microseconds).
    pub fn to_record(&self) -> NetworkIdentityRecord {
        NetworkIdentityRecord {
            network_id: self.network_id,
            network_name: self.network_name.clone(),
            genesis_timestamp: Timestamp::from_datetime(self.genesis_timestamp),
        }
    }
}

/// [`NetworkIdentity`] as it appears inside the genesis event: the timestamp is a
/// [`Timestamp`] (microseconds since the Unix epoch), so the encoding is exact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NetworkIdentityRecord {
    /// Random identifier chosen when the network is formed.
    pub network_id: Uuid,
    /// Human-readable name.
    pub network_name: String,
    /// When the network was formed.
    pub genesis_timestamp: Timestamp,
}

impl NetworkIdentityRecord {
    /// Back to the API form.
    pub fn to_identity(&self) -> NetworkIdentity {
        NetworkIdentity {
            network_id: self.network_id,
            network_name: self.network_name.clone(),
            genesis_timestamp: self.genesis_timestamp.to_datetime(),
        }
    }
}

/// A point in time, in microseconds since the Unix epoch (UTC).
///
/// Events carry the timestamp their author gave them; applying an event never reads the
/// clock, so replay is deterministic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// From a chrono time, truncated to microseconds.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Timestamp(t.timestamp_micros())
    }

    /// To a chrono time. Out-of-range values saturate to the Unix epoch.
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0).single().unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }
}

/// Binary formats (BCS, postcard) carry the `i64` of microseconds; human-readable ones (JSON,
/// TOML) an RFC 3339 string with microseconds. Both read back to the same value.
impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_newtype_struct("Timestamp", &self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "Timestamp")]
        struct Raw(i64);
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            DateTime::parse_from_rfc3339(&text)
                .map(|t| Timestamp::from_datetime(t.with_timezone(&Utc)))
                .map_err(|e| serde::de::Error::custom(format!("bad RFC 3339 time {text:?}: {e}")))
        } else {
            Raw::deserialize(d).map(|r| Timestamp(r.0))
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_datetime().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }
}

/// 32 bytes as four big-endian words: compared in order, they order exactly like the bytes.
#[inline]
fn be_words(b: &[u8; 32]) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (w, c) in w.iter_mut().zip(b.chunks_exact(8)) {
        let mut x = [0u8; 8];
        x.copy_from_slice(c);
        *w = u64::from_be_bytes(x);
    }
    w
}

macro_rules! hash32_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, Default,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(PartialEq, Eq, PartialOrd, Ord, Hash))]
        pub struct $name(pub [u8; 32]);

        /// The lexicographic order of the bytes (what `derive(Ord)` gives), compared as four
        /// big-endian words: the registries' `BTreeMap`s compare keys on every look-up, and
        /// this is inlined where the byte-slice order calls `memcmp`.
        impl Ord for $name {
            #[inline]
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                be_words(&self.0).cmp(&be_words(&other.0))
            }
        }

        impl PartialOrd for $name {
            #[inline]
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        /// Binary formats (BCS, postcard) carry the 32 bytes as a newtype of a fixed tuple;
        /// human-readable ones (JSON, TOML) a 64-character hex string.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    // On the stack: JSON answers carry several ids per record (the HTTP
                    // endpoint's lists), and an allocation each was a third of writing them.
                    let mut text = [0u8; 64];
                    hex::encode_to_slice(self.0, &mut text).map_err(serde::ser::Error::custom)?;
                    s.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
                } else {
                    s.serialize_newtype_struct(stringify!($name), &self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                struct Raw([u8; 32]);
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    Self::from_hex(&text).map_err(serde::de::Error::custom)
                } else {
                    Raw::deserialize(d).map(|r| Self(r.0))
                }
            }
        }

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 12 hex characters, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Result<Self, ParseIdError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s.trim(), &mut out)
                    .map_err(|_| ParseIdError { what: stringify!($name), input: s.to_string() })?;
                Ok(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }
    };
}

/// A hex string that is not a valid 32-byte identifier.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a valid {what}: expected 64 hex characters, got {input:?}")]
pub struct ParseIdError {
    what: &'static str,
    input: String,
}

hash32_newtype!(
    /// blake3 of the canonical genesis body (network identity + founder key). Every
    /// signature covers it, so nothing signed for one network verifies in another.
    NetworkFingerprint
);
hash32_newtype!(
    /// A node's identifier: its ed25519 public key (32 bytes). "Derived from the key" in the
    /// strongest sense — it *is* the key, so any event's author can be verified without a
    /// look-up, and a NodeId can never name two keys.
    NodeId
);
hash32_newtype!(
    /// A blake3 chain hash: `blake3(prev_hash || seq_be || event bytes)`.
    ChainHash
);

hash32_newtype!(
    /// The digest of a projection's state at a seq (`schema/encoding.md`, *State digest*):
    /// `blake3(DOMAIN_STATE_DIGEST ‖ BCS(ProjectionState))`. A state checkpoint event carries
    /// it, so the chain attests the state every replica must have reached.
    StateDigest
);

impl ChainHash {
    /// The `prev_hash` of the genesis event (sequence 0).
    pub const ZERO: ChainHash = ChainHash([0u8; 32]);
}

/// An ed25519 signature (64 bytes). Encoded as a fixed 64-byte tuple in BCS (and postcard),
/// as 128 hex characters in human-readable formats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if s.is_human_readable() {
            return s.serialize_str(&hex::encode(self.0));
        }
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SignatureBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(SignatureBytes(out))
            }
        }
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let mut out = [0u8; 64];
            hex::decode_to_slice(text.trim(), &mut out)
                .map_err(|e| serde::de::Error::custom(format!("bad signature hex: {e}")))?;
            return Ok(SignatureBytes(out));
        }
        d.deserialize_tuple(64, V)
    }
}

/// What part a node plays in the network.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum NodeRole {
    /// A Sclerotium: a Raft voter holding the Primary spore, and an admitting authority.
    Sclerotium,
    /// A Rhizomorph: a non-voting node that keeps Latent spores by gossip.
    Rhizomorph,
}

impl NodeRole {
    /// Whether nodes of this role may admit nodes, set trust scores and commit liveness.
    pub fn is_authority(self) -> bool {
        matches!(self, NodeRole::Sclerotium)
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Sclerotium => "sclerotium",
            NodeRole::Rhizomorph => "rhizomorph",
        })
    }
}

/// A trust score in per-mille: 0 (untrusted) ..= 1000 (fully trusted).
///
/// Integers, not floats, so the canonical encoding is exact on every platform.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TrustScore(pub u16);

impl TrustScore {
    /// The highest score.
    pub const MAX: TrustScore = TrustScore(1000);
    /// What a newly admitted node starts with.
    pub const INITIAL: TrustScore = TrustScore(500);

    /// The score as a fraction in `0.0..=1.0`.
    pub fn as_fraction(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl fmt::Display for TrustScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Where a service can be reached.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Endpoint {
    /// Protocol name, e.g. `quic`, `https`, `grpc`.
    pub protocol: Str,
    /// Address, e.g. `10.0.0.5:443` or a URL.
    pub address: Str,
}

/// The tier a piece of spore data comes from. Authority: Primary > Seed > Latent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SporeType {
    /// The Raft-committed chain (highest authority).
    Primary,
    /// A signed snapshot file (backup discovery, bootstrap, split-brain resolution).
    Seed,
    /// Chain ranges learned by gossip (peer-to-peer discovery fabric).
    Latent,
}

impl SporeType {
    /// Higher is more authoritative: Primary 3, Seed 2, Latent 1.
    pub fn authority(self) -> u8 {
        match self {
            SporeType::Primary => 3,
            SporeType::Seed => 2,
            SporeType::Latent => 1,
        }
    }
}

impl PartialOrd for SporeType {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SporeType {
    /// Ordered by authority: `Latent < Seed < Primary`.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.authority().cmp(&other.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-wise order of the 32-byte ids is the byte order.
    #[test]
    fn ids_order_like_their_bytes() {
        let mut ids: Vec<[u8; 32]> = (0..200u32)
            .map(|i| {
                let mut b = [0u8; 32];
                for (j, x) in b.iter_mut().enumerate() {
                    *x = (i.wrapping_mul(2_654_435_761).rotate_left(j as u32) >> (j % 7)) as u8 % 3;
                }
                b
            })
            .collect();
        ids.push([0xff; 32]);
        ids.push([0; 32]);
        for a in &ids {
            for b in &ids {
                assert_eq!(NodeId(*a).cmp(&NodeId(*b)), a.cmp(b));
                assert_eq!(ChainHash(*a).partial_cmp(&ChainHash(*b)), Some(a.cmp(b)));
            }
        }
    }

    #[test]
    fn spore_types_order_by_authority() {
        assert!(SporeType::Primary > SporeType::Seed);
        assert!(SporeType::Seed > SporeType::Latent);
    }

    #[test]
    fn ids_and_times_are_hex_and_rfc3339_in_json_and_raw_in_bcs() {
        let id = NodeId([0xab; 32]);
        let t = Timestamp(1_700_000_000_123_456);
        let json = serde_json::to_string(&(id, t)).expect("json");
        assert_eq!(json, format!("[\"{}\",\"2023-11-14T22:13:20.123456Z\"]", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<(NodeId, Timestamp)>(&json).expect("back"), (id, t));
        // BCS: the 32 raw bytes, then the i64 little-endian, nothing else.
        let bytes = bcs::to_bytes(&(id, t)).expect("bcs");
        let mut want = vec![0xab; 32];
        want.extend_from_slice(&t.0.to_le_bytes());
        assert_eq!(bytes, want);
        assert_eq!(bcs::from_bytes::<(NodeId, Timestamp)>(&bytes).expect("back"), (id, t));
        assert!(serde_json::from_str::<NodeId>("\"zz\"").is_err());
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = NodeId([7u8; 32]);
        assert_eq!(NodeId::from_hex(&id.to_hex()).ok(), Some(id));
        assert!(NodeId::from_hex("xyz").is_err());
    }

    #[test]
    fn timestamp_round_trips_at_microsecond_precision() {
        let t = Timestamp(1_700_000_000_123_456);
        assert_eq!(Timestamp::from_datetime(t.to_datetime()), t);
    }
}

/// A point of a chain: a sequence number and the chain hash there (which identifies the whole
/// prefix up to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainPoint {
    /// Its sequence number.
    pub seq: u64,
    /// Its chain hash.
    pub hash: ChainHash,
}
