//! `spore query` a page at a time: `--limit` bounds each page, `--after` the `next` cursor
//! reads on, `--all` follows the cursors to the end; text ends with `next: <cursor>` while a
//! page follows, `--json` is `{"items", "next"}`; a cursor that is not one is a usage error
//! (exit 2), whatever it is.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::{json, one_voter, register, run};

/// The service ids of a `--json` page, and its `next`.
fn page(v: &Value) -> (Vec<String>, Option<String>) {
    let items = v["items"].as_array().unwrap_or_else(|| panic!("items: {v}"));
    let ids = items.iter().map(|s| s["service"]["service_id"].as_str().expect("an id").to_string()).collect();
    (ids, v["next"].as_str().map(String::from))
}

#[test]
fn query_pages_follow_the_cursor_and_all_reads_to_the_end() {
    let root = tempfile::tempdir().expect("tempdir");
    let n = &one_voter(root.path());
    let key_file = n.key_file();
    let registered: BTreeSet<String> = (0..5u32)
        .map(|i| register(&key_file, &n.addr, if i.is_multiple_of(2) { "even" } else { "odd" }).expect("registered"))
        .collect();
    let query = |extra: &[&str]| run(&[&["query", "--addr", &n.addr, "services"][..], extra].concat());

    // Two pages of two, then the last page of one: `next` leads on, and is null at the end.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for pages in 1..=3 {
        let mut args = vec!["--limit", "2", "--json"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let (ids, next) = page(&json(&query(&args)));
        assert!(ids.len() <= 2, "the limit bounds the page: {ids:?}");
        seen.extend(ids);
        after = next;
        if after.is_none() {
            assert_eq!(pages, 3, "five services in pages of two");
            break;
        }
    }
    assert_eq!(seen.len(), 5, "each once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), registered);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in service id order: {seen:?}");

    // `--all` follows the cursors: every service, and no next.
    let (ids, next) = page(&json(&query(&["--limit", "2", "--all", "--json"])));
    assert_eq!((ids, next), (seen.clone(), None));
    // Filters compose with paging.
    let (even, _) = page(&json(&query(&["--name", "even", "--limit", "1", "--all", "--json"])));
    assert_eq!(even.len(), 3, "{even:?}");

    // Text: the last line names the next page's cursor while there is one.
    let out = query(&["--limit", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("lines");
    assert_eq!(last, format!("next: {}", seen[1]), "{text}");
    assert_eq!(text.lines().count(), 4, "a header, two services, the cursor: {text}");
    let out = query(&["--all"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("next:"), "no cursor after the last page");

    // Nodes page the same way.
    let nodes = json(&run(&["query", "--addr", &n.addr, "nodes", "--limit", "1", "--json"]));
    assert_eq!((nodes["items"].as_array().map(Vec::len), &nodes["next"]), (Some(1), &Value::Null), "{nodes}");
    let offline = json(&run(&["query", "--addr", &n.addr, "offline", "--json"]));
    assert_eq!(offline["items"].as_array().map(Vec::len), Some(0), "{offline}");

    // A limit out of its range and a cursor of the wrong kind are usage errors.
    for args in [&["--limit", "0"][..], &["--limit", "10001"], &["--after", n.key.as_str()]] {
        let out = query(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Whatever `--after` is given, a cursor that does not parse is refused with exit 2 and a
/// message naming `--after`, before anything is asked of a node; never a panic.
#[test]
fn a_garbage_cursor_is_a_usage_error_never_a_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let mut cursors: Vec<String> = vec![
        String::new(),
        " ".into(),
        "next: 1".into(),
        "0".repeat(65),
        "g".repeat(64),
        "00000000-0000-0000-0000-00000000000".into(),
        "\u{1F344}".repeat(40),
        "-".into(),
    ];
    for _ in 0..24 {
        let len = rng.random_range(1..200);
        cursors.push((0..len).map(|_| char::from_u32(rng.random_range(0x21..0x2FFF)).unwrap_or('x')).collect());
    }
    for cursor in &cursors {
        for what in ["services", "nodes"] {
            let out = run(&["query", "--addr", "127.0.0.1:1", what, "--after", cursor, "--timeout-ms", "200"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what} --after {cursor:?}: {err}");
            assert!(err.contains("--after") && !err.contains("panicked"), "{what} --after {cursor:?}: {err}");
        }
    }
}
