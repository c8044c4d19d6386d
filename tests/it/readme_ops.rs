//! The README's "Running it for real" section works as written: each node TOML it shows is a
//! valid node config (with real keys in place of `K1`..`K3`), and the systemd unit it shows is
//! the one in `tools/systemd/`.

use mycnet_spores::node::NodeConfig;
use mycnet_spores::NodeKey;

fn section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("## Running it for real").expect("the section");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The fenced blocks of `lang` in `text`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let body = &rest[i + fence.len()..];
        let end = body.find("```").expect("a closed block");
        out.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    out
}

#[test]
fn the_node_configs_the_readme_shows_are_valid() {
    let section = section();
    let tomls = blocks(&section, "toml");
    assert_eq!(tomls.len(), 2, "the founder's and a joiner's config");
    for (i, toml) in tomls.iter().enumerate() {
        let mut text = toml.clone();
        for k in 1..=3u8 {
            text =
                text.replace(&format!("\"K{k}\""), &format!("\"{}\"", NodeKey::from_seed([k; 32]).node_id().to_hex()));
        }
        let config = NodeConfig::from_toml(&text).unwrap_or_else(|e| panic!("README toml block {i}: {e}\n{text}"));
        assert!(config.http_listen.is_some(), "block {i} serves HTTP on loopback");
    }
}

#[test]
fn the_systemd_unit_the_readme_shows_is_the_shipped_one() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/systemd/spore-node.service"))
        .expect("the unit file");
    let shown = blocks(&section(), "ini");
    assert_eq!(shown, vec![unit], "README's unit differs from tools/systemd/spore-node.service");
}
