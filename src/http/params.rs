//! Query parameters and path segments as the endpoint takes them: each checked when read, a bad
//! one refused naming the parameter ([`ParamError`], a 400). Also the minimum trust as the CLI's
//! `--min-trust` takes it ([`parse_trust`]), so both read it alike.

use crate::core::limits::{NAME_BYTES_MAX, PAGE_LIMIT_MAX};
use crate::core::projection::NodeStatus;
use crate::core::types::{NodeId, TrustScore};

/// A query parameter or path segment that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The query string is not `name=value&…` in URL encoding.
    #[error("malformed query string: {0}")]
    Malformed(String),
    /// A parameter this route does not take.
    #[error("unknown query parameter `{name}` (this route takes: {allowed})")]
    Unknown {
        /// The parameter given.
        name: String,
        /// The ones the route takes.
        allowed: String,
    },
    /// A parameter given twice.
    #[error("query parameter `{0}` is given more than once")]
    Repeated(&'static str),
    /// A value that does not parse.
    #[error("`{name}`: {value:?} is not {expected}")]
    Invalid {
        /// The parameter (or path segment, or header).
        name: &'static str,
        /// The value given (cut to 80 characters).
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A number out of its range.
    #[error("`{name}`: {value} is outside {min}..={max}")]
    OutOfRange {
        /// The parameter.
        name: &'static str,
        /// The value given.
        value: u64,
        /// The smallest taken.
        min: u64,
        /// The largest taken.
        max: u64,
    },
    /// A text value longer than any name the registry holds.
    #[error("`{name}` is {len} bytes, more than the {max} a name may have")]
    TooLong {
        /// The parameter.
        name: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A minimum trust that is not a fraction from 0.0 to 1.0.
    #[error("`{name}`: {source}")]
    Trust {
        /// The parameter.
        name: &'static str,
        /// Why.
        #[source]
        source: TrustParseError,
    },
}

/// A trust score that is not a fraction from 0.0 to 1.0 ([`parse_trust`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustParseError {
    /// Not a number.
    #[error("{0:?} is not a number from 0.0 to 1.0")]
    NotANumber(String),
    /// A number outside 0.0..=1.0.
    #[error("{0} is outside 0.0 to 1.0")]
    OutOfRange(String),
}

/// A trust score written as a fraction from 0.0 to 1.0 (`0.75`), as `--min-trust` and the
/// `min_trust` parameter take it; kept in thousandths, rounded.
pub fn parse_trust(s: &str) -> Result<TrustScore, TrustParseError> {
    let f: f64 = s.trim().parse().map_err(|_| TrustParseError::NotANumber(s.to_string()))?;
    if !(0.0..=1.0).contains(&f) {
        return Err(TrustParseError::OutOfRange(s.to_string()));
    }
    // In range, so the rounded thousandths fit a u16.
    Ok(TrustScore((f * 1000.0).round() as u16))
}

/// A value as an error shows it: at most 80 characters.
fn shown(value: &str) -> String {
    value.chars().take(80).collect()
}

/// A node id: 64 hex characters.
pub(crate) fn node_id(name: &'static str, value: &str) -> Result<NodeId, ParamError> {
    NodeId::from_hex(value).map_err(|_| ParamError::Invalid {
        name,
        value: shown(value),
        expected: "a node id (64 hex characters)",
    })
}

/// A service id: a UUID.
pub(crate) fn service_id(name: &'static str, value: &str) -> Result<uuid::Uuid, ParamError> {
    uuid::Uuid::parse_str(value).map_err(|_| ParamError::Invalid { name, value: shown(value), expected: "a UUID" })
}

/// A sequence number.
pub(crate) fn seq(name: &'static str, value: &str) -> Result<u64, ParamError> {
    value.trim().parse().map_err(|_| ParamError::Invalid {
        name,
        value: shown(value),
        expected: "a sequence number (a decimal integer from 0)",
    })
}

/// The query parameters of one request, each name one the route takes, given at most once.
#[derive(Debug)]
pub(crate) struct Params {
    pairs: Vec<(&'static str, String)>,
}

impl Params {
    /// Checks `pairs` (the decoded query string) against the names the route takes.
    pub(crate) fn new(pairs: Vec<(String, String)>, allowed: &[&'static str]) -> Result<Params, ParamError> {
        let mut out: Vec<(&'static str, String)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let Some(known) = allowed.iter().find(|a| **a == name) else {
                return Err(ParamError::Unknown { name: shown(&name), allowed: allowed.join(", ") });
            };
            if out.iter().any(|(n, _)| n == known) {
                return Err(ParamError::Repeated(known));
            }
            out.push((known, value));
        }
        Ok(Params { pairs: out })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// A name (service name, capability): non-empty, at most [`NAME_BYTES_MAX`] bytes.
    pub(crate) fn name(&self, name: &'static str) -> Result<Option<String>, ParamError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        if v.is_empty() {
            return Err(ParamError::Invalid { name, value: String::new(), expected: "a non-empty name" });
        }
        if v.len() > NAME_BYTES_MAX {
            return Err(ParamError::TooLong { name, len: v.len(), max: NAME_BYTES_MAX });
        }
        Ok(Some(v.to_string()))
    }

    /// A sequence number.
    pub(crate) fn seq(&self, name: &'static str) -> Result<Option<u64>, ParamError> {
        self.get(name).map(|v| seq(name, v)).transpose()
    }

    /// A count in `min..=max`.
    pub(crate) fn count(&self, name: &'static str, min: u64, max: u64) -> Result<Option<u64>, ParamError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let n: u64 = v.trim().parse().map_err(|_| ParamError::Invalid {
            name,
            value: shown(v),
            expected: "a count (a decimal integer)",
        })?;
        if !(min..=max).contains(&n) {
            return Err(ParamError::OutOfRange { name, value: n, min, max });
        }
        Ok(Some(n))
    }

    /// A flag: `true`, `false`, `1`, `0`, or present without a value (true); absent is false.
    pub(crate) fn flag(&self, name: &'static str) -> Result<bool, ParamError> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ParamError::Invalid { name, value: shown(v), expected: "true or false" }),
        }
    }

    /// A node id.
    pub(crate) fn node(&self, name: &'static str) -> Result<Option<NodeId>, ParamError> {
        self.get(name).map(|v| node_id(name, v)).transpose()
    }

    /// A page's limit: `1..=`[`PAGE_LIMIT_MAX`], or 0 (the default limit) when absent.
    pub(crate) fn limit(&self, name: &'static str) -> Result<u32, ParamError> {
        // In range, so it fits a u32.
        Ok(self.count(name, 1, u64::from(PAGE_LIMIT_MAX))?.map_or(0, |n| n as u32))
    }

    /// A cursor into the services: the service id a page ended at (`spores-next-cursor`).
    pub(crate) fn service_cursor(&self, name: &'static str) -> Result<Option<uuid::Uuid>, ParamError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        uuid::Uuid::try_parse(v).map(Some).map_err(|_| ParamError::Invalid {
            name,
            value: shown(v),
            expected: "a cursor (the spores-next-cursor of the page before: a service id)",
        })
    }

    /// A cursor into the nodes: the node id a page ended at (`spores-next-cursor`).
    pub(crate) fn node_cursor(&self, name: &'static str) -> Result<Option<NodeId>, ParamError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        NodeId::from_hex(v).map(Some).map_err(|_| ParamError::Invalid {
            name,
            value: shown(v),
            expected: "a cursor (the spores-next-cursor of the page before: a node id)",
        })
    }

    /// A node status: `active`, `offline` or `left`.
    pub(crate) fn status(&self, name: &'static str) -> Result<Option<NodeStatus>, ParamError> {
        self.get(name)
            .map(|v| {
                parse_status(v).ok_or_else(|| ParamError::Invalid {
                    name,
                    value: shown(v),
                    expected: "a node status: active, offline or left",
                })
            })
            .transpose()
    }

    /// The query string of the same request with `name` set to `value` (URL encoded, in the
    /// order given, `name` last): the next page's link.
    pub(crate) fn with(&self, name: &'static str, value: &str) -> String {
        let kept = self.pairs.iter().filter(|(n, _)| *n != name);
        let pairs: Vec<String> = kept
            .map(|(n, v)| format!("{n}={}", url_encoded(v)))
            .chain(std::iter::once(format!("{name}={}", url_encoded(value))))
            .collect();
        pairs.join("&")
    }

    /// A minimum trust, from 0.0 to 1.0.
    pub(crate) fn trust(&self, name: &'static str) -> Result<Option<TrustScore>, ParamError> {
        self.get(name).map(|v| parse_trust(v).map_err(|source| ParamError::Trust { name, source })).transpose()
    }

    /// Event kinds, comma-separated (`service_registered,node_joined`): each lowercase letters
    /// and underscores, at most 16 of them.
    pub(crate) fn kinds(&self, name: &'static str) -> Result<Vec<String>, ParamError> {
        let Some(v) = self.get(name) else { return Ok(Vec::new()) };
        let kinds: Vec<&str> = v.split(',').collect();
        let well_formed =
            |k: &&str| !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if kinds.len() > KINDS_MAX || !kinds.iter().all(well_formed) {
            return Err(ParamError::Invalid {
                name,
                value: shown(v),
                expected: "event kinds (such as service_registered), comma-separated, at most 16",
            });
        }
        Ok(kinds.into_iter().map(str::to_string).collect())
    }
}

/// A node status as `status=` and `spore query nodes --status` take it: `active`, `offline`,
/// `left`.
pub fn parse_status(s: &str) -> Option<NodeStatus> {
    match s.trim() {
        "active" => Some(NodeStatus::Active),
        "offline" => Some(NodeStatus::Offline),
        "left" => Some(NodeStatus::Left),
        _ => None,
    }
}

/// `value` as a query-string component: unreserved bytes as they are, every other byte
/// `%XX`.
fn url_encoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Most event kinds one filter names.
const KINDS_MAX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)], allowed: &[&'static str]) -> Result<Params, ParamError> {
        Params::new(q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(), allowed)
    }

    #[test]
    fn trust_is_a_fraction_in_thousandths() {
        assert_eq!(parse_trust("0.75"), Ok(TrustScore(750)));
        assert_eq!(parse_trust("1"), Ok(TrustScore(1000)));
        assert_eq!(parse_trust("0.0005"), Ok(TrustScore(1)));
        assert!(matches!(parse_trust("1.5"), Err(TrustParseError::OutOfRange(_))));
        assert!(matches!(parse_trust("NaN"), Err(TrustParseError::OutOfRange(_))));
        assert!(matches!(parse_trust("high"), Err(TrustParseError::NotANumber(_))));
    }

    #[test]
    fn unknown_repeated_and_malformed_parameters_are_named() {
        assert!(matches!(params(&[("x", "1")], &["from"]), Err(ParamError::Unknown { .. })));
        assert_eq!(params(&[("from", "1"), ("from", "2")], &["from"]).err(), Some(ParamError::Repeated("from")));
        let p = params(
            &[("from", "x"), ("limit", "0"), ("on", "maybe"), ("kind", "Bad-Kind")],
            &["from", "limit", "on", "kind"],
        )
        .expect("known names");
        assert!(matches!(p.seq("from"), Err(ParamError::Invalid { name: "from", .. })));
        assert!(matches!(p.count("limit", 1, 10), Err(ParamError::OutOfRange { value: 0, .. })));
        assert!(matches!(p.flag("on"), Err(ParamError::Invalid { name: "on", .. })));
        assert!(p.kinds("kind").is_err());
        let p = params(&[("on", ""), ("kind", "node_joined,service_registered")], &["on", "kind"]).expect("known");
        assert_eq!(p.flag("on"), Ok(true));
        assert_eq!(p.kinds("kind").expect("kinds"), vec!["node_joined", "service_registered"]);
        let p = params(&[("cursor", "nope"), ("limit", "10001"), ("status", "gone")], &["cursor", "limit", "status"])
            .expect("known names");
        assert!(matches!(p.service_cursor("cursor"), Err(ParamError::Invalid { name: "cursor", .. })));
        assert!(matches!(p.node_cursor("cursor"), Err(ParamError::Invalid { name: "cursor", .. })));
        assert!(matches!(p.limit("limit"), Err(ParamError::OutOfRange { value: 10_001, .. })));
        assert!(matches!(p.status("status"), Err(ParamError::Invalid { name: "status", .. })));
        let p = params(&[("name", "a b&c"), ("cursor", "x")], &["name", "cursor"]).expect("known");
        assert_eq!(p.with("cursor", "y"), "name=a%20b%26c&cursor=y", "the next page's query string");
        let long = "n".repeat(NAME_BYTES_MAX + 1);
        let p = params(&[("name", &long)], &["name"]).expect("known");
        assert!(matches!(p.name("name"), Err(ParamError::TooLong { .. })));
    }
}
