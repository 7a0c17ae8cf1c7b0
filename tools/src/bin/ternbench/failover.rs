//! The failover scenario's worker side: its clients connect through the cluster's nodes
//! (following REDIRECT to their owner), the parent SIGKILLs one node, and every client whose
//! connection was on that node reconnects the way the SDK does (backoff from 100 ms doubling,
//! plus up to 100 ms of jitter, trying the nodes in turn) until a node accepts its HELLO and
//! answers a SYNC. Each client's time is measured from the kill, on the wall clock the parent
//! stamped it with. Every wait is bounded: the close by the parent's limit after the kill, the
//! reconnection by `wait` after the close, each attempt by a few seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tern_protocol::*;

use crate::proto::{login_at, token, Conn, Dialer};
use crate::worker::{encode_hist, hist, say, slice, source, Report, Spec};

/// What the parent asks of each worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failover {
    pub clients: usize,
    /// Native addresses of the cluster's nodes: where clients enter, and what they try in turn
    /// when they reconnect.
    pub nodes: Vec<SocketAddr>,
    /// The native address of the node the parent kills.
    pub victim: SocketAddr,
    /// How long an affected client may take, from its connection's close, to be back.
    pub wait_secs: u64,
    /// The SDK's backoff: first wait and cap (plus 0-99 ms of jitter).
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Handshakes in flight per worker while connecting.
    pub inflight: usize,
}

/// One connection attempt's limit (connect, REDIRECTs, HELLO, and the SYNC).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);

/// How one affected client ended.
enum Outcome {
    /// Back: the wall-clock time (ns) its SYNC was answered, the node, the attempts it took.
    Back(u64, SocketAddr, u64, Conn),
    /// Not back within the wait: the last error.
    Failed(String, u64),
}

pub async fn run(spec: &Spec, d: &Arc<Dialer>, secret: &[u8], f: &Failover) -> Result<Report> {
    if f.nodes.is_empty() {
        bail!("failover needs the nodes' addresses");
    }
    let mine = slice(spec, f.clients);
    let mut r = Report::default();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut on_victim = Vec::new();
    let mut others = Vec::new();
    let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
    let mut joined = |r: &mut Report, res: Result<(usize, Result<(Conn, SocketAddr)>), _>| match res
    {
        Ok((i, Ok((c, at)))) => {
            r.connected += 1;
            *per_node.entry(at.to_string()).or_default() += 1;
            if at == f.victim {
                on_victim.push((i, c));
            } else {
                others.push(c);
            }
        }
        Ok((_, Err(e))) => {
            r.failed += 1;
            if r.violations.len() < 5 {
                r.violations.push(format!("connect failed: {e:#}"));
            }
        }
        Err(e) => {
            r.failed += 1;
            if r.violations.len() < 5 {
                r.violations.push(format!("connect task: {e}"));
            }
        }
    };
    for i in mine {
        let tok = token(secret, &user(spec, i), "d")?;
        let (src, d) = (source(spec, i), Arc::clone(d));
        let entry = f.nodes[i % f.nodes.len()];
        tasks.spawn(async move {
            let res = tokio::time::timeout(ATTEMPT_LIMIT, login_at(&d, src, entry, &tok, "d", 0))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no WELCOME within {ATTEMPT_LIMIT:?}")));
            (i, res)
        });
        while tasks.len() >= f.inflight.max(1) {
            if let Some(res) = tasks.join_next().await {
                joined(&mut r, res);
            }
        }
    }
    while let Some(res) = tasks.join_next().await {
        joined(&mut r, res);
    }
    r.connect_secs = t0.elapsed().as_secs_f64();
    r.per_node = per_node;
    r.affected = on_victim.len() as u64;
    say(&format!("progress {}", r.connected));

    // The kill's time, in this process's clock, once the parent says it happened: it bounds
    // how long a client waits for its connection to close.
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(None::<Instant>);
    let unaffected_closed = Arc::new(AtomicU64::new(0));
    let first_close = Arc::new(std::sync::Mutex::new(None::<(Instant, String)>));
    let mut watchers = tokio::task::JoinSet::new();
    for c in others {
        let closed = Arc::clone(&unaffected_closed);
        let first = Arc::clone(&first_close);
        // Both halves move into the task: a dropped write half would close the connection.
        let Conn { mut reader, writer } = c;
        watchers.spawn(async move {
            let _writer = writer;
            // Held and read until the run ends; a close here is a client the kill should not
            // have touched.
            let mut last = None;
            let why = loop {
                match reader.next().await {
                    Ok(Some(f)) => last = Some(f.frame_type()),
                    Ok(None) => break format!("closed by the node (last frame: {last:?})"),
                    Err(e) => break format!("{e:#}"),
                }
            };
            closed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = first.lock() {
                f.get_or_insert((Instant::now(), why));
            }
        });
    }
    let mut clients = tokio::task::JoinSet::new();
    for (i, c) in on_victim {
        let tok = token(secret, &user(spec, i), "d")?;
        let (src, d, f) = (source(spec, i), Arc::clone(d), f.clone());
        let kill_rx = kill_rx.clone();
        clients.spawn(async move { affected(c, i, &tok, src, &d, &f, kill_rx).await });
    }

    let line = crate::worker::barrier_line("ready").await?;
    let killed = Instant::now();
    let _ = kill_tx.send(Some(killed));
    let kill_ns: u64 = line
        .trim()
        .strip_prefix("go ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(crate::worker::wall_ns);

    let mut h = hist();
    let mut moved_to: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_ns = 0u64;
    let mut held = Vec::new();
    while let Some(res) = clients.join_next().await {
        match res {
            Ok(Outcome::Back(at_ns, node, attempts, c)) => {
                let us = at_ns.saturating_sub(kill_ns) / 1000;
                h.saturating_record(us.max(1));
                last_ns = last_ns.max(at_ns.saturating_sub(kill_ns));
                r.back += 1;
                r.reconnect_attempts += attempts;
                *moved_to.entry(node.to_string()).or_default() += 1;
                say("progress 1");
                held.push(c);
            }
            Ok(Outcome::Failed(e, attempts)) => {
                r.reconnect_attempts += attempts;
                if r.violations.len() < 5 {
                    r.violations.push(format!("client not back: {e}"));
                }
            }
            Err(e) => {
                if r.violations.len() < 5 {
                    r.violations.push(format!("client task: {e}"));
                }
            }
        }
    }
    watchers.abort_all();
    r.unaffected_closed = unaffected_closed.load(Ordering::Relaxed);
    if let Some((at, why)) = first_close.lock().ok().and_then(|mut f| f.take()) {
        let when = match at.checked_duration_since(killed) {
            Some(d) => format!("{:.3} s after the kill", d.as_secs_f64()),
            None => format!(
                "{:.3} s before the kill",
                killed.duration_since(at).as_secs_f64()
            ),
        };
        r.violations.push(format!(
            "{} clients of the other nodes lost their connection, the first {when}: {why}",
            r.unaffected_closed
        ));
    }
    r.moved_to = moved_to;
    r.elapsed_secs = last_ns as f64 / 1e9;
    r.sync_us = encode_hist(&h);
    Ok(r)
}

fn user(spec: &Spec, i: usize) -> String {
    format!("{}-f{i}", spec.run_id)
}

/// An affected client: waits for its connection to close (at most `wait` after the kill), then
/// reconnects with the SDK's backoff until a node takes its HELLO and answers a SYNC (at most
/// `wait` after the close).
async fn affected(
    mut c: Conn,
    i: usize,
    tok: &str,
    src: std::net::IpAddr,
    d: &Arc<Dialer>,
    f: &Failover,
    mut kill: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Outcome {
    let wait = Duration::from_secs(f.wait_secs);
    let closed = async { while let Ok(Some(_)) = c.reader.next().await {} };
    let limit = async {
        let at = kill.wait_for(Option::is_some).await.ok().and_then(|k| *k);
        match at {
            Some(k) => tokio::time::sleep_until((k + wait).into()).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = closed => {}
        _ = limit => return Outcome::Failed(format!("its connection was still open {wait:?} after the kill"), 0),
    }
    drop(c);
    let deadline = Instant::now() + wait;
    let mut last_err = String::from("no attempt");
    let mut attempt: u32 = 0;
    loop {
        // The SDK waits before every reconnection, the first one included.
        let exp = Duration::from_millis(f.backoff_min_ms).saturating_mul(1u32 << attempt.min(16));
        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
        let pause = exp.min(Duration::from_millis(f.backoff_max_ms)) + jitter;
        if Instant::now() + pause > deadline {
            return Outcome::Failed(
                format!("{attempt} attempts in {wait:?}, last: {last_err}"),
                u64::from(attempt),
            );
        }
        tokio::time::sleep(pause).await;
        // The client tries the nodes in turn, starting with the one it entered by.
        let entry = f.nodes[(i + attempt as usize) % f.nodes.len()];
        attempt += 1;
        match tokio::time::timeout(ATTEMPT_LIMIT, resync(d, src, entry, tok)).await {
            Ok(Ok((c, node))) => {
                return Outcome::Back(crate::worker::wall_ns(), node, u64::from(attempt), c)
            }
            Ok(Err(e)) => last_err = format!("{e:#}"),
            Err(_) => last_err = format!("no answer within {ATTEMPT_LIMIT:?}"),
        }
    }
}

/// HELLO (following REDIRECT) and one SYNC from the start of the inbox: the client is back
/// once that SYNC is answered.
async fn resync(
    d: &Arc<Dialer>,
    src: std::net::IpAddr,
    entry: SocketAddr,
    tok: &str,
) -> Result<(Conn, SocketAddr)> {
    let (mut c, node) = login_at(d, src, entry, tok, "d", 0).await?;
    const RID: u32 = 9;
    c.writer
        .send(&Frame::new(
            RID,
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 0,
            }),
        ))
        .await?;
    loop {
        match c.reader.next().await? {
            Some(Frame {
                body: Body::SyncPage(_),
                request_id: RID,
                ..
            }) => return Ok((c, node)),
            Some(Frame {
                body: Body::Error(e),
                ..
            }) => bail!("SYNC at {node}: ERROR {} {}", e.code, e.message),
            Some(_) => {}
            None => bail!("{node} closed the connection before answering SYNC"),
        }
    }
}
