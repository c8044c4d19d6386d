//! HTTP endpoint bench (issue 22): what serving discovery over HTTP/JSON costs against the
//! in-process query it wraps, on the same data in the same run.
//!
//! Run: `cargo bench --bench http`. A one-voter node holds 10,000 services (100 names, 100
//! each, ~256-byte registrations); prints:
//! - `find_services` by name in process: one caller, and 64 tasks on the runtime's 2 workers;
//! - the same plus writing the answer as JSON (what a handler does besides HTTP);
//! - `GET /v1/services?name=` from 64 concurrent clients (one `reqwest` client, kept
//!   connections) over 127.0.0.1, client and server sharing the machine's cores: with the
//!   answers kept until the next commit (the default; the registry does not change during the
//!   run, so every query after the first is answered as written) and with none kept (every
//!   query reads the registry and writes JSON again);
//! - HTTP / in process (one caller), both ways: target >= 0.5.
//!
//! `SPORES_BENCH_HTTP_SECS` sets each rate's measuring time (default 3 s).

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mycnet_spores::http::{self, HttpOptions};
use mycnet_spores::{
    Endpoint, EventBody, NodeKey, ServiceAnnouncement, ServiceFilter, SignedEvent, SporeSystem, Timestamp,
};

#[path = "common/cluster.rs"]
mod cluster;
use cluster::Net;

const SERVICES: usize = 10_000;
const NAMES: usize = 100;
const CLIENTS: usize = 64;

fn secs() -> Duration {
    let s = std::env::var("SPORES_BENCH_HTTP_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn names() -> Vec<String> {
    (0..NAMES).map(|i| format!("svc-{i}")).collect()
}

/// The 10,000 registrations, signed by node 0 before anything is timed.
fn registrations(s: &SporeSystem) -> Vec<SignedEvent> {
    let key = NodeKey::from_seed([1; 32]);
    let fp = s.status().expect("status").fingerprint.expect("fingerprint");
    (0..SERVICES)
        .map(|i| {
            let body = EventBody::ServiceRegistered(ServiceAnnouncement {
                service_id: uuid::Uuid::from_u128(i as u128 + 1),
                name: format!("svc-{}", i % NAMES).into(),
                node: key.node_id(),
                capabilities: vec!["storage".into()].into(),
                endpoints: vec![Endpoint { protocol: "tcp".into(), address: "127.0.0.1:9000".into() }].into(),
                metadata: cluster::metadata().into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            });
            SignedEvent::sign(&key, fp, Timestamp::now(), body)
        })
        .collect()
}

/// Queries per second of `f` over every name, from `tasks` tasks on the runtime at once.
async fn rate_in_process(
    system: &SporeSystem,
    tasks: usize,
    f: impl Fn(&SporeSystem, &str) -> usize + Send + Sync + 'static,
) -> f64 {
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let window = secs();
    let mut handles = Vec::new();
    for k in 0..tasks {
        let (s, f, done) = (system.clone(), f.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let names = names();
            let mut i = k;
            while t.elapsed() < window {
                assert_eq!(f(&s, &names[i % NAMES]), SERVICES / NAMES);
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // Let the other tasks of this worker run, as requests do between reads.
                if tasks > 1 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// Requests per second of `GET /v1/services?name=` from `CLIENTS` concurrent clients.
async fn rate_http(base: &str) -> f64 {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(CLIENTS).build().expect("client");
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let window = secs();
    let mut handles = Vec::new();
    for k in 0..CLIENTS {
        let (c, done, base) = (client.clone(), done.clone(), base.to_string());
        handles.push(tokio::spawn(async move {
            let names = names();
            let mut i = k;
            while t.elapsed() < window {
                let url = format!("{base}/v1/services?name={}", names[i % NAMES]);
                let resp = c.get(&url).send().await.expect("GET");
                assert_eq!(resp.status().as_u16(), 200);
                let body = resp.bytes().await.expect("body");
                assert!(body.len() > SERVICES / NAMES * 200, "a full answer");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

fn find(s: &SporeSystem, name: &str) -> usize {
    s.find_services(&ServiceFilter::name(name)).expect("find").len()
}

fn find_and_write(s: &SporeSystem, name: &str) -> usize {
    let found = s.find_services(&ServiceFilter::name(name)).expect("find");
    let body = serde_json::to_vec(&http::json::services(&found)).expect("json");
    std::hint::black_box(body.len());
    found.len()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (system, server, cold) = rt.block_on(async {
        let nodes = cluster::form(dir.path(), 1, Net::InProc).await;
        let events = registrations(&nodes[0]);
        eprintln!("registering {SERVICES} services…");
        cluster::write_concurrently(&nodes[0], events, 64).await;
        let system = (*nodes[0]).clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = http::serve(system.clone(), listener, HttpOptions::default()).expect("serve");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let none_kept = HttpOptions { answer_cache_bytes: 0, ..HttpOptions::default() };
        let cold = http::serve(system.clone(), listener, none_kept).expect("serve");
        (system, server, cold)
    });
    let base = format!("http://{}", server.local_addr());
    let base_cold = format!("http://{}", cold.local_addr());

    let mut g = c.benchmark_group("http_services_by_name");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("find_services_in_process", |b| b.iter(|| find(&system, "svc-7")));
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    for (label, base) in [("get_one_client_kept", &base), ("get_one_client_none_kept", &base_cold)] {
        let url = format!("{base}/v1/services?name=svc-7");
        g.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async { client.get(&url).send().await.expect("GET").bytes().await.expect("body").len() })
            })
        });
    }
    g.finish();

    let (one, many, written, over_http, over_http_cold) = rt.block_on(async {
        let one = rate_in_process(&system, 1, find).await;
        let many = rate_in_process(&system, CLIENTS, find).await;
        let written = rate_in_process(&system, 1, find_and_write).await;
        let over_http = rate_http(&base).await;
        let over_http_cold = rate_http(&base_cold).await;
        (one, many, written, over_http, over_http_cold)
    });
    println!("\n=== http summary: GET /v1/services?name= at {SERVICES} services, {NAMES} names ===");
    println!("{:>56}: {one:.0}", "find_services in process, 1 caller (q/s)");
    println!("{:>56}: {many:.0}", format!("find_services in process, {CLIENTS} tasks on 2 workers (q/s)"));
    println!("{:>56}: {written:.0}", "find_services + JSON answer in process, 1 caller (q/s)");
    println!("{:>56}: {over_http:.0}", format!("GET, {CLIENTS} clients, answers kept (req/s)"));
    println!("{:>56}: {over_http_cold:.0}", format!("GET, {CLIENTS} clients, none kept (req/s)"));
    println!("HTTP kept / in process (1 caller) = {:.3} (target >= 0.5)", over_http / one);
    println!("HTTP none kept / in process (1 caller) = {:.3} (target >= 0.5)", over_http_cold / one);
    println!("HTTP kept / in process ({CLIENTS} tasks) = {:.3}", over_http / many);
    println!("HTTP none kept / (find + JSON, 1 caller) = {:.3}", over_http_cold / written);
    rt.block_on(async {
        server.shutdown().await.expect("shutdown");
        cold.shutdown().await.expect("shutdown");
        system.shutdown().await.expect("shutdown");
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
