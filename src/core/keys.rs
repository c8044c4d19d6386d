//! Node keys (ed25519) and signature verification with a key cache and batching.
//!
//! One validity rule (normative in `schema/encoding.md`, *Signature validity*): a signature is
//! valid when it passes ZIP-215 verification (through `ed25519-zebra`) for the author's key, and
//! the author's key is a curve point that is not of small order. Batches are a fast path that
//! can never change a verdict: ZIP-215 batch verification agrees with single verification,
//! whatever else shares the batch. ed25519-dalek stays for keys and signing.

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha512};

use super::types::{NodeId, SignatureBytes};

/// A node's secret signing key. Its public half is the node's [`NodeId`].
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.node_id().short())
    }
}

impl NodeKey {
    /// A key from its 32-byte secret seed (deterministic: for tests, generators and key files).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey { signing: SigningKey::from_bytes(&seed) }
    }

    /// The 32-byte secret seed. Handle with care.
    pub fn to_seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The node id (= public key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// The public key as a verifier.
    pub fn verifying_key(&self) -> PublicKey {
        let dalek = self.signing.verifying_key();
        PublicKey {
            zip215: ed25519_zebra::VerificationKey::from(&ed25519_zebra::SigningKey::from(self.signing.to_bytes())),
            point: dalek.to_edwards(),
            bytes: dalek.to_bytes(),
        }
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> SignatureBytes {
        SignatureBytes(self.signing.sign(msg).to_bytes())
    }

    /// The underlying dalek key (for TLS certificates).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// A decompressed, checked ed25519 public key: a valid curve point that is not of small order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The single-signature verifier of the rule.
    zip215: ed25519_zebra::VerificationKey,
    /// The decompressed point `A`, kept for batches (decompression is ~12 % of a verify).
    point: EdwardsPoint,
    /// `A` as the author's node id encodes it (hashed into `k` as sent).
    bytes: [u8; 32],
}

impl PublicKey {
    /// Decompresses a node id; fails for bytes that are not a curve point or are a weak
    /// (small-order) key. This is the key rule of `schema/encoding.md`: the same bytes give the
    /// same answer everywhere, and admission refuses what this refuses.
    pub fn from_node_id(id: &NodeId) -> Option<Self> {
        // Non-canonical encodings of a point are decoded, not refused, as ZIP-215 says; the
        // small-order test is `[8]A = identity`.
        let point = CompressedEdwardsY(*id.as_bytes()).decompress()?;
        if point.is_small_order() {
            return None;
        }
        let zip215 = ed25519_zebra::VerificationKey::try_from(*id.as_bytes()).ok()?;
        Some(PublicKey { zip215, point, bytes: *id.as_bytes() })
    }

    /// Whether `sig` is a valid signature of `msg` by this key under the one validity rule
    /// ([ZIP-215]: `s` canonical, `R` any encoding of a curve point, and the cofactored equation
    /// `[8][s]B = [8]R + [8][k]A`), as `ed25519-zebra` implements it. [`verify_many`] reaches
    /// the same verdict in any batch.
    ///
    /// [ZIP-215]: https://zips.z.cash/zip-0215
    pub fn verify_msg(&self, msg: &[u8], sig: &SignatureBytes) -> bool {
        self.zip215.verify(&ed25519_zebra::Signature::from_bytes(&sig.0), msg).is_ok()
    }
}

/// Caches decompressed verifying keys per author (decompression is ~12 % of a verify).
///
/// Bounded: when it holds [`VerifierCache::CAPACITY`] keys it is cleared, which costs at most
/// one decompression per author afterwards.
#[derive(Default, Debug)]
pub struct VerifierCache {
    keys: HashMap<NodeId, Option<PublicKey>>,
}

impl VerifierCache {
    /// The most keys kept before the cache is cleared.
    pub const CAPACITY: usize = 65_536;

    /// The key for `id`, or `None` if the bytes are not a valid, strong public key.
    pub fn key(&mut self, id: &NodeId) -> Option<PublicKey> {
        if let Some(k) = self.keys.get(id) {
            return *k;
        }
        if self.keys.len() >= Self::CAPACITY {
            self.keys.clear();
        }
        let k = PublicKey::from_node_id(id);
        self.keys.insert(*id, k);
        k
    }
}

/// Domain of the hash that seeds a batch's coefficients.
const DOMAIN_BATCH_COEFFICIENTS: &str = "mycnet-spores/v1/batch-verification-coefficients";

/// The ZIP-215 batch equation over `items` (every key valid):
/// `[8]( [−Σ zᵢsᵢ]B + Σ [zᵢ]Rᵢ + Σ_A [Σ_{i by A} zᵢkᵢ]A ) = identity`, with 128-bit `zᵢ`. It is
/// `ed25519-zebra`'s batch equation (terms of one key coalesced) over the keys the cache
/// already decompressed, which zebra's batch API would decompress again.
///
/// The coefficients come from a CSPRNG seeded with a hash of every input of the batch (each
/// `R`, `A`, `s` and the challenge `k`, which commits to the message), as BIP 340 specifies for
/// batches of Schnorr signatures: no author can pick a signature after seeing its coefficient,
/// since the coefficient depends on it, so an invalid signature passes with probability
/// 2^-128, and verification needs no randomness from the operating system (the core reads
/// none) and reproduces exactly. `false` when it fails or when a signature is malformed (`s`
/// not canonical, `R` not a point): the caller then checks each item alone.
fn batch_ok(items: &[(PublicKey, &[u8], SignatureBytes)]) -> bool {
    // First pass: parse, compute each challenge and hash everything into the seed.
    let mut parsed = Vec::with_capacity(items.len());
    let mut seed = blake3::Hasher::new_derive_key(DOMAIN_BATCH_COEFFICIENTS);
    for (key, msg, sig) in items {
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&sig.0[..32]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&sig.0[32..]);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else { return false };
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(key.bytes);
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        seed.update(&r_bytes);
        seed.update(&key.bytes);
        seed.update(&s_bytes);
        seed.update(k.as_bytes());
        parsed.push((key, r, s, k));
    }
    let mut rng = <rand10::rngs::StdRng as rand10::SeedableRng>::from_seed(*seed.finalize().as_bytes());
    let rng = &mut rng;
    let mut scalars = Vec::with_capacity(2 * items.len() + 1);
    let mut points = Vec::with_capacity(2 * items.len() + 1);
    scalars.push(Scalar::ZERO);
    points.push(ED25519_BASEPOINT_POINT);
    // Coalesced `A` coefficients, by key, after the `R` terms.
    let mut key_terms: Vec<(EdwardsPoint, Scalar)> = Vec::new();
    let mut key_index: HashMap<CompressedEdwardsY, usize> = HashMap::new();
    let mut b_coeff = Scalar::ZERO;
    for (key, r, s, k) in parsed {
        let a_bytes = key.bytes;
        let mut z_bytes = [0u8; 32];
        rand10::Rng::fill_bytes(rng, &mut z_bytes[..16]);
        let z = Scalar::from_bytes_mod_order(z_bytes);
        b_coeff -= z * s;
        scalars.push(z);
        points.push(r);
        let at = *key_index.entry(CompressedEdwardsY(a_bytes)).or_insert_with(|| {
            key_terms.push((key.point, Scalar::ZERO));
            key_terms.len() - 1
        });
        key_terms[at].1 += z * k;
    }
    scalars[0] = b_coeff;
    for (a, coeff) in key_terms {
        scalars.push(coeff);
        points.push(a);
    }
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

/// Verifies `(author, message, signature)` triples; returns one verdict per item, in order.
///
/// One rule for every item, alone or batched ([`PublicKey::verify_msg`], ZIP-215): the batch
/// equation is cofactored with coefficients derived from the whole batch (see `batch_ok`), so a batch passes exactly when each of its
/// signatures would pass alone (up to a 2^-128 chance), and no verdict depends on which other
/// signatures share the batch. When the batch fails, each item is checked alone to find the
/// bad one(s). Items whose key is invalid are `false` and kept out of the batch.
pub fn verify_many(cache: &mut VerifierCache, items: &[(NodeId, &[u8], SignatureBytes)]) -> Vec<bool> {
    let keys: Vec<Option<PublicKey>> = items.iter().map(|(id, _, _)| cache.key(id)).collect();
    let valid: Vec<(PublicKey, &[u8], SignatureBytes)> =
        items.iter().zip(&keys).filter_map(|((_, msg, sig), k)| k.map(|k| (k, *msg, *sig))).collect();
    if !valid.is_empty() && batch_ok(&valid) {
        return keys.iter().map(Option::is_some).collect();
    }
    items.iter().zip(keys).map(|((_, msg, sig), k)| k.is_some_and(|k| k.verify_msg(msg, sig))).collect()
}

/// The signing messages of a batch of signatures, back to back, each with its author and
/// signature: built one at a time, then checked together by [`verify_many`].
#[derive(Default)]
pub(crate) struct SigningBatch {
    msgs: Vec<u8>,
    /// Author, end offset of the message in `msgs`, signature.
    items: Vec<(NodeId, usize, SignatureBytes)>,
}

impl SigningBatch {
    /// An empty batch with room for `n` signatures.
    pub(crate) fn with_capacity(n: usize) -> Self {
        SigningBatch { msgs: Vec::with_capacity(n * 320), items: Vec::with_capacity(n) }
    }

    /// Adds the signature over the event whose canonical encoding is `canonical` (its signing
    /// message is a rearrangement of those bytes). An encoding always holds the fixed fields;
    /// if it did not, the message would be empty and the signature would not verify.
    pub(crate) fn push_canonical(&mut self, author: NodeId, signature: SignatureBytes, canonical: &[u8]) {
        let _ = crate::core::event::signing_message_from_canonical(canonical, &mut self.msgs);
        self.items.push((author, self.msgs.len(), signature));
    }

    /// Adds the signature of `event`, encoding its signing message.
    pub(crate) fn push_event(&mut self, event: &crate::core::event::SignedEvent) {
        event.write_signing_message(&mut self.msgs);
        self.items.push((event.author, self.msgs.len(), event.signature));
    }

    /// One verdict per signature added, in order ([`verify_many`]).
    pub(crate) fn verify(&self, cache: &mut VerifierCache) -> Vec<bool> {
        let mut start = 0;
        let items: Vec<(NodeId, &[u8], SignatureBytes)> = self
            .items
            .iter()
            .map(|&(author, end, signature)| {
                let msg = &self.msgs[start..end];
                start = end;
                (author, msg, signature)
            })
            .collect();
        verify_many(cache, &items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_finds_the_one_bad_signature() {
        let keys: Vec<NodeKey> = (0..8u8).map(|i| NodeKey::from_seed([i + 1; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<SignatureBytes> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        sigs[5].0[3] ^= 1;
        let items: Vec<(NodeId, &[u8], SignatureBytes)> =
            keys.iter().zip(&msgs).zip(&sigs).map(|((k, m), s)| (k.node_id(), m.as_slice(), *s)).collect();
        let verdicts = verify_many(&mut VerifierCache::default(), &items);
        assert_eq!(verdicts.iter().filter(|v| !**v).count(), 1);
        assert!(!verdicts[5]);
    }

    #[test]
    fn invalid_key_bytes_never_verify() {
        let k = NodeKey::from_seed([9; 32]);
        let sig = k.sign(b"m");
        // The identity point is a weak key.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let verdicts = verify_many(&mut VerifierCache::default(), &[(NodeId(weak), b"m".as_slice(), sig)]);
        assert_eq!(verdicts, vec![false]);
    }
}
