//! `spore bench`: a load tool like etcd's benchmark, against a running network. Concurrent
//! clients write signed service registrations (signed by an admitted node's key, forwarded to
//! the leader over kept connections), then deregister what they registered unless `--keep`.
//! Every client connects before the clock starts, and the handshakes are reported on their own.
//! Reports committed writes/s and the latency histogram (hdrhistogram: p50, p90, p99, p99.9,
//! max), with a progress bar on a terminal or one JSON object with `--json`.

mod client;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mycnet_spores::core::limits;
use mycnet_spores::{EventBody, NetworkFingerprint, NodeKey, Rejection, ServiceAnnouncement, SignedEvent, Timestamp};
use serde_json::json;

use self::client::{Client, Target, WriteFailure};
use crate::output::{CliError, CliResult, Out};

/// The longest latency the histogram holds, in microseconds (a write times out well before).
const LATENCY_MAX_US: u64 = 600_000_000;
/// Longest metadata value a pad entry gets (the rules' limit, less room for nothing).
const PAD_VALUE_MAX: usize = limits::METADATA_BYTES_MAX;

/// How much to write.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Amount {
    /// This many registrations.
    Events(u64),
    /// Registrations until this much time has passed.
    For(Duration),
}

/// What `spore bench` was asked to do.
pub(crate) struct BenchOptions {
    /// Any member's address (writes follow the leader).
    pub addr: String,
    /// An admitted node's key file: the registrations' author.
    pub key_file: PathBuf,
    /// Concurrent clients, each with its own connection and one write in flight.
    pub clients: usize,
    /// How much.
    pub amount: Amount,
    /// About how many bytes each registration's canonical encoding has (metadata padding).
    pub size: usize,
    /// Leave the registered services in place.
    pub keep: bool,
    /// How long one write may take, retries included.
    pub write_timeout: Duration,
}

/// The largest `--size` the rules allow: every metadata entry at its limit, with room for the
/// rest of the registration.
pub(crate) fn size_max() -> usize {
    limits::METADATA_ENTRIES_MAX * (PAD_VALUE_MAX + 8)
}

/// `spore bench`.
pub(crate) async fn bench(opts: BenchOptions, o: &mut Out) -> CliResult {
    if opts.clients == 0 {
        return Err(CliError::usage("--clients must be at least 1"));
    }
    if opts.size > size_max() {
        return Err(CliError::usage(format!("--size {} is over the rules' limit of about {}", opts.size, size_max())));
    }
    let target = Target::find(&opts.addr, &opts.key_file, opts.write_timeout).await?;
    let me = target.key.node_id();
    let metadata = padding(&target.key, target.fingerprint, opts.size);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let sample = registration(&target.key, target.fingerprint, uuid::Uuid::nil(), &run, metadata.clone());
    let event_bytes = sample.encoded_len();
    if !o.json {
        o.line(format!(
            "spore bench: {} client(s), {event_bytes}-byte registrations signed by {} through {}",
            opts.clients,
            me.short(),
            target.first
        ))?;
        o.flush()?;
    }

    // Connections, before the clock starts.
    let connected = connect_all(&target, opts.clients, opts.write_timeout).await?;

    // Registrations.
    let state = Arc::new(Load::new(opts.amount, bar(o, opts.amount, "register")));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(opts.clients);
    for client in connected.clients {
        let (state, target, run, metadata) = (state.clone(), target.clone(), run.clone(), metadata.clone());
        let (timeout, hist) = (opts.write_timeout, latency_histogram()?);
        workers.push(tokio::spawn(
            async move { register_loop(state, client, target, run, metadata, hist, timeout).await },
        ));
    }
    let mut clients = Vec::with_capacity(workers.len());
    for w in workers {
        clients.push(w.await.map_err(|e| CliError::Io(format!("a bench client failed: {e}")))?);
    }
    let seconds = started.elapsed().as_secs_f64();
    state.bar.finish_and_clear();
    let mut hist = latency_histogram()?;
    for c in &clients {
        hist.add(&c.hist).map_err(|e| CliError::Io(format!("histogram: {e}")))?;
    }
    let committed = hist.len();
    let failed = state.failed.load(Ordering::Relaxed);
    let fatal = lock(&state.fatal).clone();

    // Cleanup through the same clients, unless asked to keep.
    let registered: u64 = clients.iter().map(|c| c.ids.len() as u64).sum();
    let cleanup = if opts.keep || registered == 0 {
        finish_all(clients).await;
        None
    } else {
        Some(deregister_all(clients, registered, opts.write_timeout, o).await?)
    };

    let rate = if seconds > 0.0 { committed as f64 / seconds } else { 0.0 };
    let us = |q: f64| hist.value_at_quantile(q);
    if o.json {
        o.json_line(&json!({
            "addr": opts.addr,
            "node": me,
            "clients": opts.clients,
            "size": opts.size,
            "event_bytes": event_bytes,
            "committed": committed,
            "failed": failed,
            "seconds": seconds,
            "writes_per_sec": rate,
            "connect": {
                "connected": connected.hist.len(),
                "failed": connected.failed,
                "seconds": connected.seconds,
                "p50_us": connected.hist.value_at_quantile(0.5),
                "max_us": connected.hist.max(),
                "error": connected.last_error,
            },
            "latency_us": {
                "min": hist.min(), "mean": hist.mean(), "p50": us(0.5), "p90": us(0.9),
                "p99": us(0.99), "p99_9": us(0.999), "max": hist.max(),
            },
            "kept": opts.keep,
            "deregistered": cleanup.as_ref().map_or(0, |c| c.done),
            "deregister_failed": cleanup.as_ref().map_or(0, |c| c.failed),
            "deregister_seconds": cleanup.as_ref().map(|c| c.seconds),
            "error": fatal,
        }))?;
    } else {
        let ms = |v: u64| format!("{:.2} ms", v as f64 / 1000.0);
        o.line(format!(
            "connected    {} client(s) in {:.2} s before the clock started: handshake p50 {}  max {}{}",
            connected.hist.len(),
            connected.seconds,
            ms(connected.hist.value_at_quantile(0.5)),
            ms(connected.hist.max()),
            match &connected.last_error {
                Some(e) => format!(" ({} could not connect and took no part: {e})", connected.failed),
                None => String::new(),
            }
        ))?;
        o.line(format!("committed    {committed} writes in {seconds:.2} s: {rate:.0} writes/s ({failed} failed)"))?;
        o.line(format!(
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(us(0.5)),
            ms(us(0.9)),
            ms(us(0.99)),
            ms(us(0.999)),
            ms(hist.max())
        ))?;
        match &cleanup {
            None if opts.keep => o.line(format!("kept         {registered} services (--keep)"))?,
            None => {}
            Some(c) => o.line(format!(
                "cleanup      deregistered {} of {registered} services in {:.2} s ({} failed)",
                c.done, c.seconds, c.failed
            ))?,
        }
    }
    o.flush()?;
    if let Some(e) = fatal {
        return Err(CliError::Io(e));
    }
    if let Some(e) = &connected.last_error {
        return Err(CliError::Io(format!(
            "{} of {} client(s) could not connect and took no part: {e}",
            connected.failed, opts.clients
        )));
    }
    let left = cleanup.as_ref().map_or(0, |c| c.failed);
    if failed > 0 || left > 0 {
        return Err(CliError::Io(format!(
            "{failed} write(s) failed and {left} service(s) could not be deregistered (see `spore query services`)"
        )));
    }
    Ok(())
}

/// What the registering clients share: how much is left, the progress bar, the failures.
struct Load {
    amount: Amount,
    started: Instant,
    claimed: AtomicU64,
    failed: AtomicU64,
    /// A failure no retry can fix (the key refused, a write rejected): every client stops.
    fatal: Mutex<Option<String>>,
    stop: AtomicBool,
    bar: ProgressBar,
}

impl Load {
    fn new(amount: Amount, bar: ProgressBar) -> Self {
        Load {
            amount,
            started: Instant::now(),
            claimed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            fatal: Mutex::new(None),
            stop: AtomicBool::new(false),
            bar,
        }
    }

    /// Whether a client may start another write.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match self.amount {
            Amount::Events(n) => self.claimed.fetch_add(1, Ordering::Relaxed) < n,
            Amount::For(d) => self.started.elapsed() < d,
        }
    }

    fn fatal(&self, why: String) {
        self.stop.store(true, Ordering::Relaxed);
        lock(&self.fatal).get_or_insert(why);
    }
}

/// What one client did.
struct ClientRun {
    client: Client,
    hist: Histogram<u64>,
    ids: Vec<uuid::Uuid>,
}

/// `d` in whole microseconds, within what [`latency_histogram`] holds.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US)
}

/// A histogram of latencies in microseconds: three significant digits from 1 µs to the
/// longest write.
fn latency_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).map_err(|e| CliError::Io(format!("histogram: {e}")))
}

/// A registration of the service `service_id` by the key's node.
fn registration(
    key: &NodeKey,
    fingerprint: NetworkFingerprint,
    service_id: uuid::Uuid,
    run: &str,
    metadata: Vec<(String, String)>,
) -> SignedEvent {
    let body = EventBody::ServiceRegistered(ServiceAnnouncement {
        service_id,
        name: format!("spore-bench-{run}").into(),
        node: key.node_id(),
        capabilities: vec!["spore-bench".into()].into(),
        endpoints: vec![].into(),
        metadata: metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
    });
    SignedEvent::sign(key, fingerprint, Timestamp::now(), body)
}

/// Metadata that brings a registration to about `size` bytes of canonical encoding: pad
/// entries of at most the rules' value length.
fn padding(key: &NodeKey, fingerprint: NetworkFingerprint, size: usize) -> Vec<(String, String)> {
    let base = registration(key, fingerprint, uuid::Uuid::nil(), "00000000", vec![]).encoded_len();
    let mut left = size.saturating_sub(base);
    let mut metadata = Vec::new();
    // Each entry costs its key (`padNN`, 5 bytes) and two length prefixes besides its value.
    while left > 8 && metadata.len() < limits::METADATA_ENTRIES_MAX {
        let value = (left - 8).min(PAD_VALUE_MAX);
        metadata.push((format!("pad{:02}", metadata.len()), "x".repeat(value)));
        left = left.saturating_sub(value + 8);
    }
    metadata
}

/// The clients, connected before the clock starts.
struct Connected {
    clients: Vec<Client>,
    /// Each connected client's handshake, in microseconds.
    hist: Histogram<u64>,
    /// Clients that could not connect (they take no part).
    failed: u64,
    last_error: Option<String>,
    seconds: f64,
}

/// Every client connects to the first target at once, before the clock starts: a write's time
/// is then a write's, as over a client's kept connection, and the handshakes are reported on
/// their own. A client that cannot connect (the node at its connection limit, most often)
/// takes no part: retrying, it would only load the node it measures. The bench then ends with
/// an error that says how many and why.
async fn connect_all(target: &Target, clients: usize, timeout: Duration) -> Result<Connected, CliError> {
    let started = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let mut client = Client::new(target);
        connecting.spawn(async move {
            let took = client.connect(timeout).await;
            (client, took)
        });
    }
    let mut done = Connected {
        clients: Vec::with_capacity(clients),
        hist: latency_histogram()?,
        failed: 0,
        last_error: None,
        seconds: 0.0,
    };
    while let Some(joined) = connecting.join_next().await {
        let (client, took) = joined.map_err(|e| CliError::Io(format!("a bench client failed: {e}")))?;
        match took {
            Ok(took) => {
                let _ = done.hist.record(micros(took));
                done.clients.push(client);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a bench client could not connect; it takes no part");
                done.failed += 1;
                done.last_error = Some(e.to_string());
            }
        }
    }
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

async fn register_loop(
    state: Arc<Load>,
    mut client: Client,
    target: Target,
    run: String,
    metadata: Vec<(String, String)>,
    mut hist: Histogram<u64>,
    timeout: Duration,
) -> ClientRun {
    let mut ids = Vec::new();
    while state.claim() {
        // Signed before the clock starts: the latency is the network's, as in `benches/primary.rs`.
        // Time-ordered, as the library's own registrations.
        let id = uuid::Uuid::now_v7();
        let event = registration(&target.key, target.fingerprint, id, &run, metadata.clone());
        let sent = Instant::now();
        match client.write(&event, |r| matches!(r, Rejection::ServiceExists(x) if *x == id), timeout).await {
            Ok(()) => {
                let _ = hist.record(micros(sent.elapsed()));
                ids.push(id);
                state.bar.inc(1);
            }
            Err(WriteFailure::Gave(e)) => {
                tracing::warn!(error = %e, "a write did not commit in time");
                state.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(WriteFailure::Fatal(e)) => state.fatal(e),
        }
    }
    ClientRun { client, hist, ids }
}

/// How the cleanup went.
struct Cleanup {
    done: u64,
    failed: u64,
    seconds: f64,
}

/// How long a client waits for the node to hear that its connection is closed.
const FINISH_PATIENCE: Duration = Duration::from_secs(1);

/// Closes every client's connection, waiting until the node has heard (so a bench run right
/// after finds the node's connection places free, not held until their idle timeout).
async fn finish_all(clients: Vec<ClientRun>) {
    let mut closing = tokio::task::JoinSet::new();
    for mut c in clients {
        closing.spawn(async move { c.client.conn.finish(FINISH_PATIENCE).await });
    }
    while closing.join_next().await.is_some() {}
}

/// Every client deregisters the services it registered, on its own connection.
async fn deregister_all(clients: Vec<ClientRun>, total: u64, timeout: Duration, o: &Out) -> Result<Cleanup, CliError> {
    let bar = bar(o, Amount::Events(total), "deregister");
    let started = Instant::now();
    let mut workers = Vec::with_capacity(clients.len());
    for c in clients {
        let bar = bar.clone();
        workers.push(tokio::spawn(async move {
            let (mut client, mut done, mut failed) = (c.client, 0u64, 0u64);
            for id in c.ids {
                let event = SignedEvent::sign(
                    &client.key,
                    client.fingerprint,
                    Timestamp::now(),
                    EventBody::ServiceDeregistered { service_id: id, reason: "spore bench cleanup".into() },
                );
                match client.write(&event, |r| matches!(r, Rejection::UnknownService(x) if *x == id), timeout).await {
                    Ok(()) => {
                        done += 1;
                        bar.inc(1);
                    }
                    Err(WriteFailure::Gave(e) | WriteFailure::Fatal(e)) => {
                        tracing::warn!(error = %e, service = %id, "could not deregister");
                        failed += 1;
                    }
                }
            }
            client.conn.finish(FINISH_PATIENCE).await;
            (done, failed)
        }));
    }
    let (mut done, mut failed) = (0, 0);
    for w in workers {
        let (d, f) = w.await.map_err(|e| CliError::Io(format!("a bench client failed: {e}")))?;
        done += d;
        failed += f;
    }
    bar.finish_and_clear();
    Ok(Cleanup { done, failed, seconds: started.elapsed().as_secs_f64() })
}

/// A lock whose holder panicked still holds a valid first error.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A progress bar on stderr when it is a terminal and the output is for humans; hidden
/// otherwise. Counts writes towards `--events`, or runs as a counter for `--duration`.
fn bar(o: &Out, amount: Amount, what: &str) -> ProgressBar {
    if o.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let (bar, template) = match amount {
        Amount::Events(n) => (
            ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
        ),
        Amount::For(_) => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{msg:>10} {spinner} {pos} writes ({per_sec}, {elapsed})",
        ),
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
