//! Signatures an insider can craft with their own key, at the edges of ed25519 validity
//! (`schema/encoding.md`, *Signature validity*). Shared by the library's and the CLI's tests
//! (`tools/tests/cli.rs` includes this file by path).
//!
//! An RFC 8032 signature is `(R, s)` with `R = [r]B`, `s = r + k·a` and
//! `k = SHA-512(R ‖ A ‖ M)`. The author knows `a`, so they can choose `R` freely and still
//! satisfy the cofactored equation `[8][s]B = [8]R + [8][k]A` of ZIP-215.

#![allow(dead_code)]

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::{clamp_integer, Scalar};
use mycnet_spores::core::types::SignatureBytes;
use mycnet_spores::NodeKey;
use sha2::{Digest, Sha512};

/// The point of order 2, `(0, −1)`: `y = p − 1`, canonically encoded.
pub const ORDER_2_POINT: [u8; 32] = {
    let mut b = [0xff; 32];
    b[0] = 0xec;
    b[31] = 0x7f;
    b
};

/// The identity `(0, 1)` encoded non-canonically as `y = p + 1`.
pub const IDENTITY_NON_CANONICAL: [u8; 32] = {
    let mut b = [0xff; 32];
    b[0] = 0xee;
    b[31] = 0x7f;
    b
};

/// The group order `l = 2^252 + 27742317777372353535851937790883648493`, little-endian.
pub const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The secret scalar `a` and the nonce prefix of `key`, as RFC 8032 expands its seed.
fn expand(key: &NodeKey) -> (Scalar, [u8; 32]) {
    let h: [u8; 64] = Sha512::digest(key.to_seed()).into();
    let mut lower = [0u8; 32];
    lower.copy_from_slice(&h[..32]);
    let mut prefix = [0u8; 32];
    prefix.copy_from_slice(&h[32..]);
    (Scalar::from_bytes_mod_order(clamp_integer(lower)), prefix)
}

fn hash_scalar(parts: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    let wide: [u8; 64] = h.finalize().into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// A signature of `msg` whose `R` is exactly `r_bytes` and whose `s = r + k·a`.
fn sign_with_r(key: &NodeKey, msg: &[u8], r: Scalar, r_bytes: [u8; 32]) -> SignatureBytes {
    let (a, _) = expand(key);
    let k = hash_scalar(&[&r_bytes, key.node_id().as_bytes(), msg]);
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r_bytes);
    sig[32..].copy_from_slice(s.as_bytes());
    SignatureBytes(sig)
}

/// A signature with an order-2 torsion component in `R` (`R = [r]B + T₂`): the cofactored
/// equation holds, the cofactorless one does not.
pub fn torsioned(key: &NodeKey, msg: &[u8]) -> SignatureBytes {
    let (_, prefix) = expand(key);
    let r = hash_scalar(&[&prefix, msg, b"torsion"]);
    let t2: EdwardsPoint = CompressedEdwardsY(ORDER_2_POINT).decompress().expect("(0, -1) is a curve point");
    let big_r = EdwardsPoint::mul_base(&r) + t2;
    sign_with_r(key, msg, r, big_r.compress().to_bytes())
}

/// A signature whose `R` is the identity encoded non-canonically (`r = 0`, `s = k·a`).
pub fn non_canonical_r(key: &NodeKey, msg: &[u8]) -> SignatureBytes {
    sign_with_r(key, msg, Scalar::ZERO, IDENTITY_NON_CANONICAL)
}

/// `sig` with `s` replaced by `s + l` (the same scalar, non-canonically encoded).
pub fn non_canonical_s(sig: SignatureBytes) -> SignatureBytes {
    let mut out = sig;
    let mut carry = 0u16;
    for (i, l) in GROUP_ORDER.iter().enumerate() {
        let v = u16::from(sig.0[32 + i]) + u16::from(*l) + carry;
        out.0[32 + i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0, "s + l fits in 256 bits for any s < l");
    out
}
