//! TLS 1.3 with RFC 7250 raw public keys: the node's ed25519 key is its only TLS material.
//!
//! Both sides present their key as a 44-byte Ed25519 `SubjectPublicKeyInfo` instead of a
//! certificate. The client pins the exact key it expects ([`PeerNode::node`]); the server
//! requires a client key, and the endpoint checks it against the admission policy as soon as
//! the handshake ends and the protocol (ALPN) is known. Only the ring provider is used, passed
//! explicitly to every config builder (no process-wide default is installed or consulted).
//! Session resumption and 0-RTT are off: every connection proves its key afresh and is checked
//! against the admission policy as it is now.
//!
//! [`PeerNode::node`]: crate::wire::rpc::PeerNode

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::core::keys::{NodeKey, PublicKey};
use crate::core::types::NodeId;
use crate::net::TransportError;

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Length of an Ed25519 `SubjectPublicKeyInfo`.
pub const ED25519_SPKI_LEN: usize = ED25519_SPKI_PREFIX.len() + 32;

/// The `SubjectPublicKeyInfo` DER of a node key (what RFC 7250 sends in place of a certificate).
pub fn node_spki(id: &NodeId) -> [u8; ED25519_SPKI_LEN] {
    let mut out = [0u8; ED25519_SPKI_LEN];
    out[..ED25519_SPKI_PREFIX.len()].copy_from_slice(&ED25519_SPKI_PREFIX);
    out[ED25519_SPKI_PREFIX.len()..].copy_from_slice(id.as_bytes());
    out
}

/// The node id in an Ed25519 `SubjectPublicKeyInfo`, if `spki` is exactly one and the key is a
/// valid, strong (not small-order) ed25519 point.
pub fn node_id_from_spki(spki: &[u8]) -> Option<NodeId> {
    if spki.len() != ED25519_SPKI_LEN || spki[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&spki[ED25519_SPKI_PREFIX.len()..]);
    let id = NodeId(key);
    PublicKey::from_node_id(&id).map(|_| id)
}

/// The node id a raw-public-key peer presented (`peer_certificates()` of a rustls session).
pub(super) fn node_id_from_chain(chain: &[CertificateDer<'_>]) -> Option<NodeId> {
    match chain {
        [only] => node_id_from_spki(only.as_ref()),
        _ => None,
    }
}

fn setup_err(what: &str, e: impl fmt::Display) -> TransportError {
    TransportError::Refused { peer: "local TLS setup".into(), reason: format!("{what}: {e}") }
}

/// The ring provider, built explicitly (never the process default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This node's TLS identity: its key as a raw public key, and the crypto provider.
pub(super) struct Identity {
    pub(super) me: NodeId,
    certified: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.me.short())
    }
}

impl Identity {
    /// Loads `key` through the ring provider's key loader (PKCS#8 v1/v2 DER from dalek).
    pub(super) fn new(key: &NodeKey) -> Result<Self, TransportError> {
        let provider = provider();
        let der = key.signing_key().to_pkcs8_der().map_err(|e| setup_err("encode node key", e))?;
        // The PKCS#8 document zeroizes itself on drop; the copy handed to rustls is consumed by
        // the loader, which keeps only ring's own key pair.
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec()));
        let signer = provider.key_provider.load_private_key(der).map_err(|e| setup_err("load node key", e))?;
        let me = key.node_id();
        let spki = node_spki(&me);
        if let Some(theirs) = signer.public_key() {
            if theirs.as_ref() != spki.as_slice() {
                return Err(setup_err("load node key", "provider derived a different public key"));
            }
        }
        let certified = Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki.to_vec())], signer));
        Ok(Identity { me, certified, provider })
    }

    /// The server side: presents our key, requires and checks the client's.
    pub(super) fn server_config(&self, alpns: &[&[u8]]) -> Result<QuicServerConfig, TransportError> {
        let verifier = Arc::new(AnyClientKey { algs: self.provider.signature_verification_algorithms });
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup_err("server TLS config", e))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(
                self.certified.clone(),
            )));
        cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        cfg.max_early_data_size = 0;
        QuicServerConfig::try_from(cfg).map_err(|e| setup_err("server QUIC config", e))
    }

    /// The client side for one dial: presents our key, accepts only `expected` (any ed25519
    /// key when `None`: operator tools that learn the node's key from the session).
    pub(super) fn client_config(
        &self,
        expected: Option<NodeId>,
        alpn: &[u8],
    ) -> Result<QuicClientConfig, TransportError> {
        let verifier = Arc::new(PinnedServerKey { expected, algs: self.provider.signature_verification_algorithms });
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup_err("client TLS config", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(
                self.certified.clone(),
            )));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.enable_early_data = false;
        QuicClientConfig::try_from(cfg).map_err(|e| setup_err("client QUIC config", e))
    }
}

/// Checks a TLS 1.3 `CertificateVerify` signature against a raw Ed25519 key.
fn verify_raw(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algs,
    )
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

fn bad_key() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
}

/// Client-side verifier: the server must present exactly the key we dialed.
#[derive(Debug)]
struct PinnedServerKey {
    expected: Option<NodeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(bad_key());
        }
        let Some(presented) = node_id_from_spki(end_entity.as_ref()) else {
            tracing::warn!(expected = ?self.expected, "peer presented something other than an ed25519 raw public key");
            return Err(bad_key());
        };
        if self.expected.is_some_and(|expected| presented != expected) {
            tracing::warn!(expected = ?self.expected, presented = %presented, "peer presented the wrong node key");
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_raw(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Server-side verifier: the client must present an ed25519 raw public key (and prove it holds
/// it, through the TLS 1.3 `CertificateVerify`). *Which* keys may use which protocol is decided
/// right after the handshake, once the ALPN is known (see `serve_connection`): the Raft
/// protocol needs an admitted key, the read-only admin protocol any key.
struct AnyClientKey {
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for AnyClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyClientKey").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for AnyClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(bad_key());
        }
        if node_id_from_spki(end_entity.as_ref()).is_none() {
            tracing::warn!("refused a client that presented something other than an ed25519 raw public key");
            return Err(bad_key());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_raw(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_rejects_everything_else() {
        let key = NodeKey::from_seed([3; 32]);
        let spki = node_spki(&key.node_id());
        assert_eq!(node_id_from_spki(&spki), Some(key.node_id()));
        assert_eq!(node_id_from_spki(&spki[..43]), None);
        let mut other_oid = spki;
        other_oid[8] = 0x71; // Ed448
        assert_eq!(node_id_from_spki(&other_oid), None);
        // A small-order point is refused.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert_eq!(node_id_from_spki(&node_spki(&NodeId(weak))), None);
    }

    #[test]
    fn ring_derives_the_same_spki_from_the_pkcs8_key() {
        let key = NodeKey::from_seed([4; 32]);
        let id = Identity::new(&key).expect("identity");
        assert_eq!(id.certified.cert[0].as_ref(), node_spki(&key.node_id()).as_slice());
        let signer = id.certified.key.clone();
        assert_eq!(signer.public_key().map(|k| k.as_ref().to_vec()), Some(node_spki(&key.node_id()).to_vec()));
    }
}
