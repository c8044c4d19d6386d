// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod cluster;
mod crafted;
mod decoders;
mod durability;
mod embedded;
mod faults;
mod fixture;
mod forensics;
mod full_disk;
mod golden;
mod health;
mod http;
mod inputs;
mod kill;
mod latent;
mod latent_quic;
mod layers;
mod ledger_tampering;
mod members;
mod metrics;
mod partition_heal;
mod primary;
mod projection_props;
mod quic;
mod scrub;
mod seed_export;
mod signatures;
mod split_brain;
mod split_brain_quic;
mod split_rule;
mod tiers;
mod udp_proxy;
mod wait;
mod wan;
mod watch;
