//! A health check as a service carries it: [`CheckSpec`], its text form in the service's
//! metadata under [`CHECK_METADATA_KEY`] (`schema/rules.md`, *Health*), and the bounds the
//! chain's rules hold every check to.
//!
//! ```text
//! tcp HOST:PORT  [interval=10s] [timeout=2s] [flips=3]
//! http URL       [interval=10s] [timeout=2s] [flips=3]     (URL: http://HOST:PORT/PATH)
//! ttl DURATION   [flips=1]
//! ```
//!
//! Durations are a whole number with `ms`, `s`, `m` or `h`. [`CheckSpec`]'s `Display` writes
//! the canonical form, which parses back to the same spec.

use super::Millis;
use crate::core::limits;

/// The metadata key whose value is a service's check (at most one per service).
pub const CHECK_METADATA_KEY: &str = "spores.check";

/// Shortest interval (and TTL) the rules accept (ms).
pub const INTERVAL_MIN: Millis = 1_000;
/// Longest interval (and TTL) the rules accept (ms): one day.
pub const INTERVAL_MAX: Millis = 86_400_000;
/// Longest probe timeout the rules accept (ms); never longer than the interval either.
pub const TIMEOUT_MAX: Millis = 10_000;
/// Most consecutive results a flip may ask for.
pub const FLIPS_AFTER_MAX: u8 = 10;

/// What a check probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect to `HOST:PORT` succeeds within the timeout.
    Tcp(String),
    /// An HTTP GET of the URL (`http://HOST:PORT/PATH`) answers 2xx within the timeout.
    Http(String),
    /// The owner refreshes the check through the API at least every `ttl` ms; nothing is
    /// probed.
    Ttl(Millis),
}

/// One service's check as the owner asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// What is probed.
    pub kind: CheckKind,
    /// How often (ms; TTL checks ignore it).
    pub interval: Millis,
    /// How long one probe may take (ms); a probe that takes longer failed.
    pub timeout: Millis,
    /// Consecutive results against the current state that flip it (at least 1).
    pub flips_after: u8,
}

/// Why a check's text is not a check the rules accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad health check {text:?}: {why}")]
pub struct BadCheck {
    /// The text as given (cut to 80 bytes).
    pub text: String,
    /// What is wrong.
    pub why: &'static str,
}

impl CheckSpec {
    /// A TCP connect check of `addr` with the default interval (10 s), timeout (2 s) and
    /// flips (3).
    pub fn tcp(addr: impl Into<String>) -> Self {
        CheckSpec { kind: CheckKind::Tcp(addr.into()), interval: 10_000, timeout: 2_000, flips_after: 3 }
    }

    /// An HTTP GET check of `url` (`http://…`) with the defaults of [`CheckSpec::tcp`].
    pub fn http(url: impl Into<String>) -> Self {
        CheckSpec { kind: CheckKind::Http(url.into()), ..CheckSpec::tcp("") }
    }

    /// A TTL check: critical unless refreshed at least every `ttl` ms (flips at once).
    pub fn ttl(ttl: Millis) -> Self {
        CheckSpec { kind: CheckKind::Ttl(ttl), interval: ttl, timeout: 0, flips_after: 1 }
    }

    /// Parses the text form (see the module doc) and checks it against the bounds.
    pub fn parse(text: &str) -> Result<CheckSpec, BadCheck> {
        let bad = |why| BadCheck { text: text.chars().take(80).collect(), why };
        let mut words = text.split_whitespace();
        let (kind, target) = (words.next().ok_or(bad("empty"))?, words.next().ok_or(bad("no target"))?);
        let mut spec = match kind {
            "tcp" => CheckSpec::tcp(target),
            "http" => CheckSpec::http(target),
            "ttl" => CheckSpec::ttl(duration(target).ok_or(bad("the TTL is not a duration"))?),
            _ => return Err(bad("the kind must be tcp, http or ttl")),
        };
        for word in words {
            let (k, v) = word.split_once('=').ok_or(bad("an option must be name=value"))?;
            match (k, &spec.kind) {
                ("interval", CheckKind::Tcp(_) | CheckKind::Http(_)) => {
                    spec.interval = duration(v).ok_or(bad("interval is not a duration"))?
                }
                ("timeout", CheckKind::Tcp(_) | CheckKind::Http(_)) => {
                    spec.timeout = duration(v).ok_or(bad("timeout is not a duration"))?
                }
                ("flips", _) => spec.flips_after = v.parse().map_err(|_| bad("flips is not a number"))?,
                _ => return Err(bad("unknown option for this kind of check")),
            }
        }
        spec.check().map_err(bad)?;
        Ok(spec)
    }

    /// Checks the spec against the bounds the rules hold every check to.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.flips_after == 0 || self.flips_after > FLIPS_AFTER_MAX {
            return Err("flips must be 1 to 10");
        }
        let target_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= limits::ADDRESS_BYTES_MAX
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        match &self.kind {
            CheckKind::Ttl(ttl) if !(INTERVAL_MIN..=INTERVAL_MAX).contains(ttl) => Err("the TTL must be 1 s to 1 day"),
            CheckKind::Ttl(_) => Ok(()),
            CheckKind::Tcp(addr) if !target_ok(addr) || !addr.contains(':') => Err("the target must be HOST:PORT"),
            CheckKind::Http(url) if !target_ok(url) || !url.starts_with("http://") => {
                Err("the target must be an http:// URL")
            }
            _ if !(INTERVAL_MIN..=INTERVAL_MAX).contains(&self.interval) => Err("the interval must be 1 s to 1 day"),
            _ if self.timeout == 0 || self.timeout > TIMEOUT_MAX || self.timeout > self.interval => {
                Err("the timeout must be at most 10 s and at most the interval")
            }
            _ => Ok(()),
        }
    }

    /// The check a service's metadata carries: `None` without one, the parsed spec or why it
    /// is not one. Two entries under the key are refused.
    pub fn from_metadata<T: AsRef<str>>(metadata: &[(T, T)]) -> Option<Result<CheckSpec, BadCheck>> {
        let mut found = metadata.iter().filter(|(k, _)| k.as_ref() == CHECK_METADATA_KEY);
        let first = found.next()?;
        if found.next().is_some() {
            return Some(Err(BadCheck {
                text: first.1.as_ref().chars().take(80).collect(),
                why: "a service has one check",
            }));
        }
        Some(CheckSpec::parse(first.1.as_ref()))
    }

    /// The metadata entry that carries this check.
    pub fn metadata_entry(&self) -> (String, String) {
        (CHECK_METADATA_KEY.to_string(), self.to_string())
    }
}

impl std::fmt::Display for CheckSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            CheckKind::Ttl(ttl) => write!(f, "ttl {} flips={}", Dur(*ttl), self.flips_after),
            CheckKind::Tcp(t) | CheckKind::Http(t) => {
                let kind = if matches!(self.kind, CheckKind::Tcp(_)) { "tcp" } else { "http" };
                let (i, to, n) = (Dur(self.interval), Dur(self.timeout), self.flips_after);
                write!(f, "{kind} {t} interval={i} timeout={to} flips={n}")
            }
        }
    }
}

/// A duration in its shortest exact unit.
struct Dur(Millis);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ms if ms != 0 && ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms != 0 && ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

fn duration(text: &str) -> Option<Millis> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: Millis = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_text_form_parses_with_defaults_and_prints_back() {
        let s = CheckSpec::parse("tcp 10.0.0.5:80").expect("tcp");
        assert_eq!(s, CheckSpec::tcp("10.0.0.5:80"));
        assert_eq!(s.to_string(), "tcp 10.0.0.5:80 interval=10s timeout=2s flips=3");
        let h = CheckSpec::parse("http http://h:8080/health interval=1m timeout=500ms flips=2").expect("http");
        assert_eq!((h.interval, h.timeout, h.flips_after), (60_000, 500, 2));
        assert_eq!(CheckSpec::parse(&h.to_string()), Ok(h));
        let t = CheckSpec::parse("ttl 30s").expect("ttl");
        assert_eq!(t.kind, CheckKind::Ttl(30_000));
        assert_eq!(CheckSpec::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn checks_outside_the_bounds_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "empty"),
            ("udp h:1", "the kind must be tcp, http or ttl"),
            ("tcp h:1 interval=10ms", "the interval must be 1 s to 1 day"),
            ("tcp h:1 timeout=20s", "the timeout must be at most 10 s and at most the interval"),
            ("tcp h:1 interval=1s timeout=2s", "the timeout must be at most 10 s and at most the interval"),
            ("tcp h:1 flips=0", "flips must be 1 to 10"),
            ("tcp nohost", "the target must be HOST:PORT"),
            ("http ftp://h/", "the target must be an http:// URL"),
            ("ttl 5ms", "the TTL must be 1 s to 1 day"),
            ("ttl 30s interval=5s", "unknown option for this kind of check"),
            ("tcp h:1 interval=99999999999999999999s", "interval is not a duration"),
        ] {
            assert_eq!(CheckSpec::parse(text).map_err(|e| e.why), Err(why), "{text:?}");
        }
        let two = vec![CheckSpec::tcp("h:1").metadata_entry(), CheckSpec::ttl(5_000).metadata_entry()];
        assert!(matches!(CheckSpec::from_metadata(&two), Some(Err(_))));
        assert_eq!(CheckSpec::from_metadata(&[("k", "v")]), None);
    }

    proptest! {
        /// Any text: a spec or a reason, never a panic; a spec prints back to itself.
        #[test]
        fn any_text_parses_or_is_refused(text in ".{0,120}") {
            if let Ok(spec) = CheckSpec::parse(&text) {
                prop_assert_eq!(CheckSpec::parse(&spec.to_string()), Ok(spec));
            }
        }
    }
}
