//! The read policy of the QUIC admin protocol (`status`, queries, watches): open by default,
//! admitted keys only, or a list of keys; a key the policy does not allow is refused at the
//! handshake's end, and nothing is answered.

use std::time::Duration;

use mycnet_spores::net::quic::{admin_call, admin_call_as, AdminReads};
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::{NodeKey, SporeSystem};

const T: Duration = Duration::from_secs(5);

async fn node(dir: &std::path::Path, reads: AdminReads) -> (SporeSystem, String) {
    let n = SporeSystem::builder().data_dir(dir).addr("127.0.0.1:0").admin_reads(reads).build();
    n.initialize(crate::cluster::identity("reads")).await.expect("initialize");
    let addr = n.local_addr().expect("addr");
    (n, addr)
}

fn answered(r: Result<(mycnet_spores::NodeId, RpcResponse), mycnet_spores::net::TransportError>) -> bool {
    matches!(r, Ok((_, RpcResponse::Status(_))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_follow_the_policy_open_admitted_or_a_list_of_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reader = NodeKey::from_seed([0x5a; 32]);

    let (open, addr) = node(&dir.path().join("open"), AdminReads::Open).await;
    assert!(answered(admin_call(&addr, None, RpcRequest::Status, T).await), "open: any key reads");
    open.shutdown().await.expect("shutdown");

    let (listed, addr) = node(&dir.path().join("keys"), AdminReads::Keys(vec![reader.node_id()])).await;
    let stranger = admin_call(&addr, None, RpcRequest::Status, T).await;
    let refused = format!("{stranger:?}");
    assert!(!answered(stranger), "a key not on the list is refused: {refused}");
    assert!(answered(admin_call_as(&reader, &addr, None, RpcRequest::Status, T).await), "a listed key reads");
    listed.shutdown().await.expect("shutdown");

    let (admitted, addr) = node(&dir.path().join("admitted"), AdminReads::Admitted).await;
    assert!(!answered(admin_call_as(&reader, &addr, None, RpcRequest::Status, T).await), "not admitted yet");
    let me = admitted.announcement().expect("announcement");
    let joining = mycnet_spores::NodeAnnouncement {
        node: reader.node_id(),
        name: "reader".into(),
        role: mycnet_spores::NodeRole::Rhizomorph,
        addresses: vec![],
        capabilities: vec![],
    };
    admitted.admit(joining).await.expect("admit the reader");
    let reads =
        crate::wait::ok_async("the admitted key reads", Duration::from_secs(10), async || {
            match admin_call_as(&reader, &addr, None, RpcRequest::Status, T).await {
                Ok((_, RpcResponse::Status(Ok(s)))) => Ok(s),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(reads.node, me.node);
    admitted.shutdown().await.expect("shutdown");
}
