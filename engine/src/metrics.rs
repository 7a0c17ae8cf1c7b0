//! Process-wide counters, rendered in the Prometheus text format by the admin endpoint. Plain
//! relaxed atomics: each is written from many cores and only read by the scraper.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident : $kind:literal ),* $(,)?) => {
        /// The node's counters and gauges.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        impl Metrics {
            /// Prometheus text exposition format, version 0.0.4.
            pub fn render(&self) -> String {
                let mut s = String::new();
                $(
                    let _ = writeln!(s, "# TYPE tern_{} {}", stringify!($name), $kind);
                    let _ = writeln!(s, "tern_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                s
            }
        }
    };
}

counters! {
    /// Connections currently open.
    connections_open: "gauge",
    /// Idle connections parked without a task (part of `connections_open`).
    connections_parked: "gauge",
    /// Connections accepted since start.
    connections_accepted_total: "counter",
    /// Sessions authenticated since start.
    sessions_authenticated_total: "counter",
    /// HELLOs refused for a bad or expired token.
    auth_failures_total: "counter",
    /// Frames received.
    frames_in_total: "counter",
    /// Frames sent.
    frames_out_total: "counter",
    /// Connections closed because a frame could not be decoded.
    decode_errors_total: "counter",
    /// Messages stored (new, not retransmissions).
    messages_stored_total: "counter",
    /// Retransmitted SENDs answered from the dedup record.
    messages_duplicate_total: "counter",
    /// PUSH frames queued to connections.
    pushes_total: "counter",
    /// Room messages queued to member connections.
    room_deliveries_total: "counter",
    /// Requests refused with OVERLOADED because a storage queue was full.
    storage_busy_total: "counter",
    /// Connections closed as slow consumers.
    slow_consumers_total: "counter",
    /// Cross-core messages dropped because the target core's queue was full.
    core_queue_full_total: "counter",
    /// Connections carrying native frames on a plain listener.
    transport_native_total: "counter",
    /// Connections that completed a TLS handshake.
    transport_tls_total: "counter",
    /// WebSocket upgrades accepted.
    transport_ws_total: "counter",
    /// HTTP tunnel sessions opened.
    tunnel_sessions_total: "counter",
    /// PROXY protocol headers accepted from trusted sources.
    proxy_headers_total: "counter",
    /// Connections refused at the front door (wrong transport for the port, untrusted PROXY
    /// header, failed TLS handshake).
    refused_total: "counter",
    /// Live cluster members in this node's view, itself included (1 without a cluster).
    cluster_members_alive: "gauge",
    /// Session slots this node owns (all 16,384 without a cluster).
    cluster_slots_owned: "gauge",
    /// The owner table's epoch: a fingerprint of the membership view, compared for equality
    /// only; its low 53 bits, so that the value survives Prometheus' float64 exactly.
    cluster_epoch: "gauge",
    /// 1 while this cluster node takes writes: it sees a majority of the configured cluster
    /// size live and heard from it within the quorum lease; 0 while it refuses them
    /// (NO_QUORUM). 1 without a cluster.
    cluster_quorum: "gauge",
    /// Gossip datagrams dropped for a missing or wrong authentication tag (sent without the
    /// cluster secret).
    cluster_gossip_unauthenticated_total: "counter",
    /// Node-to-node links currently up (dialed by this node).
    cluster_links_connected: "gauge",
    /// Items waiting in this node's link writers, over all peers (per peer:
    /// `tern_cluster_link_queue_depth{peer}`).
    cluster_link_queue_depth: "gauge",
    /// Outbox entries not yet acknowledged by the node they are for (durable here until then).
    cluster_outbox_entries: "gauge",
    /// Node-to-node connections this node established.
    cluster_link_connects_total: "counter",
    /// Node-to-node connections refused at the handshake (no cluster secret, bad frames).
    cluster_link_refused_total: "counter",
    /// SENDs forwarded to the node that serves their conversation.
    cluster_forwarded_total: "counter",
    /// Outbox entries of other nodes applied here (new, not repeats).
    cluster_outbox_applied_total: "counter",
    /// Session slots this node holds (writes to): its ring's slots once their data is here.
    cluster_slots_held: "gauge",
    /// Slots this node is handing to another node now (rows being sent).
    cluster_handoffs_in_progress: "gauge",
    /// Slots this node handed to other nodes (confirmed by the new holder).
    cluster_handoff_slots_total: "counter",
    /// TYPING frames dropped by the per-connection rate limit.
    typing_dropped_total: "counter",
    /// Changes of a user's aggregated presence.
    presence_changes_total: "counter",
    /// PRESENCE frames sent to watchers, friends and followers.
    presence_notices_total: "counter",
    /// Offline notifications handed to the push hook.
    push_queued_total: "counter",
    /// Offline notifications dropped because the push hook's queue was full.
    push_dropped_total: "counter",
    /// Offline notifications skipped: the conversation is muted or the user has no push token.
    push_skipped_total: "counter",
    /// Notifications the webhook accepted (2xx).
    push_delivered_total: "counter",
    /// Webhook POSTs that failed (connection error, timeout or non-2xx) and were retried.
    push_retries_total: "counter",
    /// Notifications given up after the last retry.
    push_failed_total: "counter",
    /// Messages refused by the content filter.
    filter_rejected_total: "counter",
    /// Messages stored with words masked by the content filter.
    filter_masked_total: "counter",
}

/// The process's counters.
pub static METRICS: Metrics = Metrics {
    connections_open: AtomicU64::new(0),
    connections_parked: AtomicU64::new(0),
    connections_accepted_total: AtomicU64::new(0),
    sessions_authenticated_total: AtomicU64::new(0),
    auth_failures_total: AtomicU64::new(0),
    frames_in_total: AtomicU64::new(0),
    frames_out_total: AtomicU64::new(0),
    decode_errors_total: AtomicU64::new(0),
    messages_stored_total: AtomicU64::new(0),
    messages_duplicate_total: AtomicU64::new(0),
    pushes_total: AtomicU64::new(0),
    room_deliveries_total: AtomicU64::new(0),
    storage_busy_total: AtomicU64::new(0),
    slow_consumers_total: AtomicU64::new(0),
    core_queue_full_total: AtomicU64::new(0),
    transport_native_total: AtomicU64::new(0),
    transport_tls_total: AtomicU64::new(0),
    transport_ws_total: AtomicU64::new(0),
    tunnel_sessions_total: AtomicU64::new(0),
    proxy_headers_total: AtomicU64::new(0),
    refused_total: AtomicU64::new(0),
    cluster_members_alive: AtomicU64::new(0),
    cluster_slots_owned: AtomicU64::new(0),
    cluster_epoch: AtomicU64::new(0),
    cluster_quorum: AtomicU64::new(1),
    cluster_gossip_unauthenticated_total: AtomicU64::new(0),
    cluster_links_connected: AtomicU64::new(0),
    cluster_link_queue_depth: AtomicU64::new(0),
    cluster_outbox_entries: AtomicU64::new(0),
    cluster_link_connects_total: AtomicU64::new(0),
    cluster_link_refused_total: AtomicU64::new(0),
    cluster_forwarded_total: AtomicU64::new(0),
    cluster_outbox_applied_total: AtomicU64::new(0),
    cluster_slots_held: AtomicU64::new(0),
    cluster_handoffs_in_progress: AtomicU64::new(0),
    cluster_handoff_slots_total: AtomicU64::new(0),
    typing_dropped_total: AtomicU64::new(0),
    presence_changes_total: AtomicU64::new(0),
    presence_notices_total: AtomicU64::new(0),
    push_queued_total: AtomicU64::new(0),
    push_dropped_total: AtomicU64::new(0),
    push_skipped_total: AtomicU64::new(0),
    push_delivered_total: AtomicU64::new(0),
    push_retries_total: AtomicU64::new(0),
    push_failed_total: AtomicU64::new(0),
    filter_rejected_total: AtomicU64::new(0),
    filter_masked_total: AtomicU64::new(0),
};

/// Adds one to a counter.
#[inline]
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Sets a gauge.
#[inline]
pub fn set(g: &AtomicU64, value: u64) {
    g.store(value, Ordering::Relaxed);
}

/// Subtracts one from a gauge.
#[inline]
pub fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        inc(&m.pushes_total);
        let s = m.render();
        assert!(s.contains("# TYPE tern_pushes_total counter\ntern_pushes_total 1\n"));
        assert!(s.contains("# TYPE tern_connections_open gauge\n"));
    }
}
