//! The push hook's thread: takes [`PushNote`]s from a bounded channel (cores never wait on it:
//! a full channel drops the note and counts it), gathers them into batches, looks up each
//! user's tokens and mutes on the store's reader pool, and POSTs the batch to the webhook,
//! retrying with exponential backoff.
//!
//! The HTTP client is a minimal HTTP/1.1 exchange over std's blocking `TcpStream`, with
//! `httparse` for the status line. The hook makes a few small POSTs per second at most, from
//! its own thread, to one operator-chosen endpoint (typically a gateway next to the node that
//! talks to APNs/FCM); that needs neither connection pooling nor an async stack, and a full
//! HTTP client crate would bring a second TLS stack and more build dependencies into the node.
//! Plain `http://` only: a webhook across a network goes through a TLS-terminating proxy.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_storage::PushToken;
use tracing::{debug, info, warn};

use crate::metrics::{inc, METRICS};
use crate::push::{backoff, payload, signature, PushNote};
use crate::server::{now_ms, NodeStore};

/// Where the webhook is: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// A webhook URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the push webhook must be an http:// URL (put a TLS-terminating proxy in front of an https endpoint): {0}")]
    Scheme(String),
    #[error("invalid push webhook URL {0}")]
    Invalid(String),
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, UrlError> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let invalid = || UrlError::Invalid(url.to_owned());
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| invalid())?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        Ok(WebhookUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// The hook's settings.
#[derive(Debug, Clone)]
pub struct HookConfig {
    pub url: WebhookUrl,
    /// HMAC-SHA256 key of the signature header.
    pub secret: Vec<u8>,
    pub node_id: String,
    /// Notes the channel holds before cores drop new ones.
    pub queue: usize,
    /// Most notifications per POST.
    pub batch_max: usize,
    /// How long the first note of a batch waits for others.
    pub batch_wait: Duration,
    /// Retries after a failed POST, and the backoff between them.
    pub retries: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Connect, write and read timeout of one POST.
    pub timeout: Duration,
}

impl HookConfig {
    pub fn new(url: WebhookUrl, secret: Vec<u8>, node_id: String) -> HookConfig {
        HookConfig {
            url,
            secret,
            node_id,
            queue: 10_000,
            batch_max: 100,
            batch_wait: Duration::from_millis(100),
            retries: 6,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("webhook unreachable: {0}")]
    Io(#[from] std::io::Error),
    #[error("webhook answered {0}")]
    Status(u16),
    #[error("webhook sent a malformed response")]
    BadResponse,
}

/// Starts the hook's thread; the returned sender is what cores queue notes on. The thread ends
/// when every sender is dropped.
pub fn spawn(cfg: HookConfig, store: Arc<NodeStore>) -> anyhow::Result<flume::Sender<PushNote>> {
    let (tx, rx) = flume::bounded(cfg.queue.max(1));
    std::thread::Builder::new()
        .name("tern-push".into())
        .spawn(move || run(&cfg, &store, &rx))?;
    Ok(tx)
}

fn run(cfg: &HookConfig, store: &NodeStore, rx: &flume::Receiver<PushNote>) {
    info!(
        "push hook: POSTing offline notifications to http://{}:{}{}",
        cfg.url.host, cfg.url.port, cfg.url.path
    );
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + cfg.batch_wait;
        while batch.len() < cfg.batch_max {
            match rx.recv_deadline(deadline) {
                Ok(n) => batch.push(n),
                Err(_) => break,
            }
        }
        let items = resolve(store, batch, cfg.timeout);
        if items.is_empty() {
            continue;
        }
        let body = payload(&cfg.node_id, now_ms(), &items);
        let sig = signature(&cfg.secret, &body);
        deliver(cfg, &body, &sig, items.len() as u64);
    }
}

/// The notes to send with their users' tokens: muted conversations and users without a token
/// are left out.
fn resolve(
    store: &NodeStore,
    batch: Vec<PushNote>,
    timeout: Duration,
) -> Vec<(PushNote, Vec<PushToken>)> {
    let now = now_ms();
    let mut out = Vec::with_capacity(batch.len());
    for note in batch {
        let targets = match store.push_targets(note.user.clone(), note.conv.clone()) {
            Ok(c) => c.wait_timeout(timeout),
            Err(e) => {
                debug!("push hook: token lookup refused: {e}");
                None
            }
        };
        let targets = match targets {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                warn!("push hook: token lookup failed: {e}");
                inc(&METRICS.push_failed_total);
                continue;
            }
            None => {
                inc(&METRICS.push_failed_total);
                continue;
            }
        };
        //= SPEC.md#offline-push
        //# No notification is sent when the conversation is muted for the user, when the user
        //# has no registered token
        if targets.muted_until > now || targets.tokens.is_empty() {
            inc(&METRICS.push_skipped_total);
            continue;
        }
        out.push((note, targets.tokens));
    }
    out
}

/// POSTs one batch, retrying with backoff; counts the outcome.
fn deliver(cfg: &HookConfig, body: &[u8], sig: &str, count: u64) {
    for attempt in 0..=cfg.retries {
        match post(&cfg.url, body, sig, cfg.timeout) {
            Ok(()) => {
                METRICS
                    .push_delivered_total
                    .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Err(e) if attempt < cfg.retries => {
                let wait = backoff(attempt, cfg.backoff_min, cfg.backoff_max);
                debug!("push hook: {e}; retry {} in {wait:?}", attempt + 1);
                inc(&METRICS.push_retries_total);
                std::thread::sleep(wait);
            }
            Err(e) => {
                warn!(
                    "push hook: {e}; {count} notifications dropped after {} retries",
                    cfg.retries
                );
            }
        }
    }
    METRICS
        .push_failed_total
        .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
}

/// Largest response head read before giving up on it.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// One POST; `Ok` for a 2xx answer.
pub fn post(url: &WebhookUrl, body: &[u8], sig: &str, timeout: Duration) -> Result<(), PostError> {
    let addr = (
        url.host.trim_start_matches('[').trim_end_matches(']'),
        url.port,
    )
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the webhook host has no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let host = if url.port == 80 {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ternd/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Tern-Signature: {sig}\r\nConnection: close\r\n\r\n",
        url.path,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    // Only the status matters: read until the head parses (the body is not needed).
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(PostError::BadResponse);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let code = resp.code.ok_or(PostError::BadResponse)?;
                return if (200..300).contains(&code) {
                    Ok(())
                } else {
                    Err(PostError::Status(code))
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
            _ => return Err(PostError::BadResponse),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_http_with_host_port_and_path() {
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:8099/hook").unwrap(),
            WebhookUrl {
                host: "127.0.0.1".into(),
                port: 8099,
                path: "/hook".into()
            }
        );
        let u = WebhookUrl::parse("http://gw.internal").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert!(matches!(
            WebhookUrl::parse("https://x/hook"),
            Err(UrlError::Scheme(_))
        ));
        assert!(WebhookUrl::parse("http://:80/").is_err());
        assert!(WebhookUrl::parse("http://h:99999/").is_err());
    }

    #[test]
    fn post_reads_the_status_of_a_real_server() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut codes = Vec::new();
            for answer in ["500 Internal Server Error", "204 No Content"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                // Head and the 2-byte body.
                while !got.ends_with(b"{}") {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8(got).unwrap();
                codes.push(text.contains("X-Tern-Signature: sha256=ab"));
                s.write_all(format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .unwrap();
            }
            codes
        });
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/h")).unwrap();
        let t = Duration::from_secs(5);
        assert!(matches!(
            post(&url, b"{}", "sha256=ab", t),
            Err(PostError::Status(500))
        ));
        post(&url, b"{}", "sha256=ab", t).unwrap();
        assert_eq!(server.join().unwrap(), vec![true, true]);
    }
}
