//! Service health checks, sans-IO: which checks a node runs for the services it offers, when
//! each is due, and when a run of results flips a service between passing and critical.
//!
//! The node layer does the I/O (a TCP connect, an HTTP GET, a TTL refreshed through the API)
//! and feeds each result in with the time; this module answers with the probes to run next
//! and the **transitions** only. A service flips after `flips_after` consecutive results that
//! disagree with its state, so a check that alternates at every interval never flips (no
//! flapping); only transitions are meant to become signed events, never a heartbeat per
//! check. Everything is bounded: checks per node, probes in flight, the interval and the
//! timeout ([`CheckLimits`]).
//!
//! Time is a [`Millis`] count the caller picks (tests drive it by hand, as quinn-proto's do).
//!
//! A check travels with its service, in the service's metadata ([`CheckSpec`]); the node layer
//! (`node/checks.rs`) runs the checks of the services its node offers and commits each
//! transition as a `service_health_changed` event.

mod spec;

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::core::limits;
pub use spec::{
    BadCheck, CheckKind, CheckSpec, CHECK_METADATA_KEY, FLIPS_AFTER_MAX, INTERVAL_MAX, INTERVAL_MIN, TIMEOUT_MAX,
};

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// The bounds a node applies to the checks it runs (the chain bounds every check's settings,
/// [`CheckSpec::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckLimits {
    /// Most checks one node runs.
    pub per_node: usize,
    /// Most probes in flight at once.
    pub in_flight: usize,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits { per_node: limits::CHECKED_SERVICES_PER_NODE_MAX, in_flight: 64 }
    }
}

/// A service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Health {
    /// Its checks pass.
    Passing,
    /// Its checks fail.
    Critical,
}

/// A service flipped: the only output meant for the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The service.
    pub service: Uuid,
    /// Its new health.
    pub to: Health,
    /// Why, for the event and the log.
    pub reason: String,
}

/// A probe the caller is to run now; answer with [`Checks::result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The service.
    pub service: Uuid,
    /// What to probe.
    pub kind: CheckKind,
    /// How long it may take (ms).
    pub timeout: Millis,
}

/// Why a check is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckRefusal {
    /// The node runs as many checks as it may.
    #[error("this node runs {max} checks already, the most it may")]
    TooMany {
        /// The bound.
        max: usize,
    },
    /// A setting outside the bounds.
    #[error("check setting out of bounds: {0}")]
    OutOfBounds(&'static str),
    /// A TTL refresh for a service without a TTL check.
    #[error("service {0} has no TTL check")]
    NoTtlCheck(Uuid),
}

#[derive(Clone, Debug)]
struct Entry {
    spec: CheckSpec,
    health: Health,
    /// Consecutive results against `health`.
    against: u8,
    /// When the next probe is due, or (TTL) when the check expires.
    due: Millis,
    in_flight: bool,
    /// The result that made `health` what it is.
    why: String,
}

/// The checks one node runs. New checks start from the health the caller gives (passing for a
/// new service, which is registered because it runs) and are first probed within one interval
/// after they are added, at an offset the service id spreads.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    limits: CheckLimits,
    entries: BTreeMap<Uuid, Entry>,
}

impl Checks {
    /// No checks yet, under `limits`.
    pub fn new(limits: CheckLimits) -> Self {
        Checks { limits, entries: BTreeMap::new() }
    }

    /// How many checks run.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The health of `service`, if it has a check.
    pub fn health(&self, service: &Uuid) -> Option<Health> {
        self.entries.get(service).map(|e| e.health)
    }

    /// Adds (or replaces) the check of `service` at `now`, starting from `health` (what the
    /// chain says of the service: a node that restarts goes on from there).
    pub fn add(&mut self, service: Uuid, spec: CheckSpec, health: Health, now: Millis) -> Result<(), CheckRefusal> {
        if !self.entries.contains_key(&service) && self.entries.len() >= self.limits.per_node {
            return Err(CheckRefusal::TooMany { max: self.limits.per_node });
        }
        spec.check().map_err(CheckRefusal::OutOfBounds)?;
        // Probes of checks added together are spread over the interval (by the service id,
        // which is random), not fired in one burst every interval.
        let first_due = match spec.kind {
            CheckKind::Ttl(ttl) => now + ttl,
            _ => now + (service.as_u128() % u128::from(spec.interval)) as Millis,
        };
        let why = String::from("as the chain says");
        self.entries.insert(service, Entry { spec, health, against: 0, due: first_due, in_flight: false, why });
        Ok(())
    }

    /// The health of `service` and the result that made it so, if it has a check.
    pub fn state(&self, service: &Uuid) -> Option<(Health, &str)> {
        self.entries.get(service).map(|e| (e.health, e.why.as_str()))
    }

    /// The spec `service` is checked by, if any.
    pub fn spec(&self, service: &Uuid) -> Option<&CheckSpec> {
        self.entries.get(service).map(|e| &e.spec)
    }

    /// The services checked, in id order.
    pub fn services(&self) -> impl Iterator<Item = &Uuid> {
        self.entries.keys()
    }

    /// Stops checking `service` (deregistered).
    pub fn remove(&mut self, service: &Uuid) {
        self.entries.remove(service);
    }

    /// The probes due at `now`, at most as many as free in-flight slots; each is in flight
    /// until its [`Checks::result`]. Also expires TTL checks not refreshed in time, as failed
    /// results.
    pub fn due(&mut self, now: Millis) -> (Vec<Probe>, Vec<Transition>) {
        let mut transitions = Vec::new();
        let expired: Vec<Uuid> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.spec.kind, CheckKind::Ttl(_)) && e.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(e) = self.entries.get_mut(&id) {
                if let CheckKind::Ttl(ttl) = e.spec.kind {
                    e.due = now + ttl;
                }
            }
            transitions.extend(self.record(id, false, "TTL expired without a refresh"));
        }
        let mut free = self.limits.in_flight.saturating_sub(self.entries.values().filter(|e| e.in_flight).count());
        let mut probes = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if free == 0 {
                break;
            }
            if e.in_flight || e.due > now || matches!(e.spec.kind, CheckKind::Ttl(_)) {
                continue;
            }
            e.in_flight = true;
            free -= 1;
            probes.push(Probe { service: *id, kind: e.spec.kind.clone(), timeout: e.spec.timeout });
        }
        (probes, transitions)
    }

    /// The outcome of a probe [`Checks::due`] handed out (a probe that timed out failed).
    pub fn result(&mut self, service: Uuid, passed: bool, now: Millis, why: &str) -> Option<Transition> {
        let e = self.entries.get_mut(&service)?;
        e.in_flight = false;
        e.due = now + e.spec.interval;
        self.record(service, passed, why)
    }

    /// The owner says a TTL check passes, at `now`.
    pub fn pass_ttl(&mut self, service: Uuid, now: Millis) -> Result<Option<Transition>, CheckRefusal> {
        let e = self.entries.get_mut(&service).ok_or(CheckRefusal::NoTtlCheck(service))?;
        let CheckKind::Ttl(ttl) = e.spec.kind else { return Err(CheckRefusal::NoTtlCheck(service)) };
        e.due = now + ttl;
        Ok(self.record(service, true, "TTL refreshed"))
    }

    /// Counts one result and flips the state after enough against it in a row.
    fn record(&mut self, service: Uuid, passed: bool, why: &str) -> Option<Transition> {
        let e = self.entries.get_mut(&service)?;
        let agrees = (e.health == Health::Passing) == passed;
        if agrees {
            e.against = 0;
            return None;
        }
        e.against = e.against.saturating_add(1);
        if e.against < e.spec.flips_after {
            return None;
        }
        e.against = 0;
        e.health = if passed { Health::Passing } else { Health::Critical };
        e.why = why.to_string();
        Some(Transition { service, to: e.health, reason: why.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::CheckRefusal::OutOfBounds;
    use super::*;

    fn tcp(flips_after: u8) -> CheckSpec {
        CheckSpec { kind: CheckKind::Tcp("10.0.0.5:80".into()), interval: 10_000, timeout: 2_000, flips_after }
    }

    /// Runs every probe due at `now` with `outcome`, and returns the transitions.
    fn round(c: &mut Checks, now: Millis, outcome: bool) -> Vec<Transition> {
        let (probes, mut out) = c.due(now);
        for p in probes {
            out.extend(c.result(p.service, outcome, now + 1, "probe"));
        }
        out
    }

    #[test]
    fn a_service_flips_only_after_enough_results_in_a_row() {
        let mut c = Checks::new(CheckLimits::default());
        let s = Uuid::from_u128(1);
        c.add(s, tcp(3), Health::Passing, 0).expect("add");
        assert!(c.due(0).0.is_empty(), "first probe at the offset of its id within the interval");
        assert!(round(&mut c, 10_000, false).is_empty());
        assert!(round(&mut c, 20_001, false).is_empty());
        let t = round(&mut c, 30_002, false);
        assert_eq!(t, vec![Transition { service: s, to: Health::Critical, reason: "probe".into() }]);
        assert_eq!(c.health(&s), Some(Health::Critical));
        assert!(round(&mut c, 40_003, false).is_empty(), "no event while it stays critical");
        assert!(round(&mut c, 50_004, true).is_empty());
        assert!(round(&mut c, 60_005, true).is_empty());
        assert_eq!(round(&mut c, 70_006, true).first().map(|t| t.to), Some(Health::Passing));
    }

    #[test]
    fn a_check_flapping_at_every_interval_never_flips() {
        let mut c = Checks::new(CheckLimits::default());
        let s = Uuid::from_u128(2);
        c.add(s, tcp(2), Health::Passing, 0).expect("add");
        let mut now = 10_000;
        for i in 0..100 {
            assert!(round(&mut c, now, i % 2 == 0).is_empty(), "round {i}");
            now += 10_001;
        }
        assert_eq!(c.health(&s), Some(Health::Passing));
    }

    #[test]
    fn probes_in_flight_and_checks_per_node_are_bounded() {
        let limits = CheckLimits { per_node: 100, in_flight: 8 };
        let mut c = Checks::new(limits);
        for i in 0..100 {
            c.add(Uuid::from_u128(i), tcp(1), Health::Passing, 0).expect("within the bound");
        }
        assert_eq!(c.add(Uuid::from_u128(100), tcp(1), Health::Passing, 0), Err(CheckRefusal::TooMany { max: 100 }));
        assert!(c.add(Uuid::from_u128(5), tcp(2), Health::Passing, 0).is_ok(), "replacing a check is no new one");
        // A target that hangs: its probes stay in flight until they time out, and hold their
        // slot meanwhile; nothing more is handed out.
        let (first, _) = c.due(10_000);
        assert_eq!(first.len(), 8);
        assert!(c.due(10_500).0.is_empty(), "every slot is taken");
        let t = c.result(first[0].service, false, 12_000, "timed out after 2 s");
        assert_eq!(t.map(|t| t.to), Some(Health::Critical));
        assert_eq!(c.due(12_000).0.len(), 1, "one slot free again");
    }

    #[test]
    fn settings_outside_the_bounds_are_refused() {
        let mut c = Checks::new(CheckLimits::default());
        let id = Uuid::from_u128(3);
        let with = |f: fn(&mut CheckSpec)| {
            let mut s = tcp(3);
            f(&mut s);
            s
        };
        let refused = |c: &mut Checks, spec| c.add(id, spec, Health::Passing, 0).err();
        let timeout = "the timeout must be at most 10 s and at most the interval";
        assert_eq!(refused(&mut c, with(|s| s.interval = 10)), Some(OutOfBounds("the interval must be 1 s to 1 day")));
        assert_eq!(refused(&mut c, with(|s| s.timeout = 20_000)), Some(OutOfBounds(timeout)));
        assert_eq!(refused(&mut c, with(|s| s.timeout = 0)), Some(OutOfBounds(timeout)));
        assert_eq!(refused(&mut c, with(|s| s.flips_after = 0)), Some(OutOfBounds("flips must be 1 to 10")));
        assert_eq!(
            refused(&mut c, with(|s| s.kind = CheckKind::Ttl(5))),
            Some(OutOfBounds("the TTL must be 1 s to 1 day"))
        );
        assert!(c.is_empty());
    }

    #[test]
    fn a_ttl_never_refreshed_goes_critical_and_a_refresh_brings_it_back() {
        let mut c = Checks::new(CheckLimits::default());
        let s = Uuid::from_u128(4);
        let ttl = CheckSpec { kind: CheckKind::Ttl(30_000), interval: 0, timeout: 0, flips_after: 1 };
        c.add(s, ttl, Health::Passing, 0).expect("add");
        assert_eq!(c.pass_ttl(s, 20_000), Ok(None));
        let (probes, t) = c.due(49_999);
        assert!(probes.is_empty() && t.is_empty(), "refreshed at 20 s: due at 50 s");
        let (_, t) = c.due(50_000);
        assert_eq!(
            t.first().map(|t| (t.to, t.reason.as_str())),
            Some((Health::Critical, "TTL expired without a refresh"))
        );
        assert_eq!(c.pass_ttl(s, 51_000).expect("ttl").map(|t| t.to), Some(Health::Passing));
        assert_eq!(c.pass_ttl(Uuid::from_u128(9), 0), Err(CheckRefusal::NoTtlCheck(Uuid::from_u128(9))));
        c.add(Uuid::from_u128(5), tcp(1), Health::Passing, 0).expect("add");
        assert!(c.pass_ttl(Uuid::from_u128(5), 0).is_err(), "not a TTL check");
    }
}
