//! Health-check bench (issue 21): what running 1,000 TCP checks every 10 s costs the node
//! that offers the services, in CPU of one core.
//!
//! Run: `cargo bench --bench health`. Two embedded nodes, one after the other, each with
//! 1,000 services registered: without checks (the baseline: Raft's heartbeats, the upkeep),
//! then with a TCP check each (`tcp 127.0.0.1:PORT interval=10s timeout=2s flips=3`) against
//! a listener in this process that accepts and closes (its accepts count against the checks,
//! so the figure is an upper bound). Each criterion sample is one 10 s window — every check
//! probed once — and its "time" is the process's CPU time in that window (user + system,
//! `/proc/self/stat`). Prints the CPU share of one core with checks, without, and the
//! difference (target ≤ 2 %).
//!
//! `SPORES_BENCH_HEALTH_WINDOW_MS` shortens the window for a quick look (default 10000).

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use mycnet_spores::core::health::CheckSpec;
use mycnet_spores::{NetworkIdentity, ServiceFilter, SporeSystem};

const SERVICES: usize = 1_000;

/// The process's CPU time so far (user + system, every thread, the exited ones too).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name).
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn window() -> Duration {
    let ms = std::env::var("SPORES_BENCH_HEALTH_WINDOW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// A formed one-node network with `SERVICES` services, each with `check` if given.
async fn node(dir: &std::path::Path, check: Option<CheckSpec>) -> SporeSystem {
    let n = SporeSystem::builder().data_dir(dir).private_network().build();
    n.initialize(NetworkIdentity {
        network_id: uuid::Uuid::new_v4(),
        network_name: "health-bench".into(),
        genesis_timestamp: chrono::Utc::now(),
    })
    .await
    .expect("initialize");
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        match &check {
            Some(c) => n.register_service_with_check(&name, vec![], vec![], vec![], c.clone()).await,
            None => n.register_service(&name, vec![], vec![], vec![]).await,
        }
        .expect("register");
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let target = listener.local_addr().expect("addr");
    rt.spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    let check = CheckSpec::parse(&format!("tcp {target} interval=10s timeout=2s flips=3")).expect("spec");
    let window = window();
    let results: Mutex<Vec<(&str, Vec<Duration>)>> = Mutex::new(Vec::new());
    let mut g = c.benchmark_group("health_checks_cpu_per_window");
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_nanos(1));
    g.measurement_time(Duration::from_millis(1));
    for (label, spec) in [("1000_services_no_checks", None), ("1000_tcp_checks_every_10s", Some(check))] {
        let n = rt.block_on(node(&dir.path().join(label), spec.clone()));
        if spec.is_some() {
            // Every check registered is probed by the node itself (none is left out as critical).
            let all = n.find_services(&ServiceFilter::default()).expect("query").len();
            assert_eq!(all, SERVICES, "every checked service passes");
        }
        let mut windows = Vec::new();
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let before = cpu();
                    rt.block_on(async { tokio::time::sleep(window).await });
                    let used = cpu().saturating_sub(before);
                    windows.push(used);
                    spent += used;
                }
                spent
            })
        });
        let critical = n.find_services(&ServiceFilter::default().include_critical()).expect("query").len()
            - n.find_services(&ServiceFilter::default()).expect("query").len();
        assert_eq!(critical, 0, "no check failed against a listener that accepts");
        rt.block_on(n.shutdown()).expect("shutdown");
        results.lock().expect("results").push((label, windows));
    }
    g.finish();
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let results = results.into_inner().expect("results");
    println!("\n=== health summary: CPU of one core, {} s windows ===", window.as_secs_f64());
    let share = |d: Duration| 100.0 * d.as_secs_f64() / window.as_secs_f64();
    for (label, windows) in &results {
        println!("{label:>32}: median {:.2} % ({} windows)", share(median(windows)), windows.len());
    }
    if let [(_, base), (_, checked)] = &results[..] {
        let cost = share(median(checked)) - share(median(base));
        println!("1,000 TCP checks every 10 s cost {cost:.2} % of one core (target <= 2 %)");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
