//! ternbench: drives real `ternd` nodes over the real protocol from outside their process and
//! reports density, throughput, latency and resync time — the same way every run. Work is
//! spread over worker processes (each under the 20,000 open-files limit) and over source
//! addresses 127.0.0.x (past the ephemeral-port limit of one address). Loopback targets only.

mod failover;
mod placement;
mod proto;
mod tls;
mod worker;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use failover::Failover;
use placement::PairPlacement;
use proto::Transport;
use tls::Suite;
use worker::{hist, Load, Report, Scenario, Spec};

#[derive(Parser, Debug)]
#[command(
    name = "ternbench",
    version,
    about = "Load tool for tern nodes (loopback only)"
)]
struct Cli {
    /// How the clients reach the node (SPEC §12): native frames, TLS, WebSocket (ws, wss) or the
    /// HTTP tunnel with a streamed downstream (tunnel, tunnel-tls).
    #[arg(long, value_enum, default_value = "native", global = true)]
    transport: Transport,
    /// The node's address for the transport (on 127.0.0.0/8 or ::1). Default: from the
    /// `ports.json` of --data-dir (native, tls or http), else the transport's default port.
    #[arg(long, global = true)]
    target: Option<SocketAddr>,
    /// The node's data dir: its `dev-secret` is used to mint tokens, its `ports.json` gives the
    /// target and its `tls/cert.pem` the certificate TLS trusts.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// PEM file of the certificate(s) TLS trusts (default: DATA_DIR/tls/cert.pem).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// TLS server name to send and check (default: the target's IP address).
    #[arg(long, global = true)]
    tls_name: Option<String>,
    /// The TLS 1.3 cipher suite to offer first (default: rustls' order, AES-256 first, as the
    /// SDK does; browsers put AES-128 first).
    #[arg(long, value_enum, global = true)]
    tls_suite: Option<Suite>,
    /// Full TLS handshakes only: no session resumption.
    #[arg(long, global = true)]
    no_resume: bool,
    /// HS256 secret as configured on the node (instead of --data-dir).
    #[arg(long, env = "TERN_JWT_SECRET", global = true, hide_env_values = true)]
    secret: Option<String>,
    /// Worker processes; each holds at most ~19,000 sockets.
    #[arg(long, default_value_t = 1, global = true)]
    workers: usize,
    /// Source addresses to spread connections over: 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 16, global = true)]
    sources: u8,
    /// Node process id, to read its memory from /proc (idle scenario).
    #[arg(long, global = true)]
    node_pid: Option<u32>,
    /// Hard limit for the whole run, seconds.
    #[arg(long, default_value_t = 300, global = true)]
    timeout: u64,
    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Open N authenticated connections and hold them: connect rate and node memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to hold them after the last one is up.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Connection attempts in flight per worker.
        #[arg(long, default_value_t = 256)]
        inflight: usize,
    },
    /// N sender/receiver pairs: delivered messages per second, SEND→SEND_ACK and SEND→PUSH latency.
    P2p {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages in total over all pairs.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Offered rate in messages per second over all pairs; 0 = as fast as the node acknowledges.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Unacknowledged SENDs allowed per sender.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Message body size in bytes (at least 16: a timestamp and a sequence).
        #[arg(long, default_value_t = 100)]
        body: usize,
        /// The admin API of a cluster node (`GET /cluster/owner`): the report says how many
        /// pairs have their two users on different nodes.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Name every pair's users so that the two sit on different nodes (asks --admin), the
        /// sender's node sequencing the conversation on even pairs and the receiver's on odd ones.
        #[arg(long, requires = "admin")]
        cross_node: bool,
    },
    /// Clients connected over a cluster; ternbench SIGKILLs one node and measures the time until
    /// every client of that node is back: HELLO accepted by the node that now serves it (after
    /// REDIRECTs) and a SYNC answered. Clients reconnect as the SDK does (backoff from 100 ms
    /// doubling, plus up to 100 ms of jitter) and try the nodes in turn. Native transport only.
    Failover {
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        /// Native addresses of the cluster's nodes, the killed one included (client i enters
        /// by node i mod N and follows REDIRECT to its owner).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<SocketAddr>,
        /// The native address of the node to kill (one of --nodes).
        #[arg(long)]
        victim: SocketAddr,
        /// Process id of that node: ternbench sends it SIGKILL once every client is connected.
        #[arg(long)]
        kill_pid: u32,
        /// Seconds an affected client may take, from its connection's close, to be back.
        #[arg(long, default_value_t = 30)]
        wait: u64,
        /// The reconnection backoff's first wait and cap, in ms (the SDK's: 100 and 5000).
        #[arg(long, default_value_t = 100)]
        backoff_min_ms: u64,
        #[arg(long, default_value_t = 5000)]
        backoff_max_ms: u64,
        /// Connection attempts in flight per worker while connecting.
        #[arg(long, default_value_t = 256)]
        inflight: usize,
    },
    /// N clients with offline messages reconnect at once and resync: time until all are synced.
    Storm {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Messages waiting in each client's inbox.
        #[arg(long, default_value_t = 10)]
        messages: u64,
    },
    /// One chat room with N members online and one publisher: deliveries per second, SEND→PUSH
    /// per delivery and SEND→PUSH at the last member. The node's room send rate (`[rooms]
    /// rate_per_sec`, 20 by default) must allow the publisher's rate.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Messages the publisher sends.
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        /// Publisher rate in messages per second; 0 = as fast as the window allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Unacknowledged SENDs the publisher allows.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Message body size in bytes (at least 16: a timestamp and a sequence).
        #[arg(long, default_value_t = 100)]
        body: usize,
        /// Room name (default: one per run).
        #[arg(long)]
        room: Option<String>,
        /// A group instead of a room: the publisher creates it with every member (read
        /// diffusion above the node's `group_write_diffusion_max`), members stay online.
        #[arg(long)]
        group: bool,
    },
    #[command(hide = true, name = "__worker")]
    Worker { spec: String },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Worker { spec } = &cli.cmd {
        let spec: Spec = serde_json::from_str(spec).context("worker spec")?;
        return worker::run(spec);
    }
    let target = target(&cli)?;
    if !target.ip().is_loopback() {
        bail!("ternbench only targets loopback addresses; {target} is not one");
    }
    if let Cmd::Failover { nodes, victim, .. } = &cli.cmd {
        if let Some(a) = nodes.iter().find(|a| !a.ip().is_loopback()) {
            bail!("ternbench only targets loopback addresses; {a} is not one");
        }
        if !nodes.contains(victim) {
            bail!("--victim {victim} is not one of --nodes");
        }
        if cli.transport != Transport::Native {
            bail!("failover runs over the native transport only (it follows REDIRECT)");
        }
    }
    let ca = match (&cli.ca, &cli.data_dir) {
        (Some(ca), _) => Some(ca.clone()),
        (None, Some(d)) if cli.transport.uses_tls() => Some(d.join("tls").join("cert.pem")),
        _ => None,
    };
    if cli.transport.uses_tls() {
        match &ca {
            Some(ca) if !ca.is_file() => bail!(
                "{} does not exist: pass --ca with the node's certificate (or its CA)",
                ca.display()
            ),
            Some(_) => {}
            None => bail!("--transport {:?} needs --ca or --data-dir", cli.transport),
        }
    }
    let secret = match (&cli.secret, &cli.data_dir) {
        (Some(s), _) => s.clone().into_bytes(),
        (None, Some(d)) => std::fs::read_to_string(d.join("dev-secret"))
            .with_context(|| {
                format!(
                    "reading {}/dev-secret (start the node with --dev, or pass --secret)",
                    d.display()
                )
            })?
            .trim()
            .as_bytes()
            .to_vec(),
        (None, None) => bail!("pass --data-dir of a --dev node or --secret"),
    };
    let run_id = format!(
        "b{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut placement: Option<PairPlacement> = None;
    let scenario = match cli.cmd.clone() {
        Cmd::Idle {
            conns,
            hold,
            inflight,
        } => Scenario::Idle {
            conns,
            hold_secs: hold,
            inflight,
        },
        Cmd::P2p {
            pairs,
            messages,
            rate,
            window,
            body,
            admin,
            cross_node,
        } => {
            let mut cross = None;
            if let Some(admin) = admin {
                if !admin.ip().is_loopback() {
                    bail!("ternbench only targets loopback addresses; {admin} is not one");
                }
                if !cli.json {
                    eprintln!("asking {admin} where the {pairs} pairs' users sit");
                }
                if cross_node {
                    let (picks, placed) = placement::choose_cross_pairs(admin, &run_id, pairs)?;
                    cross = Some(picks);
                    placement = Some(placed);
                } else {
                    placement = Some(placement::count_pairs(admin, &run_id, pairs)?);
                }
            }
            Scenario::P2p {
                pairs,
                messages,
                rate,
                window: window.max(1),
                body: body.max(16),
                cross,
            }
        }
        Cmd::Failover {
            clients,
            nodes,
            victim,
            kill_pid: _,
            wait,
            backoff_min_ms,
            backoff_max_ms,
            inflight,
        } => Scenario::Failover(Failover {
            clients,
            nodes,
            victim,
            wait_secs: wait,
            backoff_min_ms,
            backoff_max_ms: backoff_max_ms.max(backoff_min_ms),
            inflight,
        }),
        Cmd::Storm { clients, messages } => Scenario::Storm { clients, messages },
        Cmd::Fanout {
            members,
            messages,
            rate,
            window,
            body,
            room,
            group,
        } => {
            if members < 2 {
                bail!("fanout needs at least 2 members (one publishes)");
            }
            Scenario::Fanout {
                members,
                group,
                room: room.unwrap_or_else(|| format!("bench-{run_id}")),
                load: Load {
                    messages,
                    rate,
                    window: window.max(1),
                    size: body.max(16),
                    start_in: std::time::Duration::ZERO,
                },
            }
        }
        Cmd::Worker { .. } => unreachable!(),
    };
    let sources = cli.sources.clamp(1, 250);
    let workers = cli.workers.max(1);
    let params = json!({
        "scenario": scenario_text(&scenario), "target": target.to_string(), "workers": workers,
        "transport": cli.transport, "tls_resumption": cli.transport.uses_tls().then_some(!cli.no_resume),
        "tls_suite": cli.tls_suite,
        "sources": format!("127.0.0.2-127.0.0.{}", 1 + sources as u32), "timeout_secs": cli.timeout, "run_id": run_id,
    });
    if !cli.json {
        eprintln!("ternbench {}", params);
    }
    let mut children: Vec<(Child, mpsc::Receiver<String>)> = Vec::new();
    let (total, unit) = match &scenario {
        Scenario::Idle { conns, .. } => (*conns as u64, "connections"),
        Scenario::P2p { messages, .. } => (*messages, "messages delivered"),
        Scenario::Storm { clients, .. } => (*clients as u64, "clients synced"),
        Scenario::Fanout { members, load, .. } => {
            (load.messages * (*members as u64 - 1), "deliveries")
        }
        Scenario::Failover(f) => (f.clients as u64, "clients connected, then back"),
    };
    let rss_before = cli.node_pid.and_then(rss_kib);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    for index in 0..workers {
        let spec = Spec {
            index,
            workers,
            target,
            transport: cli.transport,
            ca: ca.clone(),
            tls_name: cli.tls_name.clone(),
            tls_suite: cli.tls_suite,
            resume: !cli.no_resume,
            secret_hex: hex::encode(&secret),
            first_source: 2,
            sources,
            timeout_secs: cli.timeout,
            run_id: run_id.clone(),
            scenario: scenario.clone(),
        };
        let mut child = Command::new(std::env::current_exe()?)
            .arg("__worker")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a worker")?;
        let out = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        let (_ltx, lrx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
            let _ = tx.send((index, "exit".into()));
        });
        children.push((child, lrx));
    }
    drop(tx);
    let bar = if cli.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(unit);
    let deadline = Instant::now() + Duration::from_secs(cli.timeout + 30);
    let mut reports: Vec<Report> = Vec::new();
    let mut ready = 0;
    let mut exited = 0;
    let mut rss_held = None;
    let mut rss_idle = None;
    let mut held = 0;
    let mut started = None;
    while exited < workers {
        let Ok((index, line)) = rx.recv_timeout(Duration::from_millis(500)) else {
            if Instant::now() > deadline {
                for (c, _) in &mut children {
                    let _ = c.kill();
                }
                bail!("workers did not finish within the time limit");
            }
            continue;
        };
        if let Some(n) = line.strip_prefix("progress ") {
            bar.inc(n.parse().unwrap_or(0));
        } else if line == "ready" {
            ready += 1;
            if ready == workers {
                // Everyone is set up: measure memory of idle connections, release the storm;
                // for the failover, kill the node and tell the workers when.
                rss_held = cli.node_pid.and_then(rss_kib);
                started = Some(Instant::now());
                let mut go = String::from("go");
                if let Cmd::Failover { kill_pid, .. } = &cli.cmd {
                    bar.println(format!("every client is connected: SIGKILL to {kill_pid}"));
                    match kill(*kill_pid) {
                        Ok(at) => go = format!("go {at}"),
                        Err(e) => {
                            for (c, _) in &mut children {
                                let _ = c.kill();
                            }
                            return Err(e);
                        }
                    }
                }
                for (c, _) in &mut children {
                    if let Some(stdin) = c.stdin.as_mut() {
                        let _ = writeln!(stdin, "{go}");
                    }
                }
            }
        } else if line == "held" {
            held += 1;
            if held == workers {
                // The idle scenario's connections sat through the hold: their memory now is
                // what an idle connection costs.
                rss_idle = cli.node_pid.and_then(rss_kib);
                for (c, _) in &mut children {
                    if let Some(stdin) = c.stdin.as_mut() {
                        let _ = writeln!(stdin, "go");
                    }
                }
            }
        } else if let Some(j) = line.strip_prefix("result ") {
            reports.push(serde_json::from_str(j).context("worker result")?);
        } else if line == "exit" {
            exited += 1;
        } else {
            bar.println(format!("worker {index}: {line}"));
        }
    }
    let _ = started;
    bar.finish_and_clear();
    let mut ok = true;
    for (c, _) in &mut children {
        let status = c.wait()?;
        ok &= status.success();
    }
    if reports.len() != workers {
        bail!(
            "{} of {workers} workers failed before reporting (see their errors above)",
            workers - reports.len()
        );
    }
    let mem = MemSamples {
        before: rss_before,
        connected: rss_held,
        idle: rss_idle,
    };
    summarize(&cli, &scenario, params, &reports, mem, placement, ok)
}

/// The scenario for the report, without the per-pair name picks.
fn scenario_text(s: &Scenario) -> String {
    match s {
        Scenario::P2p {
            pairs,
            messages,
            rate,
            window,
            body,
            cross,
        } => format!(
            "P2p {{ pairs: {pairs}, messages: {messages}, rate: {rate}, window: {window}, \
             body: {body}, cross_node: {} }}",
            cross.is_some()
        ),
        other => format!("{other:?}"),
    }
}

/// SIGKILL to `pid` (through kill(1): the workspace forbids unsafe code); returns the wall-clock
/// time in ns taken just before, from which the failover's times are counted.
fn kill(pid: u32) -> Result<u64> {
    let at = worker::wall_ns();
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {pid} failed ({status})");
    }
    Ok(at)
}

/// `--target`, else the listener of the transport in the node's `ports.json`, else the
/// transport's default address.
fn target(cli: &Cli) -> Result<SocketAddr> {
    if let Some(t) = cli.target {
        return Ok(t);
    }
    let Some(dir) = &cli.data_dir else {
        return Ok(cli.transport.default_target());
    };
    let path = dir.join("ports.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(cli.transport.default_target());
    };
    let ports: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let key = cli.transport.port_key();
    let addr = ports[key].as_str().with_context(|| {
        format!(
            "{} has no {key:?} listener for --transport {:?}",
            path.display(),
            cli.transport
        )
    })?;
    addr.parse()
        .with_context(|| format!("{}: bad address {addr:?}", path.display()))
}

/// The node's memory before the connections, once they are all up, and after they sat idle
/// through the hold (the idle scenario only).
#[derive(Debug, Clone, Copy)]
struct MemSamples {
    before: Option<NodeMem>,
    connected: Option<NodeMem>,
    idle: Option<NodeMem>,
}

/// The node's resident memory: all of it, and the anonymous part (heap, stacks, buffers).
/// Connections grow the anonymous part; the file-backed rest is mostly the node's code, paged in
/// as the first connections run through it, which is why both are reported.
#[derive(Debug, Clone, Copy)]
struct NodeMem {
    rss_kib: u64,
    anon_kib: u64,
}

fn rss_kib(pid: u32) -> Option<NodeMem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(NodeMem {
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

fn merge(reports: &[Report], pick: fn(&Report) -> &String) -> Histogram<u64> {
    let mut h = hist();
    for r in reports {
        if let Ok(bytes) = hex::decode(pick(r)) {
            if let Ok(x) = Deserializer::new().deserialize::<u64, _>(&mut &bytes[..]) {
                h.add(&x).ok();
            }
        }
    }
    h
}

fn pcts(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    json!({"count": h.len(), "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
           "p999_us": h.value_at_quantile(0.999), "max_us": h.max()})
}

fn summarize(
    cli: &Cli,
    scenario: &Scenario,
    params: serde_json::Value,
    reports: &[Report],
    mem: MemSamples,
    placement: Option<PairPlacement>,
    workers_ok: bool,
) -> Result<()> {
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let max = |f: fn(&Report) -> f64| reports.iter().map(f).fold(0.0, f64::max);
    let violations: Vec<&String> = reports.iter().flat_map(|r| &r.violations).collect();
    let mut result = json!({"parameters": params, "violations": violations});
    let mut rows: Vec<(String, String)> = Vec::new();
    match scenario {
        Scenario::Idle { .. } => {
            let connected = sum(|r| r.connected);
            let secs = max(|r| r.connect_secs);
            let rate = connected as f64 / secs.max(1e-9);
            result["connected"] = json!(connected);
            result["failed"] = json!(sum(|r| r.failed));
            result["connect_secs"] = json!(secs);
            result["connects_per_sec"] = json!(rate);
            rows.push(("connections held".into(), connected.to_string()));
            rows.push(("failed".into(), sum(|r| r.failed).to_string()));
            rows.push(("connect rate".into(), format!("{rate:.0} /s ({secs:.2} s)")));
            let samples = [("connected", mem.connected), ("idle", mem.idle)];
            if let Some(a) = mem.before {
                let per = |x: u64, y: u64| {
                    (y.saturating_sub(x) as f64 * 1024.0) / connected.max(1) as f64
                };
                result["node_rss_kib_before"] = json!(a.rss_kib);
                result["node_anon_kib_before"] = json!(a.anon_kib);
                for (when, b) in samples {
                    let Some(b) = b else { continue };
                    let rss = per(a.rss_kib, b.rss_kib);
                    let anon = per(a.anon_kib, b.anon_kib);
                    result[format!("node_rss_kib_{when}")] = json!(b.rss_kib);
                    result[format!("node_anon_kib_{when}")] = json!(b.anon_kib);
                    result[format!("node_bytes_per_conn_{when}")] = json!(rss);
                    result[format!("node_anon_bytes_per_conn_{when}")] = json!(anon);
                    rows.push((
                        format!("node RSS, {when}"),
                        format!(
                            "{} KiB -> {} KiB ({} -> {} KiB anonymous)",
                            a.rss_kib, b.rss_kib, a.anon_kib, b.anon_kib
                        ),
                    ));
                    rows.push((
                        format!("node memory per connection, {when}"),
                        format!("{rss:.0} bytes ({anon:.0} anonymous)"),
                    ));
                }
            } else {
                rows.push((
                    "node memory per connection".into(),
                    "not measured (pass --node-pid)".into(),
                ));
            }
        }
        Scenario::P2p { .. } => {
            let delivered = sum(|r| r.delivered);
            let secs = max(|r| r.elapsed_secs);
            let rate = delivered as f64 / secs.max(1e-9);
            let ack = merge(reports, |r| &r.ack_us);
            let push = merge(reports, |r| &r.push_us);
            result["sent"] = json!(sum(|r| r.sent));
            result["acked"] = json!(sum(|r| r.acked));
            result["delivered"] = json!(delivered);
            result["elapsed_secs"] = json!(secs);
            result["delivered_per_sec"] = json!(rate);
            result["send_to_ack"] = pcts(&ack);
            result["send_to_push"] = pcts(&push);
            if let Some(p) = &placement {
                result["placement"] = json!(p);
                rows.push((
                    "pairs across nodes".into(),
                    format!(
                        "{} of {} (conversation on the sender's node {}, on the receiver's {})",
                        p.cross_node,
                        p.cross_node + p.same_node,
                        p.conv_on_sender_node,
                        p.conv_on_receiver_node
                    ),
                ));
                let per: Vec<String> = p
                    .users_per_node
                    .iter()
                    .map(|(n, k)| format!("{n} {k}"))
                    .collect();
                rows.push(("users per node".into(), per.join(", ")));
            }
            rows.push((
                "sent / acked / delivered".into(),
                format!("{} / {} / {delivered}", sum(|r| r.sent), sum(|r| r.acked)),
            ));
            rows.push((
                "delivered per second".into(),
                format!("{rate:.0} ({secs:.2} s)"),
            ));
            for (name, h) in [("SEND->SEND_ACK", &ack), ("SEND->PUSH", &push)] {
                if !h.is_empty() {
                    rows.push((
                        format!("{name} p50/p99/p999"),
                        format!(
                            "{} / {} / {} us",
                            h.value_at_quantile(0.5),
                            h.value_at_quantile(0.99),
                            h.value_at_quantile(0.999)
                        ),
                    ));
                }
            }
        }
        Scenario::Fanout { members, load, .. } => {
            let messages = &load.messages;
            let delivered = sum(|r| r.delivered);
            let expected = messages * (*members as u64 - 1);
            let secs = max(|r| r.elapsed_secs);
            let rate = delivered as f64 / secs.max(1e-9);
            let ack = merge(reports, |r| &r.ack_us);
            let push = merge(reports, |r| &r.push_us);
            // Per message, the latest arrival over every worker's members.
            let mut last = hist();
            for seq in 0..*messages as usize {
                let t = reports
                    .iter()
                    .filter_map(|r| r.last_us.get(seq))
                    .max()
                    .copied()
                    .unwrap_or(0);
                if t > 0 {
                    last.saturating_record(t);
                }
            }
            result["members"] = json!(members);
            result["join_secs"] = json!(max(|r| r.connect_secs));
            result["sent"] = json!(sum(|r| r.sent));
            result["acked"] = json!(sum(|r| r.acked));
            result["delivered"] = json!(delivered);
            result["expected"] = json!(expected);
            result["elapsed_secs"] = json!(secs);
            result["deliveries_per_sec"] = json!(rate);
            result["send_to_ack"] = pcts(&ack);
            result["send_to_push"] = pcts(&push);
            result["send_to_last_push"] = pcts(&last);
            rows.push(("members".into(), members.to_string()));
            rows.push((
                "sent / acked".into(),
                format!("{} / {}", sum(|r| r.sent), sum(|r| r.acked)),
            ));
            rows.push((
                "delivered / expected".into(),
                format!("{delivered} / {expected}"),
            ));
            rows.push((
                "deliveries per second".into(),
                format!("{rate:.0} ({secs:.2} s)"),
            ));
            for (name, h) in [
                ("SEND->SEND_ACK", &ack),
                ("SEND->PUSH", &push),
                ("SEND->last member PUSH", &last),
            ] {
                if !h.is_empty() {
                    rows.push((
                        format!("{name} p50/p99/max"),
                        format!(
                            "{} / {} / {} us",
                            h.value_at_quantile(0.5),
                            h.value_at_quantile(0.99),
                            h.max()
                        ),
                    ));
                }
            }
        }
        Scenario::Failover(f) => {
            let h = merge(reports, |r| &r.sync_us);
            let (affected, back) = (sum(|r| r.affected), sum(|r| r.back));
            let secs = max(|r| r.elapsed_secs);
            let mut per_node = std::collections::BTreeMap::<String, u64>::new();
            let mut moved_to = std::collections::BTreeMap::<String, u64>::new();
            for r in reports {
                for (n, k) in &r.per_node {
                    *per_node.entry(n.clone()).or_default() += k;
                }
                for (n, k) in &r.moved_to {
                    *moved_to.entry(n.clone()).or_default() += k;
                }
            }
            let show = |m: &std::collections::BTreeMap<String, u64>| {
                m.iter()
                    .map(|(n, k)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let failed = affected - back.min(affected);
            result["connected"] = json!(sum(|r| r.connected));
            result["connect_failed"] = json!(sum(|r| r.failed));
            result["clients_per_node"] = json!(per_node);
            result["victim"] = json!(f.victim.to_string());
            result["affected"] = json!(affected);
            result["back"] = json!(back);
            result["failed"] = json!(failed);
            result["back_at"] = json!(moved_to);
            result["reconnect_attempts"] = json!(sum(|r| r.reconnect_attempts));
            result["unaffected_disconnected"] = json!(sum(|r| r.unaffected_closed));
            result["last_back_secs"] = json!(secs);
            result["per_client"] = pcts(&h);
            rows.push((
                "clients connected".into(),
                format!(
                    "{} (failed {}; {})",
                    sum(|r| r.connected),
                    sum(|r| r.failed),
                    show(&per_node)
                ),
            ));
            rows.push((
                "affected (on the killed node)".into(),
                format!("{affected} on {}", f.victim),
            ));
            rows.push((
                "back / failed".into(),
                format!("{back} / {failed} ({})", show(&moved_to)),
            ));
            rows.push((
                "reconnect attempts".into(),
                sum(|r| r.reconnect_attempts).to_string(),
            ));
            rows.push(("SIGKILL -> last client back".into(), format!("{secs:.3} s")));
            if !h.is_empty() {
                rows.push((
                    "per client p50/p99/max".into(),
                    format!(
                        "{} / {} / {} ms",
                        h.value_at_quantile(0.5) / 1000,
                        h.value_at_quantile(0.99) / 1000,
                        h.max() / 1000
                    ),
                ));
            }
            rows.push((
                "other nodes' clients disconnected".into(),
                sum(|r| r.unaffected_closed).to_string(),
            ));
        }
        Scenario::Storm { .. } => {
            let synced = sum(|r| r.connected);
            let secs = max(|r| r.elapsed_secs);
            let h = merge(reports, |r| &r.sync_us);
            result["synced_clients"] = json!(synced);
            result["failed"] = json!(sum(|r| r.failed));
            result["messages_resynced"] = json!(sum(|r| r.delivered));
            result["all_synced_secs"] = json!(secs);
            result["per_client"] = pcts(&h);
            rows.push((
                "clients synced".into(),
                format!("{synced} (failed {})", sum(|r| r.failed)),
            ));
            rows.push(("messages resynced".into(), sum(|r| r.delivered).to_string()));
            rows.push(("time until all synced".into(), format!("{secs:.3} s")));
            if !h.is_empty() {
                rows.push((
                    "per client p50/p99".into(),
                    format!(
                        "{} / {} us",
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.99)
                    ),
                ));
            }
        }
    }
    let (full, resumed) = (sum(|r| r.tls_full), sum(|r| r.tls_resumed));
    if full + resumed > 0 {
        let suite = reports.iter().find_map(|r| r.tls_suite.clone());
        result["tls_handshakes"] = json!({"full": full, "resumed": resumed, "suite": suite});
        rows.push((
            "TLS handshakes full / resumed".into(),
            format!("{full} / {resumed} ({})", suite.as_deref().unwrap_or("?")),
        ));
    }
    let clean = violations.is_empty() && workers_ok;
    result["ok"] = json!(clean);
    if cli.json {
        println!("{result}");
    } else {
        println!(
            "{:<32} {}",
            "scenario",
            result["parameters"]["scenario"].as_str().unwrap_or("")
        );
        for (k, v) in &rows {
            println!("{k:<32} {v}");
        }
        if violations.is_empty() {
            println!("{:<32} none", "correctness violations");
        } else {
            println!("{:<32} {}", "correctness violations", violations.len());
            for v in &violations {
                println!("  - {v}");
            }
        }
    }
    if !clean {
        std::process::exit(1);
    }
    Ok(())
}
