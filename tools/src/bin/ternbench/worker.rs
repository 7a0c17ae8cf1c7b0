//! One worker process: runs its slice of a scenario on a single-threaded tokio runtime and
//! reports to the parent over stdout (`progress N`, `ready`, `result {json}`); `go` on stdin
//! releases a barrier (the storm starts in every worker at once).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tern_protocol::*;

use crate::failover::Failover;
use crate::placement::pair_users;
use crate::proto::{login, token, Conn, Dialer, Transport};
use crate::tls::Suite;

/// What the parent asks a worker to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub index: usize,
    pub workers: usize,
    pub target: SocketAddr,
    pub transport: Transport,
    /// PEM file of the certificates TLS trusts.
    pub ca: Option<PathBuf>,
    pub tls_name: Option<String>,
    /// The TLS 1.3 suite offered first (default: rustls' order).
    pub tls_suite: Option<Suite>,
    /// TLS session resumption (a session cache shared by the worker's connections).
    pub resume: bool,
    pub secret_hex: String,
    /// Source addresses 127.0.0.(first_source .. first_source + sources).
    pub first_source: u8,
    pub sources: u8,
    pub timeout_secs: u64,
    pub run_id: String,
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Scenario {
    Idle {
        conns: usize,
        hold_secs: u64,
        /// Handshakes in flight per worker.
        inflight: usize,
    },
    P2p {
        pairs: usize,
        messages: u64,
        rate: u64,
        window: usize,
        body: usize,
        /// Per pair, the cross-node name pick (`placement::pair_users`); none: plain names.
        #[serde(default)]
        cross: Option<Vec<u16>>,
    },
    Storm {
        clients: usize,
        messages: u64,
    },
    Fanout {
        members: usize,
        room: String,
        /// A group of every member instead of a room (`room` is its name).
        #[serde(default)]
        group: bool,
        load: Load,
    },
    /// Connected clients over a cluster, one node killed: time until its clients are back.
    Failover(Failover),
}

/// A worker's findings.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub connected: u64,
    pub failed: u64,
    pub connect_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub violations: Vec<String>,
    pub elapsed_secs: f64,
    /// hdrhistogram V2, hex: latencies in microseconds.
    pub ack_us: String,
    pub push_us: String,
    pub sync_us: String,
    /// TLS handshakes, full and resumed.
    pub tls_full: u64,
    pub tls_resumed: u64,
    pub tls_suite: Option<String>,
    /// Fanout: per message (by its sequence), microseconds from SEND to the PUSH at the last
    /// of this worker's members (0: no member here got it).
    #[serde(default)]
    pub last_us: Vec<u64>,
    /// Failover: clients per node that accepted their HELLO (native address), before the kill.
    #[serde(default)]
    pub per_node: BTreeMap<String, u64>,
    /// Failover: clients on the killed node, those back (HELLO accepted and SYNC answered), the
    /// nodes they came back at, their connection attempts, and how many clients of the other
    /// nodes lost their connection.
    #[serde(default)]
    pub affected: u64,
    #[serde(default)]
    pub back: u64,
    #[serde(default)]
    pub moved_to: BTreeMap<String, u64>,
    #[serde(default)]
    pub reconnect_attempts: u64,
    #[serde(default)]
    pub unaffected_closed: u64,
}

pub fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits; values above are clamped by `saturating_record`.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut v = Vec::new();
    if V2Serializer::new().serialize(h, &mut v).is_err() {
        return String::new();
    }
    hex::encode(v)
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) fn source(spec: &Spec, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        spec.first_source + (n % spec.sources as usize) as u8,
    ))
}

/// Tells the parent this worker is set up and waits for its `go` (a barrier over all workers).
async fn ready_and_wait() -> Result<()> {
    barrier("ready").await
}

/// Says `word` and waits for the parent's `go`, which comes once every worker said it.
async fn barrier(word: &str) -> Result<()> {
    barrier_line(word).await.map(drop)
}

/// [`barrier`], returning the parent's line (`go`, and for the failover the kill's time).
pub(crate) async fn barrier_line(word: &str) -> Result<String> {
    say(word);
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line
    })
    .await?;
    Ok(line)
}

/// Tells the parent every 200 ms how many more items `done` counts, until aborted.
fn report_progress(done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut shown = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let d = done.load(Ordering::Relaxed);
            if d > shown {
                say(&format!("progress {}", d - shown));
                shown = d;
            }
        }
    })
}

/// The indexes of items `0..total` this worker handles.
pub(crate) fn slice(spec: &Spec, total: usize) -> std::ops::Range<usize> {
    let per = total.div_ceil(spec.workers.max(1));
    let start = (spec.index * per).min(total);
    start..(start + per).min(total)
}

pub fn run(spec: Spec) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let deadline = Duration::from_secs(spec.timeout_secs);
        match tokio::time::timeout(deadline, scenario(&spec)).await {
            Ok(r) => r,
            Err(_) => bail!(
                "worker {} hit the {}s time limit",
                spec.index,
                spec.timeout_secs
            ),
        }
    })?;
    say(&format!("result {}", serde_json::to_string(&report)?));
    Ok(())
}

async fn scenario(spec: &Spec) -> Result<Report> {
    let secret = hex::decode(&spec.secret_hex).context("secret")?;
    let d = Arc::new(Dialer::new(
        spec.target,
        spec.transport,
        spec.ca.as_deref(),
        spec.tls_name.as_deref(),
        spec.tls_suite,
        spec.resume,
    )?);
    let mut r = match spec.scenario.clone() {
        Scenario::Idle {
            conns,
            hold_secs,
            inflight,
        } => idle(spec, &d, &secret, conns, hold_secs, inflight).await,
        Scenario::P2p {
            pairs,
            messages,
            rate,
            window,
            body,
            cross,
        } => {
            let cross = cross.as_deref();
            p2p(
                spec, &d, &secret, pairs, cross, messages, rate, window, body,
            )
            .await
        }
        Scenario::Storm { clients, messages } => storm(spec, &d, &secret, clients, messages).await,
        Scenario::Fanout {
            members,
            room,
            group,
            load,
        } => fanout(spec, &d, &secret, members, load, &room, group).await,
        Scenario::Failover(f) => crate::failover::run(spec, &d, &secret, &f).await,
    }?;
    r.tls_full = d.tls_full.load(Ordering::Relaxed);
    r.tls_resumed = d.tls_resumed.load(Ordering::Relaxed);
    r.tls_suite = d.tls_suite.get().cloned();
    Ok(r)
}

async fn idle(
    spec: &Spec,
    d: &Arc<Dialer>,
    secret: &[u8],
    conns: usize,
    hold_secs: u64,
    inflight: usize,
) -> Result<Report> {
    let mut r = Report::default();
    let start = Instant::now();
    let mut held = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut since_progress = 0;
    for i in slice(spec, conns) {
        let user = format!("{}-idle-{i}", spec.run_id);
        let tok = token(secret, &user, "d")?;
        let (src, d) = (source(spec, i), Arc::clone(d));
        tasks.spawn(async move { login(&d, src, &tok, "d", 0).await });
        // Bound the handshakes in flight so a large run does not flood the accept queue.
        while tasks.len() >= inflight.max(1) {
            if let Some(res) = tasks.join_next().await {
                account(&mut r, &mut held, res?);
                since_progress += 1;
            }
        }
        if since_progress >= 100 {
            say(&format!("progress {since_progress}"));
            since_progress = 0;
        }
    }
    while let Some(res) = tasks.join_next().await {
        account(&mut r, &mut held, res?);
        since_progress += 1;
    }
    say(&format!("progress {since_progress}"));
    r.connect_secs = start.elapsed().as_secs_f64();
    ready_and_wait().await?;
    // Hold the connections idle, answering nothing: the node must keep them for its idle
    // timeout, which is longer than any hold.
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    r.elapsed_secs = start.elapsed().as_secs_f64();
    // The parent measures the node's memory of idle connections before they go.
    barrier("held").await?;
    drop(held);
    Ok(r)
}

fn account(r: &mut Report, held: &mut Vec<Conn>, res: Result<Conn>) {
    match res {
        Ok(c) => {
            r.connected += 1;
            held.push(c);
        }
        Err(e) => {
            r.failed += 1;
            if r.violations.len() < 5 {
                r.violations.push(format!("connect failed: {e:#}"));
            }
        }
    }
}

/// Message bodies carry the send time and the per-pair sequence, so that the receiver can
/// measure latency and check loss, duplication and order without any shared state.
fn stamp(epoch: Instant, seq: u64, size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size.max(16));
    b.extend_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.resize(size.max(16), b'x');
    b
}

fn unstamp(body: &[u8]) -> Option<(u64, u64)> {
    let t = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let s = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    Some((t, s))
}

#[allow(clippy::too_many_arguments)]
async fn p2p(
    spec: &Spec,
    d: &Arc<Dialer>,
    secret: &[u8],
    pairs: usize,
    cross: Option<&[u16]>,
    messages: u64,
    rate: u64,
    window: usize,
    size: usize,
) -> Result<Report> {
    let mine = slice(spec, pairs);
    let n_mine = mine.len() as u64;
    let epoch = Instant::now();
    let mut r = Report::default();
    // Messages for this worker's pairs, spread evenly.
    let per_pair: Vec<u64> = mine
        .clone()
        .map(|i| messages / pairs as u64 + u64::from((i as u64) < messages % pairs as u64))
        .collect();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (k, i) in mine.clone().enumerate() {
        let pick = cross.and_then(|c| c.get(i).copied());
        let (s_user, r_user) = pair_users(&spec.run_id, i, pick);
        let s = login(
            d,
            source(spec, 2 * i),
            &token(secret, &s_user, "d")?,
            "d",
            0,
        )
        .await?;
        let rc = login(
            d,
            source(spec, 2 * i + 1),
            &token(secret, &r_user, "d")?,
            "d",
            0,
        )
        .await?;
        senders.push((s, r_user, per_pair[k], i));
        receivers.push((rc, s_user, per_pair[k]));
        r.connected += 2;
    }
    say("ready");
    let delivered = Arc::new(AtomicU64::new(0));
    let per_sender_rate = if rate == 0 || n_mine == 0 {
        0
    } else {
        (rate / spec.workers as u64).div_ceil(n_mine).max(1)
    };

    let mut recv_tasks = tokio::task::JoinSet::new();
    for (mut c, from, expect) in receivers {
        let delivered = Arc::clone(&delivered);
        recv_tasks.spawn(async move {
            let mut h = hist();
            let mut next = 0u64;
            let mut violations = Vec::new();
            let mut got = 0u64;
            let mut unacked = 0u32;
            let mut last_inbox = 0u64;
            while got < expect {
                let Some(f) = c.reader.next().await? else {
                    violations.push(format!(
                        "receiver of {from}: connection closed after {got}/{expect}"
                    ));
                    break;
                };
                let Body::Push(m) = f.body else { continue };
                if m.sender != from.as_str() {
                    continue;
                }
                match unstamp(&m.body) {
                    Some((t, seq)) => {
                        let now = epoch.elapsed().as_nanos() as u64;
                        h.saturating_record(now.saturating_sub(t) / 1000);
                        if seq != next && violations.len() < 5 {
                            violations.push(format!(
                                "from {from}: expected #{next}, got #{seq} ({})",
                                if seq < next {
                                    "duplicate or reordered"
                                } else {
                                    "lost"
                                }
                            ));
                        }
                        next = seq + 1;
                    }
                    None => violations.push(format!("from {from}: body without stamp")),
                }
                got += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
                last_inbox = m.inbox_seq;
                unacked += 1;
                if unacked >= 64 {
                    c.writer
                        .send(&Frame::new(
                            0,
                            Body::PushAck(PushAck {
                                inbox_seq: last_inbox,
                            }),
                        ))
                        .await?;
                    unacked = 0;
                }
            }
            if unacked > 0 {
                c.writer
                    .send(&Frame::new(
                        0,
                        Body::PushAck(PushAck {
                            inbox_seq: last_inbox,
                        }),
                    ))
                    .await?;
            }
            anyhow::Ok((got, h, violations))
        });
    }

    let mut send_tasks = tokio::task::JoinSet::new();
    for (mut c, to, count, i) in senders {
        let start_in = match per_sender_rate {
            0 => Duration::ZERO,
            r => Duration::from_nanos(1_000_000_000 / r * i as u64 / pairs as u64),
        };
        send_tasks.spawn(async move {
            let load = Load {
                messages: count,
                rate: per_sender_rate,
                window,
                size,
                start_in,
            };
            let who = format!("sender to {to}");
            let to = Conv::direct(to);
            send_paced(&mut c, &load, &who, |seq, rid| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&seq.to_le_bytes());
                id[8..].copy_from_slice(&(u64::from(rid) ^ 0x5a5a).to_le_bytes());
                Send {
                    to: to.clone(),
                    msg_id: MsgId(id),
                    kind: MessageKind::CUSTOM,
                    body: stamp(epoch, seq, size).into(),
                }
            })
            .await
        });
    }

    let progress = report_progress(Arc::clone(&delivered));
    let start = Instant::now();
    let mut ack_h = hist();
    let mut push_h = hist();
    while let Some(res) = send_tasks.join_next().await {
        let (sent, acked, h, v) = res??;
        r.sent += sent;
        r.acked += acked;
        ack_h.add(&h).ok();
        r.violations.extend(v);
    }
    while let Some(res) = recv_tasks.join_next().await {
        let (got, h, v) = res??;
        r.delivered += got;
        push_h.add(&h).ok();
        r.violations.extend(v);
    }
    progress.abort();
    r.elapsed_secs = start.elapsed().as_secs_f64();
    if r.delivered != r.sent {
        r.violations
            .push(format!("sent {} but delivered {}", r.sent, r.delivered));
    }
    r.ack_us = encode_hist(&ack_h);
    r.push_us = encode_hist(&push_h);
    Ok(r)
}

async fn storm(
    spec: &Spec,
    d: &Arc<Dialer>,
    secret: &[u8],
    clients: usize,
    messages: u64,
) -> Result<Report> {
    let mine = slice(spec, clients);
    let mut r = Report::default();
    // Seed: each client connects once (so the device exists), leaves, then a sender fills its
    // inbox while it is offline.
    let sender_user = format!("{}-storm-sender-{}", spec.run_id, spec.index);
    let mut sender = login(
        d,
        source(spec, 0),
        &token(secret, &sender_user, "d")?,
        "d",
        0,
    )
    .await?;
    let mut rid = 2u32;
    for i in mine.clone() {
        let user = format!("{}-storm-{i}", spec.run_id);
        drop(login(d, source(spec, i), &token(secret, &user, "d")?, "d", 0).await?);
        for k in 0..messages {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            id[8..].copy_from_slice(&k.to_le_bytes());
            sender.writer.queue(&Frame::new(
                rid,
                Body::Send(Send {
                    to: Conv::direct(user.as_str()),
                    msg_id: MsgId(id),
                    kind: MessageKind::CUSTOM,
                    body: k.to_le_bytes().to_vec().into(),
                }),
            ))?;
            rid += 1;
        }
        sender.writer.flush().await?;
    }
    let mut acks = 0u64;
    let want = mine.len() as u64 * messages;
    while acks < want {
        match sender.reader.next().await? {
            Some(Frame {
                body: Body::SendAck(_),
                ..
            }) => {
                acks += 1;
                r.sent += 1;
            }
            Some(Frame {
                body: Body::Error(e),
                ..
            }) => bail!("seeding the storm: ERROR {} {}", e.code, e.message),
            Some(_) => {}
            None => bail!("seeding the storm: sender disconnected"),
        }
    }
    // Every worker's clients hit the node together.
    ready_and_wait().await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in mine.clone() {
        let user = format!("{}-storm-{i}", spec.run_id);
        let tok = token(secret, &user, "d")?;
        let (src, d) = (source(spec, i), Arc::clone(d));
        let from = sender_user.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let mut c = login(&d, src, &tok, "d", 0).await?;
            let mut after = 0u64;
            let mut seen = Vec::new();
            loop {
                c.writer
                    .send(&Frame::new(
                        7,
                        Body::Sync(Sync {
                            after_inbox_seq: after,
                            limit: 0,
                        }),
                    ))
                    .await?;
                let page = loop {
                    match c.reader.next().await? {
                        Some(Frame {
                            body: Body::SyncPage(p),
                            ..
                        }) => break p,
                        Some(Frame {
                            body: Body::Error(e),
                            ..
                        }) => bail!("SYNC refused: {} {}", e.code, e.message),
                        Some(_) => continue,
                        None => bail!("closed during SYNC"),
                    }
                };
                for m in &page.messages {
                    after = after.max(m.inbox_seq);
                    if m.sender == from.as_str() {
                        let k = m
                            .body
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes);
                        seen.push(k.unwrap_or(u64::MAX));
                    }
                }
                if !page.more {
                    break;
                }
            }
            anyhow::Ok((t0.elapsed(), seen))
        });
    }
    let mut h = hist();
    while let Some(res) = tasks.join_next().await {
        match res? {
            Ok((t, seen)) => {
                r.connected += 1;
                h.saturating_record(t.as_micros() as u64);
                let expect: Vec<u64> = (0..messages).collect();
                if seen != expect && r.violations.len() < 5 {
                    r.violations.push(format!(
                        "a client synced {} messages, expected {messages} in order",
                        seen.len()
                    ));
                }
                r.delivered += seen.len() as u64;
                say("progress 1");
            }
            Err(e) => {
                r.failed += 1;
                if r.violations.len() < 5 {
                    r.violations.push(format!("storm client: {e:#}"));
                }
            }
        }
    }
    r.elapsed_secs = start.elapsed().as_secs_f64();
    r.sync_us = encode_hist(&h);
    Ok(r)
}

/// How a publisher sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    pub messages: u64,
    /// Messages per second; 0: as fast as the window allows.
    pub rate: u64,
    pub window: usize,
    /// Body bytes (at least 16: a timestamp and a sequence).
    pub size: usize,
    /// Wait before the first SEND. Paced senders that all started at once would stay in step
    /// and offer their load in bursts of one message each; spreading their starts over one gap
    /// offers a steady rate.
    pub start_in: Duration,
}

/// Wall-clock nanoseconds: room messages are stamped in one worker and received in others, so
/// the stamp needs a clock every process shares.
pub(crate) fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn wall_stamp(seq: u64, size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size.max(16));
    b.extend_from_slice(&wall_ns().to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.resize(size.max(16), b'x');
    b
}

/// One chat room: every member of this worker joins, member 0 (in worker 0) publishes after the
/// barrier, every other member counts and checks what it receives.
async fn fanout(
    spec: &Spec,
    d: &Arc<Dialer>,
    secret: &[u8],
    members: usize,
    load: Load,
    room: &str,
    group: bool,
) -> Result<Report> {
    let mine = slice(spec, members);
    let mut r = Report::default();
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(mine.len());
    for i in mine.clone() {
        let user = format!("{}-m{i}", spec.run_id);
        let mut c = login(d, source(spec, i), &token(secret, &user, "d")?, "d", 0).await?;
        if group {
            // Group members need no join: being online is enough to get the PUSH.
            conns.push((i, c));
            r.connected += 1;
            continue;
        }
        c.writer
            .send(&Frame::new(
                1,
                Body::RoomJoin(RoomJoin {
                    room: room.into(),
                    recent: 1,
                }),
            ))
            .await?;
        loop {
            let answer = c
                .reader
                .next_with(|f| match &f.body {
                    Body::HistoryPage(_) if f.request_id == 1 => Some(Ok(())),
                    Body::Error(e) if f.request_id == 1 => {
                        Some(Err(format!("ERROR {} {}", e.code, e.message)))
                    }
                    _ => None,
                })
                .await?;
            match answer {
                Some(Some(Ok(()))) => break,
                Some(Some(Err(e))) => bail!("member {i} joining {room}: {e}"),
                Some(None) => {}
                None => bail!("member {i}: the node closed the connection before the join"),
            }
        }
        conns.push((i, c));
        r.connected += 1;
    }
    r.connect_secs = t0.elapsed().as_secs_f64();
    // The publisher starts once every worker's members are in the room.
    ready_and_wait().await?;
    let start = Instant::now();
    let count = load.messages;
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut publisher = None;
    let mut receivers = tokio::task::JoinSet::new();
    // What members listen for: the room's messages, or any group's (the run's only group,
    // whose id the node picks); group events are told apart by their kind.
    let (kind, only) = if group {
        (ConvKind::GROUP, None)
    } else {
        (ConvKind::ROOM, Some(room.to_owned()))
    };
    for (i, c) in conns {
        if i == 0 {
            publisher = Some(c);
            continue;
        }
        let (last, delivered) = (Arc::clone(&last), Arc::clone(&delivered));
        let only = only.clone();
        receivers.spawn(async move {
            receive_room(c, i, kind, only.as_deref(), count, &last, &delivered).await
        });
    }
    let progress = report_progress(Arc::clone(&delivered));
    let mut ack_h = hist();
    if let Some(mut c) = publisher {
        let to = if group {
            Conv {
                kind: ConvKind::GROUP,
                id: create_group(&mut c, spec, room, members).await?.into(),
            }
        } else {
            Conv {
                kind: ConvKind::ROOM,
                id: room.to_owned().into(),
            }
        };
        let (sent, acked, h, v) = send_paced(&mut c, &load, "publisher", |seq, _| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&seq.to_le_bytes());
            id[8..].copy_from_slice(&0x726f6f6du64.to_le_bytes());
            Send {
                to: to.clone(),
                msg_id: MsgId(id),
                kind: MessageKind::CUSTOM,
                body: wall_stamp(seq, load.size).into(),
            }
        })
        .await?;
        r.sent = sent;
        r.acked = acked;
        ack_h = h;
        r.violations.extend(v);
    }
    let mut push_h = hist();
    while let Some(res) = receivers.join_next().await {
        let (got, h, v) = res??;
        r.delivered += got;
        push_h.add(&h).ok();
        r.violations.extend(v);
    }
    progress.abort();
    r.elapsed_secs = start.elapsed().as_secs_f64();
    r.ack_us = encode_hist(&ack_h);
    r.push_us = encode_hist(&push_h);
    r.last_us = last.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    Ok(r)
}

/// SENDs `load.messages` messages made by `make(seq, request_id)`, at most `load.window`
/// unacknowledged and at `load.rate` per second (0: as fast as the window allows); any refusal
/// ends the run and is reported, not retried.
async fn send_paced(
    c: &mut Conn,
    load: &Load,
    who: &str,
    mut make: impl FnMut(u64, u32) -> Send<'static>,
) -> Result<(u64, u64, Histogram<u64>, Vec<String>)> {
    let mut h = hist();
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut violations = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let window = load.window.max(1);
    let gap = 1_000_000_000u64
        .checked_div(load.rate)
        .map(Duration::from_nanos);
    let mut next_at = Instant::now() + load.start_in;
    while acked < load.messages {
        while sent < load.messages
            && pending.len() < window
            && gap.is_none_or(|_| Instant::now() >= next_at)
        {
            let rid = sent as u32 + 2;
            c.writer
                .queue(&Frame::new(rid, Body::Send(make(sent, rid))))?;
            pending.insert(rid, Instant::now());
            sent += 1;
            if let Some(g) = gap {
                next_at += g;
            }
        }
        c.writer.flush().await?;
        let wait = if sent < load.messages && gap.is_some() && pending.len() < window {
            next_at.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(30)
        };
        let answer = match tokio::time::timeout(
            wait,
            c.reader.next_with(|f| match &f.body {
                Body::SendAck(_) => Some(Ok(f.request_id)),
                Body::Error(e) => Some(Err(format!("ERROR {} {}", e.code, e.message))),
                _ => None,
            }),
        )
        .await
        {
            Err(_) if wait < Duration::from_secs(30) => continue,
            Err(_) => bail!("{who}: no SEND_ACK for 30 s"),
            Ok(a) => a?,
        };
        match answer {
            None => {
                violations.push(format!(
                    "{who}: connection closed after {acked}/{} acks",
                    load.messages
                ));
                break;
            }
            Some(Some(Ok(rid))) => {
                if let Some(t) = pending.remove(&rid) {
                    h.saturating_record(t.elapsed().as_micros() as u64);
                    acked += 1;
                }
            }
            // OVERLOADED or RATE_LIMITED included (for a room benchmark, raise `[rooms]
            // rate_per_sec`): the report must show a refusal rather than hide it.
            Some(Some(Err(e))) => {
                violations.push(format!("{who}: {e}"));
                break;
            }
            Some(None) => {}
        }
    }
    Ok((sent, acked, h, violations))
}

/// How long a room member waits for the next message before it gives up.
const MEMBER_IDLE: Duration = Duration::from_secs(5);

/// A member: expects `count` room messages in order, records each one's latency and the latest
/// arrival per message.
/// Creates the run's group with members `1..members` (their user ids are the run's) and
/// returns its id. Members are added in batches that fit a frame.
async fn create_group(c: &mut Conn, spec: &Spec, name: &str, members: usize) -> Result<String> {
    const BATCH: usize = 1000;
    let info = request(
        c,
        Body::GroupCreate(GroupCreate {
            name: name.to_owned().into(),
            members: Vec::new(),
        }),
    )
    .await?;
    let Body::GroupInfo(info) = info else {
        bail!("GROUP_CREATE answered with {info:?}");
    };
    let id = info.group.into_owned();
    let users: Vec<String> = (1..members)
        .map(|i| format!("{}-m{i}", spec.run_id))
        .collect();
    for chunk in users.chunks(BATCH) {
        let answer = request(
            c,
            Body::GroupMembers(GroupMembers {
                group: id.clone().into(),
                op: MemberOp::ADD,
                users: chunk.iter().map(|u| u.clone().into()).collect(),
                arg: 0,
            }),
        )
        .await?;
        if !matches!(answer, Body::Ok) {
            bail!("adding members to {id}: {answer:?}");
        }
    }
    Ok(id)
}

/// One request on the publisher's connection before the run (request id 7), its answer.
async fn request(c: &mut Conn, body: Body<'static>) -> Result<Body<'static>> {
    const RID: u32 = 7;
    c.writer.send(&Frame::new(RID, body)).await?;
    loop {
        match c.reader.next().await? {
            Some(f) if f.request_id == RID => match f.body {
                Body::Error(e) => bail!("ERROR {} {}", e.code, e.message),
                b => return Ok(b),
            },
            Some(_) => {}
            None => bail!("the node closed the publisher's connection"),
        }
    }
}

async fn receive_room(
    mut c: Conn,
    member: usize,
    kind: ConvKind,
    only: Option<&str>,
    count: u64,
    last: &[AtomicU64],
    delivered: &AtomicU64,
) -> Result<(u64, Histogram<u64>, Vec<String>)> {
    let mut h = hist();
    let mut violations = Vec::new();
    let (mut got, mut next) = (0u64, 0u64);
    while got < count {
        // The publisher may stop early (a refusal, in another worker): a member that hears
        // nothing for a while reports what it got instead of waiting for the run's time limit.
        let arrival = c.reader.next_with(|f| match &f.body {
            Body::Push(m)
                if m.conv.kind == kind
                    && m.kind == MessageKind::CUSTOM
                    && only.is_none_or(|id| m.conv.id == id) =>
            {
                Some(unstamp(&m.body))
            }
            _ => None,
        });
        let Ok(seen) = tokio::time::timeout(MEMBER_IDLE, arrival).await else {
            violations.push(format!(
                "member {member}: nothing for {}s after {got}/{count}",
                MEMBER_IDLE.as_secs()
            ));
            break;
        };
        let seen = seen?;
        let stamp = match seen {
            None => {
                violations.push(format!(
                    "member {member}: connection closed after {got}/{count}"
                ));
                break;
            }
            Some(None) => continue,
            Some(Some(s)) => s,
        };
        let Some((t, seq)) = stamp else {
            violations.push(format!("member {member}: body without stamp"));
            got += 1;
            continue;
        };
        let us = wall_ns().saturating_sub(t) / 1000;
        h.saturating_record(us);
        if let Some(slot) = last.get(seq as usize) {
            slot.fetch_max(us.max(1), Ordering::Relaxed);
        }
        if seq != next && violations.len() < 5 {
            violations.push(format!(
                "member {member}: expected #{next}, got #{seq} ({})",
                if seq < next {
                    "duplicate or reordered"
                } else {
                    "lost"
                }
            ));
        }
        next = seq + 1;
        got += 1;
        delivered.fetch_add(1, Ordering::Relaxed);
    }
    Ok((got, h, violations))
}
