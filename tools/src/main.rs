//! `spore`: the mycnet-spores command line.
//!
//! * Log inspector: `generate`, `verify`, `dump`, `stats`, `state`, `replay`, and forensics
//!   over two branches or seed files: `diff`, `blame` — every command
//!   with human output and `--json`; exit 0 when all is well, 1 when the data is bad, 2 for
//!   usage or I/O errors; a progress bar on a terminal for long work.
//! * Running nodes: `keygen`, `node` (one node over QUIC, from a TOML config or flags),
//!   `status --addr` and `query --addr` (read a running node), `service register|deregister`
//!   (write through a running node with an admitted node's key), `bench` (load a running
//!   network), `demo` (a local network).

mod args;
mod benchcmd;
mod demo;
mod forensics;
mod inspect;
mod member;
mod output;
mod querycmd;
mod remote;
mod repair;
mod seedcmd;
mod service;
mod watchcmd;

use std::sync::Arc;

/// The node's allocator. Each write copies and later frees small nodes of the projection's
/// persistent maps; mimalloc serves that faster than glibc's malloc (see `benches/README.md`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

use clap::Parser;
use mycnet_spores::core::projection::{NodeFilter, ServiceFilter};
use mycnet_spores::net::quic::{Admission, QuicBackend};
use mycnet_spores::node::RoleConfig;

use crate::args::{Cli, Command, LogFormat, MemberCommand, Profile, QueryWhat, Role, SeedCommand, ServiceCommand};
use crate::output::{CliError, CliResult, Out};

fn init_tracing(default: &str) {
    init_logs(default, LogFormat::Text);
}

fn init_logs(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => logs.json().with_current_span(true).try_init(),
        // Colour codes only on a terminal: node logs are often redirected to files.
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("tokio runtime: {e}")))
}

fn run(cli: Cli) -> CliResult {
    if let Some(path) = &cli.client_key_file {
        remote::set_client_key(path)?;
    }
    match cli.command {
        Command::Generate { out, events, services, nodes, seed, json } => {
            let size = match (events, services) {
                (_, Some(services)) => inspect::Size::Registry { services },
                (Some(events), None) => inspect::Size::Events(events),
                (None, None) => return Err(output::CliError::usage("give --events or --services")),
            };
            inspect::generate(&out, size, nodes, seed, &mut Out::new(json))
        }
        Command::Verify { dir, json } => inspect::verify(&dir, &mut Out::new(json)),
        Command::Dump { dir, from, to, json } => inspect::dump(&dir, from, to, &mut Out::new(json)),
        Command::Stats { dir, json } => inspect::stats(&dir, &mut Out::new(json)),
        Command::State { dir, at_seq, at_time, json } => {
            let at = match (at_seq, at_time) {
                (Some(s), _) => inspect::At::Seq(s),
                (None, Some(t)) => inspect::At::Time(t),
                (None, None) => inspect::At::Head,
            };
            if dir.is_file() {
                forensics::state_of_seed(&dir, at, &mut Out::new(json))
            } else {
                inspect::state(&dir, at, &mut Out::new(json))
            }
        }
        Command::Diff { a, b, limit, json } => forensics::diff(&a, &b, limit, &mut Out::new(json)),
        Command::Blame { source, target, authored, limit, json } => forensics::blame(
            &source,
            &target,
            mycnet_spores::forensics::BlameOptions { include_authored: authored, limit },
            &mut Out::new(json),
        ),
        Command::Replay { dir, audit, json } => inspect::replay(&dir, audit, &mut Out::new(json)),
        Command::Keygen { data_dir, json } => remote::keygen(&data_dir, &mut Out::new(json)),
        Command::Node(a) => {
            init_logs("info,openraft=warn", a.log_format);
            let mut config = match a.config {
                Some(path) => remote::config_from_file(&path)?,
                None => remote::config_from_flags(
                    a.data_dir,
                    a.listen,
                    a.advertise,
                    a.name,
                    match a.role {
                        Role::Voter => RoleConfig::Voter,
                        Role::Latent => RoleConfig::Latent,
                    },
                    a.capabilities,
                    a.init,
                    a.join_addr,
                    a.join_key,
                    a.learner,
                    a.peer,
                    a.latent_peer,
                    a.from_seed,
                    a.trust_seed,
                )?,
            };
            match a.timeouts {
                Some(Profile::Lan) => config.timeouts = mycnet_spores::node::TimeoutProfile::Lan,
                Some(Profile::Wan) => config.timeouts = mycnet_spores::node::TimeoutProfile::Wan,
                None => {}
            }
            remote::http_from_flags(&mut config, a.http, a.http_token_file)?;
            if let Some(n) = a.connections_max {
                config.connections_max = Some(n as usize);
            }
            runtime()?.block_on(remote::run_node(config, &mut Out::new(a.json)))
        }
        Command::Status { addr, key, timeout_ms, json } => {
            init_tracing("warn");
            runtime()?.block_on(remote::status(
                &addr,
                key.as_deref(),
                Duration::from_millis(timeout_ms),
                &mut Out::new(json),
            ))
        }
        Command::Query {
            addr,
            what,
            name,
            capability,
            node,
            status,
            min_trust,
            include_offline,
            include_critical,
            limit,
            after,
            all,
            tiered,
            key,
            timeout_ms,
            json,
        } => {
            init_tracing("warn");
            let nodes = |status| NodeFilter { name: name.clone(), capability: capability.clone(), status, min_trust };
            let what = match what {
                QueryWhat::Nodes if node.is_some() || include_offline || include_critical => {
                    return Err(CliError::usage(
                        "--node, --include-offline and --include-critical filter services, not nodes",
                    ))
                }
                QueryWhat::Nodes => querycmd::QueryKind::Nodes(nodes(status)),
                QueryWhat::Offline => querycmd::QueryKind::Nodes(nodes(Some(mycnet_spores::NodeStatus::Offline))),
                QueryWhat::Services if status.is_some() => {
                    return Err(CliError::usage("--status filters nodes; services take --include-offline"))
                }
                QueryWhat::Services => querycmd::QueryKind::Services(ServiceFilter {
                    name,
                    capability,
                    node,
                    include_unavailable: include_offline,
                    include_critical,
                    min_trust,
                }),
            };
            let paging = querycmd::Paging { limit: limit.unwrap_or(0), after, all };
            runtime()?.block_on(querycmd::query(
                &addr,
                key.as_deref(),
                what,
                tiered,
                paging,
                Duration::from_millis(timeout_ms),
                &mut Out::new(json),
            ))
        }
        Command::Watch { addr, from_seq, kinds, name, node, key, json } => {
            init_tracing("warn");
            let filter = mycnet_spores::core::event::EventFilter { kinds, node, service_name: name };
            runtime()?.block_on(watchcmd::watch(&addr, key, filter, from_seq, &mut Out::new(json)))
        }
        Command::Member(MemberCommand::List { addr, timeout_ms, json }) => {
            init_tracing("warn");
            runtime()?.block_on(member::list(&addr, Duration::from_millis(timeout_ms), &mut Out::new(json)))
        }
        Command::Member(cmd) => {
            init_tracing("warn");
            let (what, c) = match cmd {
                MemberCommand::Remove(c) => (member::Change::Remove, c),
                MemberCommand::Promote(c) => (member::Change::Promote, c),
                MemberCommand::Demote(c) => (member::Change::Demote, c),
                MemberCommand::List { .. } => return Err(CliError::usage("list takes no node")),
            };
            runtime()?.block_on(member::change(
                &c.key_file,
                &c.addr,
                c.node,
                what,
                &c.reason,
                Duration::from_millis(c.timeout_ms),
                &mut Out::new(c.json),
            ))
        }
        Command::Service(ServiceCommand::Register {
            key_file,
            addr,
            name,
            endpoints,
            capabilities,
            mut metadata,
            check,
            timeout_ms,
            json,
        }) => {
            init_tracing("warn");
            let t = Duration::from_millis(timeout_ms);
            metadata.extend(check.map(|c| c.metadata_entry()));
            runtime()?.block_on(service::register_service(
                &key_file,
                &addr,
                name,
                endpoints,
                capabilities,
                metadata,
                t,
                &mut Out::new(json),
            ))
        }
        Command::Service(ServiceCommand::Deregister { key_file, addr, id, reason, timeout_ms, json }) => {
            init_tracing("warn");
            let t = Duration::from_millis(timeout_ms);
            runtime()?.block_on(service::deregister_service(&key_file, &addr, id, reason, t, &mut Out::new(json)))
        }
        Command::Seed(SeedCommand::Export { data_dir: Some(dir), out, events, json, .. }) => {
            seedcmd::export(&dir, &out, events, &mut Out::new(json))
        }
        Command::Seed(SeedCommand::Export {
            addr: Some(addr), key_file: Some(key_file), out, events, json, ..
        }) => {
            init_tracing("warn");
            runtime()?.block_on(seedcmd::export_running(&addr, &key_file, &out, events, &mut Out::new(json)))
        }
        Command::Seed(SeedCommand::Export { .. }) => {
            Err(CliError::usage("seed export needs --data-dir, or --addr with --key-file"))
        }
        Command::Seed(SeedCommand::Verify { file, network, quorum, json }) => {
            seedcmd::verify(&file, network, quorum, &mut Out::new(json))
        }
        Command::Seed(SeedCommand::Import { data_dir, file, network, quorum, json }) => seedcmd::import(
            &data_dir,
            &file,
            mycnet_spores::seed::VerifyPolicy { require_quorum: quorum, expected_network: network },
            &mut Out::new(json),
        ),
        Command::Seed(SeedCommand::Sign { file, key_file, out, json }) => {
            seedcmd::sign(&file, &key_file, out.as_deref(), &mut Out::new(json))
        }
        Command::Seed(SeedCommand::Inspect { file, json }) => seedcmd::inspect(&file, &mut Out::new(json)),
        Command::Seed(SeedCommand::List { dir, json }) => seedcmd::list(&dir, &mut Out::new(json)),
        Command::Bench { addr, key_file, clients, events, duration, size, keep, timeout_ms, json } => {
            init_tracing("warn");
            let amount = match (events, duration) {
                (Some(n), _) => benchcmd::Amount::Events(n),
                (None, Some(d)) => benchcmd::Amount::For(d),
                (None, None) => return Err(CliError::usage("bench needs --events or --duration")),
            };
            let opts = benchcmd::BenchOptions {
                addr,
                key_file,
                clients,
                amount,
                size,
                keep,
                write_timeout: Duration::from_millis(timeout_ms),
            };
            runtime()?.block_on(benchcmd::bench(opts, &mut Out::new(json)))
        }
        Command::Repair { data_dir, from_seed, from_peer, force, timeout_ms, json } => {
            let source = match (from_seed, from_peer) {
                (Some(f), _) => repair::Source::Seed(f),
                (None, Some(a)) => repair::Source::Peer(a),
                (None, None) => return Err(CliError::usage("repair needs --from-seed or --from-peer")),
            };
            repair::repair(&data_dir, source, force, std::time::Duration::from_millis(timeout_ms), &mut Out::new(json))
        }
        Command::Demo { keep, dir } => {
            init_tracing("error,openraft=off");
            let mut o = Out::new(false);
            let keep = keep || dir.is_some();
            let result = runtime()?.block_on(async {
                // Every demo node admits exactly the demo's keys, as a real deployment would.
                let admission = Admission::only([]);
                let backend = move |key: &mycnet_spores::NodeKey| {
                    admission.allow(key.node_id());
                    Arc::new(QuicBackend::new(key.clone(), admission.clone()))
                        as Arc<dyn mycnet_spores::net::NetworkBackend>
                };
                demo::run(demo::DemoOptions { keep, dir }, &backend, o.writer()).await
            });
            o.flush()?;
            result.map_err(|e| CliError::Io(format!("demo failed: {e}")))
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            // Written without `eprintln!`, which panics when stderr cannot take the line (a
            // log file on the disk that just filled up): the exit code must still say why.
            use std::io::Write as _;
            let line = match &e {
                CliError::Reported | CliError::BrokenPipe => None,
                CliError::BadData(m) => Some(format!("spore: bad data: {m}")),
                CliError::Usage(m) => Some(format!("spore: usage: {m}")),
                CliError::Io(m) => Some(format!("spore: error: {m}")),
            };
            if let Some(line) = line {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}
