//! Where a cluster puts ternbench's users: asks a node's admin API which node owns a user
//! (`GET /cluster/owner?user=U`, the ring every node computes) so that `p2p --cross-node` can
//! name each pair's two users so that they sit on different nodes, and so that a run can say how
//! many of its pairs crossed nodes. Runs in the parent before the workers start; every request
//! is bounded in time and the search for a name in count.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Names tried for a pair's second user before giving up (with N nodes, a candidate lands on
/// the first user's node with probability about 1/N).
const CANDIDATES: u16 = 64;
/// One admin request's connect, write and read limit.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The two users of pair `i`, sender first. `pick: None` gives the plain names of a one-node
/// run; `Some(k)` the cross-node names: `{run}-p{i}a` and `{run}-p{i}b{k}`, the sender being the
/// first on even pairs and the second on odd ones. A one-to-one conversation is sequenced by the
/// node of its smaller user id (CLUSTER.md), so half the pairs exercise the path where the
/// sender's node stores the message and the receiver's half goes through the outbox, and half
/// the path where the SEND is forwarded to the receiver's node.
pub fn pair_users(run_id: &str, i: usize, pick: Option<u16>) -> (String, String) {
    match pick {
        None => (format!("{run_id}-s{i}"), format!("{run_id}-r{i}")),
        Some(k) => {
            let a = format!("{run_id}-p{i}a");
            let b = format!("{run_id}-p{i}b{k}");
            if i.is_multiple_of(2) {
                (a, b)
            } else {
                (b, a)
            }
        }
    }
}

/// How the pairs of a run sit on the cluster.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PairPlacement {
    /// Pairs whose two users are owned by different nodes.
    pub cross_node: usize,
    pub same_node: usize,
    /// Of the cross-node pairs: the conversation is sequenced by the sender's node (the
    /// receiver's half goes through the outbox) or by the receiver's (the SEND is forwarded).
    pub conv_on_sender_node: usize,
    pub conv_on_receiver_node: usize,
    /// Users per owning node (senders and receivers).
    pub users_per_node: BTreeMap<String, usize>,
}

/// The node id that owns `user`, asked of the admin API at `admin`.
pub fn owner(admin: SocketAddr, user: &str) -> Result<String> {
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        bail!("user {user:?} would need URL encoding");
    }
    let mut s = TcpStream::connect_timeout(&admin, ADMIN_TIMEOUT)
        .with_context(|| format!("connecting to the admin API at {admin}"))?;
    s.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        s,
        "GET /cluster/owner?user={user} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.take(64 * 1024).read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("admin API: no end of the HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "admin API at {admin}: {} {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        );
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).context("admin API: JSON")?;
    v["node"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("admin API at {admin}: no owner for {user} ({body})"))
}

/// For each pair, the smallest `k` whose cross-node names (`pair_users(.., Some(k))`) put the
/// two users on different nodes, and how the pairs sit.
pub fn choose_cross_pairs(
    admin: SocketAddr,
    run_id: &str,
    pairs: usize,
) -> Result<(Vec<u16>, PairPlacement)> {
    let mut picks = Vec::with_capacity(pairs);
    let mut placed = PairPlacement::default();
    for i in 0..pairs {
        let a = format!("{run_id}-p{i}a");
        let a_node = owner(admin, &a)?;
        let mut found = None;
        for k in 0..CANDIDATES {
            let (s, r) = pair_users(run_id, i, Some(k));
            let b = if s == a { r } else { s };
            let b_node = owner(admin, &b)?;
            if b_node != a_node {
                found = Some((k, b_node));
                break;
            }
        }
        let Some((k, b_node)) = found else {
            bail!(
                "{CANDIDATES} candidates for pair {i} all belong to {a_node}, the node of its \
                 other user: is the cluster formed (GET /cluster/members on {admin})?"
            );
        };
        picks.push(k);
        // `a` is the smaller id: its node sequences the conversation; it sends on even pairs.
        if i.is_multiple_of(2) {
            placed.conv_on_sender_node += 1;
        } else {
            placed.conv_on_receiver_node += 1;
        }
        placed.cross_node += 1;
        *placed.users_per_node.entry(a_node).or_default() += 1;
        *placed.users_per_node.entry(b_node).or_default() += 1;
    }
    Ok((picks, placed))
}

/// How the plain names of a run (`pair_users(.., None)`) sit on the cluster.
pub fn count_pairs(admin: SocketAddr, run_id: &str, pairs: usize) -> Result<PairPlacement> {
    let mut placed = PairPlacement::default();
    for i in 0..pairs {
        let (s, r) = pair_users(run_id, i, None);
        let (s_node, r_node) = (owner(admin, &s)?, owner(admin, &r)?);
        if s_node == r_node {
            placed.same_node += 1;
        } else {
            placed.cross_node += 1;
            // The smaller id's node sequences the conversation.
            if s < r {
                placed.conv_on_sender_node += 1;
            } else {
                placed.conv_on_receiver_node += 1;
            }
        }
        *placed.users_per_node.entry(s_node).or_default() += 1;
        *placed.users_per_node.entry(r_node).or_default() += 1;
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_names_alternate_the_sender_and_keep_a_below_b() {
        let (s0, r0) = pair_users("b1", 0, Some(3));
        assert_eq!((s0.as_str(), r0.as_str()), ("b1-p0a", "b1-p0b3"));
        assert!(s0 < r0, "even pairs: the sender has the smaller id");
        let (s1, r1) = pair_users("b1", 1, Some(0));
        assert_eq!((s1.as_str(), r1.as_str()), ("b1-p1b0", "b1-p1a"));
        assert!(r1 < s1, "odd pairs: the receiver has the smaller id");
        assert_eq!(pair_users("b1", 7, None), ("b1-s7".into(), "b1-r7".into()));
    }
}
