//! The read-only HTTP/JSON endpoint (`mycnet_spores::http`) with a real HTTP client on
//! loopback: every route of a node in a 3-voter QUIC cluster (the same JSON the CLI prints), an
//! SSE watch resumed with `Last-Event-ID` across a restart of its node, `/readyz` following the
//! leader, and bad input answered with JSON errors, never a 500.

use std::time::Duration;

use futures_util::StreamExt;
use mycnet_spores::core::event::EventFilter;
use mycnet_spores::http::{self, json, HttpOptions, HttpServer};
use mycnet_spores::{Endpoint, ServiceFilter, SporeSystem, TrustScore};
use serde_json::Value;

use crate::quic::{converged, form_quic_cluster, leader_of, start_voter};

const T: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("an HTTP client")
}

/// Serves `system` on `addr` (port 0: any free one).
async fn serve(system: &SporeSystem, addr: &str, options: HttpOptions) -> HttpServer {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the http listener");
    http::serve(system.clone(), listener, options).expect("serve")
}

/// `GET base+path` (with `token`), its status and body.
async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.bytes().await.expect("body").to_vec())
}

/// `GET` that must answer 200 with JSON.
async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    let (status, headers, body) = get(c, url, None).await;
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json", "GET {url}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e})"))
}

/// One Server-Sent Event: its `id`, `event` name and `data`.
#[derive(Debug, Default)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads the SSE events of one response as they arrive (keep-alive comments skipped).
struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl SseReader {
    async fn open(c: &reqwest::Client, url: &str, last_id: Option<u64>) -> SseReader {
        let mut req = c.get(url);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("watch");
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream", "GET {url}");
        SseReader { body: resp.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next event; `None` when the stream ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse::default();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.to_string()),
                        "event" => ev.event = Some(value.to_string()),
                        "data" => ev.data.push_str(value),
                        _ => {} // a comment (keep-alive)
                    }
                }
                if ev.id.is_some() || ev.event.is_some() || !ev.data.is_empty() {
                    return Some(ev);
                }
            }
            let chunk = tokio::time::timeout(T, self.body.next()).await.expect("an SSE chunk within the timeout")?;
            self.buf.push_str(std::str::from_utf8(&chunk.ok()?).expect("utf-8"));
        }
    }

    /// The next event's seq and JSON (an event, not an error).
    async fn event(&mut self) -> (u64, Value) {
        let ev = self.next().await.expect("an event, not the end of the stream");
        assert_eq!(ev.event, None, "{ev:?}");
        let id: u64 = ev.id.as_deref().expect("an id").parse().expect("the id is a seq");
        let data: Value = serde_json::from_str(&ev.data).expect("JSON data");
        assert_eq!(data["seq"], id, "the id is the event's seq");
        (id, data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_a_cluster_node_as_the_cli_prints_it_and_a_watch_resumes_across_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 160, 0x22_0001).await;
    let leader = leader_of(&voters, T).await;
    let f = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let sys = |v: &Vec<crate::quic::Voter>, i: usize| v[i].system.clone().expect("running");
    let (lead, served) = (sys(&voters, leader), sys(&voters, f));
    let ep = |a: &str| vec![Endpoint { protocol: "tcp".into(), address: a.into() }];
    let web1 = lead.register_service("web", ep("10.0.0.1:80"), vec!["http".into()], vec![]).await.expect("web 1");
    sys(&voters, other).register_service("web", ep("10.0.0.2:80"), vec!["http".into()], vec![]).await.expect("web 2");
    lead.register_service("db", ep("10.0.0.1:5432"), vec!["sql".into()], vec![]).await.expect("db");
    let doubted = voters[other].key.node_id();
    lead.set_trust(doubted, TrustScore(200), "flaky").await.expect("trust");
    let head = converged(&voters, T).await;

    let server = serve(&served, "127.0.0.1:0", HttpOptions::default()).await;
    let base = format!("http://{}", server.local_addr());
    let c = client();

    // Status and nodes: what `spore status --json` and `spore query nodes --json` print.
    let st = get_json(&c, &format!("{base}/v1/status")).await;
    assert_eq!(st["node"], serde_json::to_value(served.node_id().expect("id")).expect("json"));
    assert_eq!(st["voters"].as_array().map(Vec::len), Some(3));
    let want = serde_json::to_value(served.status().expect("status")).expect("json");
    let keys = |v: &Value| v.as_object().expect("an object").keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&st), keys(&want), "the status as serde writes it");
    assert_eq!((&st["fingerprint"], &st["voters"]), (&want["fingerprint"], &want["voters"]));
    let nodes = get_json(&c, &format!("{base}/v1/nodes")).await;
    assert_eq!(nodes, serde_json::to_value(served.nodes().expect("nodes")).expect("json"));
    let one = get_json(&c, &format!("{base}/v1/nodes/{}", doubted.to_hex())).await;
    assert_eq!(one["trust"], serde_json::to_value(TrustScore(200)).expect("json"));
    let stranger = mycnet_spores::NodeKey::from_seed([9; 32]).node_id().to_hex();
    let (status, _, body) = get(&c, &format!("{base}/v1/nodes/{stranger}"), None).await;
    assert_eq!(status, 404);
    assert!(serde_json::from_slice::<Value>(&body).expect("json")["error"]
        .as_str()
        .is_some_and(|e| e.contains("no node")));

    // Services: the shape `spore query services --json` prints, filtered as find_services does.
    let services = |filter: ServiceFilter| {
        serde_json::to_value(json::services(&served.find_services(&filter).expect("find"))).expect("json")
    };
    let web = get_json(&c, &format!("{base}/v1/services?name=web")).await;
    assert_eq!(web.as_array().map(Vec::len), Some(2), "{web}");
    assert_eq!(web, services(ServiceFilter::name("web")));
    for key in ["service", "registered_seq", "node_status", "node_trust", "critical"] {
        assert!(web[0].get(key).is_some(), "{key} in {}", web[0]);
    }
    assert_eq!(
        get_json(&c, &format!("{base}/v1/services?capability=sql")).await,
        services(ServiceFilter::capability("sql"))
    );
    let trusted = get_json(&c, &format!("{base}/v1/services?name=web&min_trust=0.5&include_offline=true")).await;
    assert_eq!(trusted.as_array().map(Vec::len), Some(1), "the doubted node's web is left out: {trusted}");
    assert_eq!(trusted, services(ServiceFilter::name("web").min_trust(TrustScore(500)).include_unavailable()));
    let by_node = get_json(&c, &format!("{base}/v1/services?node={}&include_critical", doubted.to_hex())).await;
    assert_eq!(by_node.as_array().map(Vec::len), Some(1));
    let svc = get_json(&c, &format!("{base}/v1/services/{web1}")).await;
    assert_eq!(svc["service"]["service_id"], web1.to_string());
    assert_eq!(
        svc,
        web.as_array()
            .expect("list")
            .iter()
            .find(|s| s["service"]["service_id"] == web1.to_string())
            .cloned()
            .expect("web 1")
    );
    let (status, _, _) = get(&c, &format!("{base}/v1/services/{}", uuid::Uuid::from_u128(7)), None).await;
    assert_eq!(status, 404);

    // Events: a page of JSON Lines, as `spore watch --json` prints each.
    let (status, headers, body) = get(&c, &format!("{base}/v1/events?from=1&limit=3"), None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(headers["spores-next-from"], "4");
    let lines: Vec<Value> = String::from_utf8(body)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let read = served.read_events(1, 3).await.expect("read");
    let want: Vec<Value> = read.iter().map(|e| serde_json::to_value(json::EventJson::from(e)).expect("json")).collect();
    assert_eq!(lines, want);
    assert_eq!(lines.iter().map(|l| l["seq"].as_u64().expect("seq")).collect::<Vec<_>>(), [1, 2, 3]);

    // The seed: a download that verifies offline.
    let (status, headers, body) = get(&c, &format!("{base}/v1/seed"), None).await;
    assert_eq!(status, 200);
    let disposition = headers["content-disposition"].to_str().expect("ascii");
    assert!(
        disposition.starts_with("attachment; filename=\"spores-") && disposition.ends_with(".seed\""),
        "{disposition}"
    );
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    let seed =
        mycnet_spores::seed::verify(&body, mycnet_spores::seed::VerifyPolicy::default()).expect("the seed verifies");
    assert!(seed.header.head_seq >= head.seq);

    // Probes and metrics.
    let (status, _, body) = get(&c, &format!("{base}/healthz"), None).await;
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let ready = get_json(&c, &format!("{base}/readyz")).await;
    assert_eq!(ready["ready"], true, "{ready}");
    let (status, headers, body) = get(&c, &format!("{base}/metrics"), None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let text = String::from_utf8(body).expect("utf-8");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    let value = |name: &str| {
        scrape.samples.iter().find(|s| s.metric == name).map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
    };
    assert!(value("spores_raft_term").is_some_and(|t| t >= 1.0), "{text}");
    assert!(value("spores_ledger_head_seq").is_some_and(|s| s >= head.seq as f64), "{text}");
    assert_eq!(value("spores_raft_voters"), Some(3.0));

    // An SSE watch of one service name: the two registrations so far.
    let watch_url = format!("{base}/v1/watch?name=web");
    let mut w = SseReader::open(&c, &watch_url, None).await;
    let (first, ev) = w.event().await;
    assert_eq!(ev["kind"], "service_registered");
    let (second, _) = w.event().await;
    assert!(second > first);
    // Shutting the endpoint down ends the open watch, and returns.
    tokio::time::timeout(T, server.shutdown()).await.expect("a prompt shutdown").expect("shutdown");
    assert!(w.next().await.is_none(), "the stream ends at shutdown");

    // The node restarts; a third web registers while it is down and a fourth once it is back.
    let addr = base.trim_start_matches("http://").to_string();
    served.shutdown().await.expect("shutdown");
    drop(served);
    voters[f].system = None;
    let web3 = lead.register_service("web", vec![], vec![], vec![]).await.expect("web 3");
    let restarted = start_voter(&voters[f].key, &voters[f].dir, &voters[f].addr).await;
    voters[f].system = Some(restarted.clone());
    let server = serve(&restarted, &addr, HttpOptions::default()).await;
    let mut w = SseReader::open(&c, &format!("{watch_url}&from=0"), Some(second)).await;
    let (third, ev) = w.event().await;
    assert_eq!(ev["event"]["ServiceRegistered"]["service_id"], web3.to_string(), "{ev}");
    let web4 = lead.register_service("web", vec![], vec![], vec![]).await.expect("web 4");
    let (fourth, ev) = w.event().await;
    assert_eq!(ev["event"]["ServiceRegistered"]["service_id"], web4.to_string(), "{ev}");
    // No gap, no duplicate: exactly the events the local watch passes, after `second`.
    let mut local = restarted
        .watch(EventFilter { service_name: Some("web".into()), ..Default::default() }, second + 1)
        .expect("watch");
    let l3 = local.next().await.expect("event").expect("ok").seq;
    let l4 = local.next().await.expect("event").expect("ok").seq;
    assert_eq!((third, fourth), (l3, l4));
    drop(w);
    server.shutdown().await.expect("shutdown");
    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            s.shutdown().await.expect("shutdown");
        }
    }
}

/// A one-voter node on the in-process network, formed.
async fn private_node(dir: &std::path::Path) -> SporeSystem {
    let n = SporeSystem::builder().data_dir(dir).private_network().build();
    n.initialize(crate::cluster::identity("http")).await.expect("initialize");
    n
}

/// The status and the `error` text of a JSON error answer.
async fn error_of(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let (status, headers, body) = get(c, url, token).await;
    assert_eq!(headers["content-type"], "application/json", "GET {url}: {}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e})"));
    (status, v["error"].as_str().unwrap_or_else(|| panic!("GET {url}: no error in {v}")).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_and_a_token_guards_every_route_but_healthz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = private_node(&dir.path().join("n")).await;
    n.register_service("web", vec![], vec![], vec![]).await.expect("web");
    let token = "s3cret-token";
    let server = serve(&n, "127.0.0.1:0", HttpOptions { token: Some(token.into()), ..HttpOptions::default() }).await;
    let base = format!("http://{}", server.local_addr());
    let c = client();

    // The token: missing or wrong is a 401 (saying how to authenticate); /healthz is open.
    for t in [None, Some("wrong"), Some("s3cret-token-and-more"), Some("")] {
        let (status, headers, _) = get(&c, &format!("{base}/v1/status"), t).await;
        assert_eq!(status, 401, "token {t:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    assert_eq!(error_of(&c, &format!("{base}/metrics"), None).await.0, 401);
    assert_eq!(error_of(&c, &format!("{base}/no/such/path"), None).await.0, 401, "nothing is told without the token");
    let (status, _, body) = get(&c, &format!("{base}/healthz"), None).await;
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, _, _) = get(&c, &format!("{base}/v1/status"), Some(token)).await;
    assert_eq!(status, 200);
    let lowercase = c.get(format!("{base}/v1/status")).header("Authorization", format!("bearer {token}")).send().await;
    assert_eq!(lowercase.expect("status").status().as_u16(), 200, "the scheme is case-insensitive");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let empty = http::serve(n.clone(), listener, HttpOptions { token: Some(String::new()), ..HttpOptions::default() });
    assert!(matches!(empty, Err(http::HttpError::BadToken)), "an empty token guards nothing: refused");

    // Unknown paths and methods.
    let t = Some(token);
    let (status, e) = error_of(&c, &format!("{base}/v2/status"), t).await;
    assert_eq!(status, 404);
    assert!(e.contains("/v2/status"), "{e}");
    let posted = c.post(format!("{base}/v1/status")).bearer_auth(token).send().await.expect("post");
    assert_eq!(posted.status().as_u16(), 405);
    let v: Value = posted.json().await.expect("a JSON error");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("read-only")), "{v}");

    // Malformed, out-of-range, unknown and repeated parameters: a 400 naming the parameter.
    let long_name = "n".repeat(200);
    for (query, names) in [
        ("/v1/events?from=abc", "from"),
        ("/v1/events?from=-1", "from"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=1001", "limit"),
        ("/v1/events?limit=99999999999999999999999", "limit"),
        ("/v1/events?from=1&from=2", "from"),
        ("/v1/events?bogus=1", "bogus"),
        ("/v1/services?min_trust=2", "min_trust"),
        ("/v1/services?min_trust=high", "min_trust"),
        ("/v1/services?node=zz", "node"),
        ("/v1/services?include_offline=maybe", "include_offline"),
        ("/v1/services?name=", "name"),
        (&format!("/v1/services?name={long_name}"), "name"),
        ("/v1/watch?kind=Not-A-Kind", "kind"),
        ("/v1/watch?node=12", "node"),
        ("/v1/status?verbose=1", "verbose"),
        ("/v1/nodes/not-hex", "id"),
        ("/v1/services/not-a-uuid", "id"),
    ] {
        let (status, e) = error_of(&c, &format!("{base}{query}"), t).await;
        assert_eq!(status, 400, "{query}: {e}");
        assert!(e.contains(names), "{query}: the error names `{names}`: {e}");
    }
    let resumed = c.get(format!("{base}/v1/watch")).bearer_auth(token).header("Last-Event-ID", "x").send().await;
    assert_eq!(resumed.expect("watch").status().as_u16(), 400);
    // An oversized query string: a 414.
    let (status, e) = error_of(&c, &format!("{base}/v1/services?name={}", "x".repeat(3000)), t).await;
    assert_eq!(status, 414, "{e}");

    // A list is kept as written until a commit moves the head: then it is written again.
    let webs = async || {
        let (status, _, body) = get(&c, &format!("{base}/v1/services?name=web"), t).await;
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).expect("JSON").as_array().map(Vec::len)
    };
    assert_eq!((webs().await, webs().await), (Some(1), Some(1)));
    n.register_service("web", vec![], vec![], vec![]).await.expect("web 2");
    assert_eq!(webs().await, Some(2), "the new head's answer");

    // An idle watch sends keep-alive comments.
    let quick = HttpOptions { keep_alive: Duration::from_millis(50), ..HttpOptions::default() };
    let idle_server = serve(&n, "127.0.0.1:0", quick).await;
    let idle = client().get(format!("http://{}/v1/watch?name=nothing-by-this-name", idle_server.local_addr()));
    let mut idle = idle.send().await.expect("watch").bytes_stream();
    let chunk = tokio::time::timeout(T, idle.next()).await.expect("a chunk").expect("open").expect("bytes");
    assert!(chunk.starts_with(b":"), "a comment: {chunk:?}");
    drop(idle);
    idle_server.shutdown().await.expect("shutdown");

    // The defaults answer: a page of events from 0 (the default limit), a filtered watch.
    let (status, _, body) = get(&c, &format!("{base}/v1/events"), t).await;
    assert_eq!(status, 200);
    let head = n.head().expect("head").expect("formed").seq;
    assert_eq!(String::from_utf8(body).expect("utf-8").lines().count() as u64, head + 1);
    server.shutdown().await.expect("shutdown");
    n.shutdown().await.expect("shutdown");
}

/// `/readyz` turns 503 (with the reason) when its node loses its leader — the other two voters
/// stop — and 200 again once they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_leader() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 170, 0x22_0002).await;
    let served = voters[0].system.clone().expect("n0");
    let server = serve(&served, "127.0.0.1:0", HttpOptions::default()).await;
    let url = format!("http://{}/readyz", server.local_addr());
    let c = client();
    let readyz = async |want: u16| {
        crate::wait::ok_async(&format!("/readyz {want}"), T, async || {
            let (status, _, body) = get(&c, &url, None).await;
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            if status == want && v["ready"] == (want == 200) {
                Ok(v["reason"].as_str().expect("a reason").to_string())
            } else {
                Err(format!("{status} {v}"))
            }
        })
        .await
    };
    let why = readyz(200).await;
    assert!(why.contains("leader"), "{why}");
    for v in &mut voters[1..] {
        v.system.take().expect("running").shutdown().await.expect("shutdown");
    }
    let why = readyz(503).await;
    assert!(why.contains("no leader"), "{why}");
    for v in &mut voters[1..] {
        v.system = Some(start_voter(&v.key, &v.dir, &v.addr).await);
    }
    let why = readyz(200).await;
    assert!(why.contains("leader"), "{why}");
    server.shutdown().await.expect("shutdown");
    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            s.shutdown().await.expect("shutdown");
        }
    }
}

/// A latent node started from a state-only seed holds the history from the seed's attested
/// state on: a page or a watch from below it is a 410 naming where it starts; from there it is
/// served. Cut off from every voter, it is not ready, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_below_the_held_history_is_a_410_naming_where_it_starts() {
    let root = tempfile::tempdir().expect("tempdir");
    let (b, first_held) = crate::seed_export::latent_from_state_only_seed(root.path(), "http-seed").await;
    let server = serve(&b, "127.0.0.1:0", HttpOptions::default()).await;
    let base = format!("http://{}", server.local_addr());
    let c = client();
    for path in ["/v1/events?from=0", "/v1/watch?from=0"] {
        let (status, headers, body) = get(&c, &format!("{base}{path}"), None).await;
        assert_eq!(status, 410, "{path}");
        assert_eq!(headers["content-type"], "application/json");
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["first_held"], first_held, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(&format!("from seq {first_held}"))), "{v}");
    }
    let mut w = SseReader::open(&c, &format!("{base}/v1/watch?from={first_held}"), None).await;
    assert_eq!(w.event().await.0, first_held, "from the first event held on, it is served");
    let (status, _, body) = get(&c, &format!("{base}/readyz"), None).await;
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!((status, &v["ready"]), (503, &Value::Bool(false)), "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| r.contains("latent")), "{v}");
    drop(w);
    server.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}
