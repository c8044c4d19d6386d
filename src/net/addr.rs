//! Network addresses as operators write them: `HOST:PORT`, checked before anything is bound,
//! joined or committed.
//!
//! A host is an IPv4 address, an IPv6 address in brackets (`[::1]:7400`) or a DNS name (letters,
//! digits, `-`, `_` and dots between non-empty labels). A peer's port is 1..=65535; a listen
//! address may also use port 0 (any free port, the bound one is announced). Nothing here
//! resolves a name: that happens when the transport dials or binds.

use std::net::{Ipv4Addr, Ipv6Addr};

/// What is wrong with an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressProblem {
    /// No `:PORT` at the end.
    #[error("expected HOST:PORT")]
    MissingPort,
    /// The port is not a decimal number.
    #[error("port {0:?} is not a number")]
    BadPort(String),
    /// The port is a number outside the allowed range.
    #[error("port {port} is out of range {min}..=65535")]
    PortOutOfRange {
        /// The port given.
        port: u64,
        /// The smallest port allowed here (1 for a peer, 0 for a listen address).
        min: u16,
    },
    /// Nothing before the port.
    #[error("no host before the port")]
    EmptyHost,
    /// An IPv6 address without brackets (`::1:7400` is ambiguous).
    #[error("an IPv6 address goes in brackets: [ADDRESS]:PORT")]
    UnbracketedIpv6,
    /// The host is neither an IP address nor a DNS name.
    #[error("host {0:?} is not an IP address or a DNS name")]
    BadHost(String),
}

/// An address that is not `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {problem}")]
pub struct AddressError {
    /// The address as given.
    pub input: String,
    /// What is wrong with it.
    pub problem: AddressProblem,
}

/// Checks a peer's address: `HOST:PORT` with the port in 1..=65535.
pub fn check_peer_addr(addr: &str) -> Result<(), AddressError> {
    check(addr, 1)
}

/// Checks an address to listen on: `HOST:PORT` with the port in 0..=65535 (0: any free port).
pub fn check_listen_addr(addr: &str) -> Result<(), AddressError> {
    check(addr, 0)
}

fn check(addr: &str, min_port: u16) -> Result<(), AddressError> {
    parse(addr, min_port).map_err(|problem| AddressError { input: addr.to_string(), problem })
}

fn parse(addr: &str, min_port: u16) -> Result<(), AddressProblem> {
    let (host, port) = addr.rsplit_once(':').ok_or(AddressProblem::MissingPort)?;
    if port.is_empty() {
        return Err(AddressProblem::MissingPort);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 12 {
        return Err(AddressProblem::BadPort(port.to_string()));
    }
    let number: u64 = port.parse().map_err(|_| AddressProblem::BadPort(port.to_string()))?;
    if number < u64::from(min_port) || number > u64::from(u16::MAX) {
        return Err(AddressProblem::PortOutOfRange { port: number, min: min_port });
    }
    if host.is_empty() {
        return Err(AddressProblem::EmptyHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner.strip_suffix(']').is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        return if ok { Ok(()) } else { Err(AddressProblem::BadHost(host.to_string())) };
    }
    if host.contains(':') {
        return Err(AddressProblem::UnbracketedIpv6);
    }
    if host.parse::<Ipv4Addr>().is_ok() || is_dns_name(host) {
        Ok(())
    } else {
        Err(AddressProblem::BadHost(host.to_string()))
    }
}

/// A DNS name: at most 253 characters of labels (1..=63 of letters, digits, `-`, `_`; not
/// starting or ending with `-`) separated by dots, the last not all digits (`300.1.1.1` is a
/// mistyped IPv4 address, not a name); a trailing dot is allowed.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && !name.rsplit('.').next().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_operators_write() {
        for a in ["127.0.0.1:7400", "[::1]:7400", "node-1.example.org:1", "localhost:65535", "n_1:80"] {
            assert_eq!(check_peer_addr(a), Ok(()), "{a}");
        }
        assert_eq!(check_listen_addr("0.0.0.0:0"), Ok(()));
    }

    #[test]
    fn names_what_is_wrong() {
        let problem = |a: &str| check_peer_addr(a).map_err(|e| e.problem).err();
        assert_eq!(problem("not-an-addr"), Some(AddressProblem::MissingPort));
        assert_eq!(problem("host:"), Some(AddressProblem::MissingPort));
        assert_eq!(problem("host:99999"), Some(AddressProblem::PortOutOfRange { port: 99999, min: 1 }));
        assert_eq!(problem("host:0"), Some(AddressProblem::PortOutOfRange { port: 0, min: 1 }));
        assert_eq!(problem("host:http"), Some(AddressProblem::BadPort("http".into())));
        assert_eq!(problem("host:-1"), Some(AddressProblem::BadPort("-1".into())));
        assert_eq!(problem(":7400"), Some(AddressProblem::EmptyHost));
        assert_eq!(problem("::1:7400"), Some(AddressProblem::UnbracketedIpv6));
        assert_eq!(problem("[::zz]:7400"), Some(AddressProblem::BadHost("[::zz]".into())));
        assert_eq!(problem("a b:7400"), Some(AddressProblem::BadHost("a b".into())));
        assert_eq!(problem("-a.org:7400"), Some(AddressProblem::BadHost("-a.org".into())));
        assert_eq!(problem("300.1.1.1:7400"), Some(AddressProblem::BadHost("300.1.1.1".into())));
        let e = check_peer_addr("h:99999").expect_err("out of range");
        assert_eq!(e.to_string(), "invalid address \"h:99999\": port 99999 is out of range 1..=65535");
    }
}
