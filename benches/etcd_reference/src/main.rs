//! Measures a three-member etcd the way `cargo bench --bench primary` measures the store: one
//! client's sequential writes (median, p99) and 64 and 256 concurrent clients' rate, with the
//! raw `fdatasync` of a 4 KiB append on the disk that holds the members' data, before and
//! after the writes. Also the client's own round trip (a serializable get, answered by the
//! member alone), so a write's commit can be told from the client's gRPC call.
//!
//! Usage: `etcd-reference <client URL,...> <data dir> [writes] [value bytes]`; `run.sh` starts
//! the members and calls it.

use etcd_client::{Client, GetOptions};
use std::io::Write;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The median `fdatasync` of `n` 4 KiB appends to a file in `dir` (the budget's yardstick).
fn fdatasync_median(dir: &str, n: usize) -> Result<u128, Error> {
    let path = format!("{dir}/fdatasync-probe");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let block = vec![7u8; 4096];
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        took.push(t.elapsed().as_micros());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(median(&mut took))
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The client URL of the current leader among `endpoints` (writes go to it directly, as the
/// store's bench submits at its leader).
async fn leader(endpoints: &[String]) -> Result<String, Error> {
    for ep in endpoints {
        let mut c = Client::connect([ep.as_str()], None).await?;
        let st = c.status().await?;
        if st.header().map(|h| h.member_id()) == Some(st.leader()) {
            return Ok(ep.clone());
        }
    }
    Err("no member says it leads".into())
}

/// `clients` concurrent writers, each with its own connection, for `secs`: writes per second,
/// every write's latency in µs, and the slowest connection's set-up in µs. Every client
/// connects before the clock starts, as `spore bench` does, so a write's time is a write's.
async fn rate(ep: &str, clients: usize, secs: u64, value: &[u8]) -> Result<(f64, Vec<u128>, u128), Error> {
    let mut connected = Vec::with_capacity(clients);
    let mut connect_max = 0;
    for c in connect_all(ep, clients).await? {
        let (c, took) = c?;
        connect_max = connect_max.max(took);
        connected.push(c);
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (w, mut c) in connected.into_iter().enumerate() {
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                c.put(format!("rate/{w}/{}", took.len()), value.clone(), None).await?;
                took.push(t.elapsed().as_micros());
            }
            Ok::<Vec<u128>, Error>(took)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64 / start.elapsed().as_secs_f64(), all, connect_max))
}

/// `clients` connections to `ep`, made at once, each with its set-up time in µs. A connection
/// counts as made once it has answered a serializable get (gRPC connects lazily).
async fn connect_all(ep: &str, clients: usize) -> Result<Vec<Result<(Client, u128), Error>>, Error> {
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let ep = ep.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut c = Client::connect([ep.as_str()], None).await?;
            c.get("warm/0", Some(GetOptions::new().with_serializable())).await?;
            Ok::<_, Error>((c, t.elapsed().as_micros()))
        }));
    }
    let mut all = Vec::with_capacity(clients);
    for t in tasks {
        all.push(t.await?);
    }
    Ok(all)
}

/// The `q` quantile of sorted `v`, in ms.
fn ms(v: &[u128], q: f64) -> f64 {
    let i = ((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1));
    v.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoints), Some(dir)) = (args.get(1), args.get(2)) else {
        return Err("usage: etcd-reference <client URL,...> <data dir> [writes] [value bytes]".into());
    };
    let endpoints: Vec<String> = endpoints.split(',').map(String::from).collect();
    let writes: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    let value = vec![b'x'; args.get(4).map_or(Ok(512), |s| s.parse())?];
    let ep = leader(&endpoints).await?;
    let mut c = Client::connect([ep.as_str()], None).await?;
    for i in 0..200 {
        c.put(format!("warm/{i}"), value.clone(), None).await?;
    }
    let fs_before = fdatasync_median(dir, 200)?;
    let mut took = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        c.put(format!("one/{i}"), value.clone(), None).await?;
        took.push(t.elapsed().as_micros());
    }
    let fs_after = fdatasync_median(dir, 200)?;
    let mut rpc = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        c.get(format!("one/{i}"), Some(GetOptions::new().with_serializable())).await?;
        rpc.push(t.elapsed().as_micros());
    }
    let med = median(&mut took);
    let p99 = took[took.len() * 99 / 100];
    let rpc = median(&mut rpc);
    let fs = (fs_before + fs_after) as f64 / 2.0;
    println!("etcd, 3 members on loopback, {} B values", value.len());
    println!("  fdatasync (4 KiB append) before / after the writes: {fs_before} / {fs_after} us");
    println!("  1 client: median {med} us, p99 {p99} us = {:.2} x fdatasync", med as f64 / fs);
    println!(
        "  the client's own round trip (serializable get): median {rpc} us; the write less it: {} us = {:.2} x fdatasync",
        med.saturating_sub(rpc),
        med.saturating_sub(rpc) as f64 / fs
    );
    for clients in [64, 256] {
        let (per_sec, mut took, connect_max) = rate(&ep, clients, 5, &value).await?;
        took.sort_unstable();
        println!(
            "  {clients} clients: {per_sec:.0} writes/s; p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms \
             (connected before the clock, the slowest in {:.2} ms)",
            ms(&took, 0.5),
            ms(&took, 0.99),
            ms(&took, 0.999),
            ms(&took, 1.0),
            connect_max as f64 / 1000.0
        );
    }
    Ok(())
}
