//! `spore node --http`: the read-only HTTP endpoint of a node process, read with `curl` as an
//! operator reads it (`/v1/status`, `/metrics`), behind a bearer token from a file.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::proc::{free_udp_port, path, run, wait_until, Node};

/// A loopback TCP port free a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `curl URL` (with the token), its HTTP status and body; `None` if nothing answered.
fn curl(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c.arg(url).output().expect("curl runs (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok().filter(|c| *c != 0)?;
    Some((code, body.to_string()))
}

#[test]
fn spore_node_serves_http_that_curl_reads_with_its_token() {
    let root = tempfile::tempdir().expect("tempdir");
    let token_file = root.path().join("http.token");
    std::fs::write(&token_file, "curl-token\n").expect("token file");
    let mut node = Node::keygen(root.path().join("n0"), format!("127.0.0.1:{}", free_udp_port()), None);
    let http = format!("127.0.0.1:{}", free_tcp_port());
    let args: Vec<String> = ["--data-dir", path(&node.dir), "--listen", &node.addr, "--init", "curl"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--http".into(), http.clone(), "--http-token-file".into(), path(&token_file).into()])
        .collect();
    node.start(&args);
    let base = format!("http://{http}");
    let status: Value = wait_until("GET /v1/status with curl", Duration::from_secs(30), || {
        let (code, body) = curl(&format!("{base}/v1/status"), Some("curl-token"))?;
        (code == 200).then(|| serde_json::from_str(&body).expect("JSON"))
    });
    assert_eq!(status["node"], node.key.as_str(), "{status}");
    let (code, body) = curl(&format!("{base}/metrics"), Some("curl-token")).expect("metrics");
    assert_eq!(code, 200);
    assert!(body.contains("\nspores_raft_term ") && body.contains("\nspores_ledger_head_seq "), "{body}");
    let (code, body) = curl(&format!("{base}/v1/status"), None).expect("an answer");
    assert_eq!(code, 401, "no token: {body}");
    assert_eq!(curl(&format!("{base}/healthz"), None), Some((200, "ok".to_string())));
    assert!(node.stop().success(), "a clean stop, the endpoint with it");

    // Bad values are usage errors before anything starts.
    let dir = root.path().join("bad");
    let bad = |extra: &[&str]| {
        let mut a = vec!["node", "--data-dir", path(&dir), "--listen", "127.0.0.1:1", "--init", "x"];
        a.extend_from_slice(extra);
        run(&a).status.code()
    };
    assert_eq!(bad(&["--http", "not-an-address"]), Some(2));
    assert_eq!(bad(&["--http", "127.0.0.1:0", "--http-token-file", "/no/such/token"]), Some(2));
    assert!(!dir.exists(), "nothing was created");
}
