//! A full disk: a node on a small tmpfs fills it. Writers get a typed error naming the cause
//! at once, status and mode say the node halted, and a shutdown exits cleanly.
//! Needs root (it mounts a tmpfs); CI runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::{NetworkIdentity, NodeKey, OperationalMode, SporeSystem};

/// A tmpfs of `mib` MiB mounted for the test, unmounted on drop.
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn big_metadata(i: usize) -> Vec<(String, String)> {
    (0..8).map(|k| (format!("k{k}"), format!("{i:08}").repeat(60))).collect()
}

async fn node_on(dir: &Path, net: &InProcNetwork) -> SporeSystem {
    let s = SporeSystem::builder()
        .data_dir(dir)
        .key(NodeKey::from_seed([0xd1; 32]))
        .addr("n0")
        .name("n0")
        .inproc(net)
        .build();
    s.start().await.expect("start");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_halts_the_node_with_a_typed_error_and_it_shuts_down_cleanly() {
    let disk = SmallDisk::mount(24);
    let net = InProcNetwork::new(5);
    let s = node_on(&disk.path.join("n0"), &net).await;
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::from_u128(55),
        network_name: "full".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    s.initialize(identity).await.expect("initialize");
    // Fill the disk through the write path.
    let mut failure = None;
    for i in 0..100_000 {
        match s.register_service(&format!("svc-{i}"), vec![], vec![], big_metadata(i)).await {
            Ok(_) => {}
            Err(e) => {
                failure = Some((i, e));
                break;
            }
        }
    }
    let (written, first) = failure.expect("the disk filled up");
    eprintln!("first failure after {written} writes: {first}");
    assert!(matches!(first, mycnet_spores::Error::Halted(_)), "the write that met the full disk says why: {first}");
    // From then on a writer learns it at once, with the cause.
    let t = Instant::now();
    let again = s.register_service("after", vec![], vec![], vec![]).await.expect_err("no write on a full disk");
    assert!(t.elapsed() < Duration::from_secs(2), "the writer waited {:?}", t.elapsed());
    assert!(matches!(again, mycnet_spores::Error::Halted(_)), "{again}");
    assert!(again.to_string().contains("No space") || again.to_string().contains("space"), "{again}");
    let st = s.status().expect("status");
    assert_eq!(st.mode, OperationalMode::Halted, "{st:?}");
    assert!(st.halted.as_deref().is_some_and(|r| r.contains("space")), "{:?}", st.halted);
    // Nothing is left unsynced that the disk cannot take: shutdown is clean.
    s.shutdown().await.expect("shutdown with a full disk");
}
