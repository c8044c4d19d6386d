//! The Prometheus metrics a node serves (`SporeSystem::metrics_text`, `/metrics`): the
//! documented names, with values that follow the node.

use mycnet_spores::core::health::CheckSpec;
use mycnet_spores::SporeSystem;

/// The value of the sample `name` (with its labels, as written) in `text`.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_its_raft_ledger_and_checks_as_prometheus_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = SporeSystem::builder().data_dir(dir.path().join("n")).private_network().build();
    n.initialize(crate::cluster::identity("metrics")).await.expect("initialize");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let check = CheckSpec::tcp(listener.local_addr().expect("addr").to_string());
    n.register_service_with_check("db", vec![], vec![], vec![], check).await.expect("register");
    let head = n.head().expect("head").expect("formed").seq;
    let text = n.metrics_text().expect("metrics");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    assert_eq!(sample(&text, "spores_raft_is_leader"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "spores_raft_voters"), Some(1.0));
    assert_eq!(sample(&text, "spores_ledger_head_seq"), Some(head as f64));
    assert_eq!(sample(&text, "spores_ledger_halted"), Some(0.0));
    assert_eq!(sample(&text, "spores_mode{mode=\"normal operation\"}"), Some(1.0), "{text}");
    let passing = sample(&text, "spores_health_checks{health=\"passing\"}");
    assert!(passing.is_some(), "{text}");
    // The write path's histograms and counter, recorded as the writes happened.
    let appended = sample(&text, "spores_ledger_events_appended_total").expect("events appended");
    assert!(appended >= 1.0, "{text}");
    assert!(sample(&text, "spores_ledger_write_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "spores_raft_log_sync_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    for name in ["spores_raft_term", "spores_raft_elections_total", "spores_seed_exports_total"] {
        assert!(text.contains(&format!("\n{name} ")), "{name} missing:\n{text}");
    }
    n.export_seed(dir.path().join("s.seed"), false).await.expect("export");
    assert_eq!(sample(&n.metrics_text().expect("metrics"), "spores_seed_exports_total"), Some(1.0));
    n.shutdown().await.expect("shutdown");

    // Off: nothing is recorded on the write path, the rest is still read at scrape time.
    let off = SporeSystem::builder().data_dir(dir.path().join("off")).private_network().metrics(false).build();
    off.initialize(crate::cluster::identity("metrics-off")).await.expect("initialize");
    let text = off.metrics_text().expect("metrics");
    assert_eq!(sample(&text, "spores_raft_is_leader"), Some(1.0));
    assert!(!text.contains("spores_ledger_write_seconds"), "{text}");
    off.shutdown().await.expect("shutdown");
}

/// Every metric `schema/metrics.md` documents is reported by a node on QUIC (which gossips),
/// and the node reports none the document leaves out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_metrics_are_the_reported_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/metrics.md")).expect("doc");
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.starts_with("spores_"))
        .collect();
    assert!(documented.len() > 25, "the table was read: {documented:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let n = SporeSystem::builder().data_dir(dir.path().join("n")).addr("127.0.0.1:0").build();
    n.initialize(crate::cluster::identity("metrics-doc")).await.expect("initialize");
    let text = n.metrics_text().expect("metrics");
    for name in &documented {
        // Replication lag and the members' round trips are reported by a node with members to
        // call, the backup metrics by a node with a backup schedule; this one has neither.
        if *name == "spores_raft_replication_lag_entries"
            || name.starts_with("spores_backup")
            || name.starts_with("spores_peer_")
        {
            continue;
        }
        assert!(text.contains(name), "{name} is documented but not reported:\n{text}");
    }
    assert!(!text.contains(".."), "help texts end without a doubled period");
    // Every family the node reports (its `# TYPE` line) is documented.
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()) {
        assert!(documented.iter().any(|d| d.starts_with(family)), "{family} is reported but not documented");
    }
    n.shutdown().await.expect("shutdown");
}
