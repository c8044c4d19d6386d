//! The library embedded as a user embeds it, not through `spore node`: the README's examples
//! run exactly as written, and a test checks that the README still shows what they run.

use std::path::Path;

/// The README's builder example, verbatim between the markers: two nodes on loopback over
/// QUIC, the second admitted and joining, each seeing the other's service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_builder_example_works_as_written() -> Result<(), Box<dyn std::error::Error>> {
    // README example: builder
    use mycnet_spores::{NetworkIdentity, SporeSystem};

    let dir = tempfile::tempdir()?; // in production: /var/lib/mycnet-spores/…
    let first = SporeSystem::builder()
        .data_dir(dir.path().join("first")) // ledger, Raft log, node.key (mode 0600)
        .addr("127.0.0.1:7400") // listens here on QUIC; peers reach it here
        .capabilities(vec!["storage".into()])
        .build();
    first
        .initialize(NetworkIdentity {
            network_id: uuid::Uuid::new_v4(),
            network_name: "my-network".to_string(),
            genesis_timestamp: chrono::Utc::now(),
        })
        .await?; // forms the network; it is the first voter

    let second = SporeSystem::builder().data_dir(dir.path().join("second")).addr("127.0.0.1:7401").build();
    second.start().await?; // resume after a restart, or wait to be added
    first.admit(second.announcement()?).await?; // an authority admits it into the registry
    second.join(first.peer()?, true).await?; // and it joins the Raft membership as a voter

    second.register_service("object-store", vec![], vec!["storage".into()], vec![]).await?;
    assert_eq!(first.services_by_name("object-store")?.len(), 1);
    // README example end

    // What the example promises beyond its last line: both listen on QUIC at the addresses
    // given, and both are voters of one network.
    assert_eq!(first.local_addr()?, "127.0.0.1:7400");
    assert_eq!(second.local_addr()?, "127.0.0.1:7401");
    let st = first.status()?;
    assert_eq!(st.voters.len(), 2, "{st:?}");
    second.shutdown().await?;
    first.shutdown().await?;
    Ok(())
}

/// The code of each README ```rust block, compared without formatting (whitespace and
/// comments set aside), with the examples the tests run.
#[test]
fn the_readme_shows_the_examples_the_tests_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = rust_blocks(&readme);
    let tests = [(root.join("tests/it/embedded.rs"), "builder"), (root.join("tests/it/primary.rs"), "seed usage")];
    for (file, name) in &tests {
        let text = std::fs::read_to_string(file).expect("test source");
        let example = marked(&text, name).unwrap_or_else(|| panic!("{} marks no example {name:?}", file.display()));
        assert!(
            blocks.iter().any(|b| b == &example),
            "the README shows no rust block that is the {name:?} example {} runs:\n{example}",
            file.display()
        );
    }
    assert_eq!(blocks.len(), tests.len(), "every README rust block is run by a test");
}

/// The code of every ```rust block of `md`, normalized.
fn rust_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in md.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```rust") => block = Some(Vec::new()),
            (Some(b), "```") => {
                out.push(normalize(&b.join("\n")));
                block = None;
            }
            (Some(b), _) => b.push(line),
            _ => {}
        }
    }
    out
}

/// The lines between `// README example: NAME` and `// README example end`, normalized.
fn marked(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("// README example: {name}\n"))?;
    let body = &text[start..];
    let body = &body[body.find('\n')? + 1..];
    let end = body.find("// README example end")?;
    Some(normalize(&body[..end]))
}

/// Code without comments, the test's own attributes (`#[rustfmt::skip]`, `#[allow(..)]`) and
/// any whitespace, so rustfmt's layout and the README's hand layout compare equal when the
/// tokens are.
fn normalize(code: &str) -> String {
    code.lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix("#[rustfmt::skip]").or_else(|| t.strip_prefix("#[allow(unused_mut)]")) {
                Some(rest) => rest,
                None => l,
            }
        })
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// An address and the private in-process network contradict each other: refused at start,
/// with nothing opened. Without an address and a network, the node is private and says so by
/// its name-only address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_on_the_private_network_is_refused_at_start() {
    use mycnet_spores::node::ConfigError;
    use mycnet_spores::{Error, SporeSystem};
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SporeSystem::builder().data_dir(dir.path().join("n")).addr("127.0.0.1:7499").private_network().build();
    let err = s.start().await.expect_err("a contradiction");
    assert!(
        matches!(&err, Error::Config(ConfigError::PrivateWithAddress { addr }) if addr == "127.0.0.1:7499"),
        "{err}"
    );
    assert!(!dir.path().join("n").exists(), "nothing was created");
    let private = SporeSystem::builder().data_dir(dir.path().join("p")).build();
    private.start().await.expect("start");
    assert!(private.local_addr().expect("addr").starts_with("node-"), "a private node has no network address");
    private.shutdown().await.expect("shutdown");
}
