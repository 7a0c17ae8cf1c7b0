//! tern's client SDK, for ordinary blocking code (std::net, threads; no async runtime needed).
//!
//! Two layers over the transports of SPEC §12 ([`endpoint`]: rung URLs and the ladder;
//! [`transport`], [`tls`], [`tunnel`]):
//! - [`Connection`]: one connection speaking the wire protocol — HELLO/WELCOME, framed
//!   requests matched by request id, server-initiated frames kept in arrival order. What tests
//!   and one-shot commands use.
//! - [`Client`]: the reliable client of the six-packet model on a worker thread — a send queue
//!   with a local increasing sequence and retransmission timers (same message id, RETRANSMIT
//!   flag) until SEND_ACK, de-duplication of received messages by conversation sequence, the
//!   device's inbox position persisted in a local file and acknowledged in batches, reconnect
//!   with exponential backoff and a resync (SYNC from the persisted position) after every
//!   connect.
//!
//! Groups ([`group`]): the client's calls for every group operation of SPEC.md §7 (create,
//! update, members, leave, transfer, disband, list, get), sending to a group through the same
//! send queue, group history, and GROUP_EVENT messages decoded into [`GroupEvent`]s.
//! Read positions and group receipts ([`receipts`]): READ, and "read by k of n" of group
//! messages.
//! Topics ([`topic`]): subscribe, unsubscribe, list subscriptions, publish through the send
//! queue and page a topic's history.

pub mod client;
pub mod connection;
pub mod endpoint;
pub mod group;
pub mod receipts;
pub mod state;
pub mod tls;
pub mod topic;
pub mod transport;
pub mod tunnel;

pub use client::{Client, ClientConfig, Event, PendingSend, SendError};
pub use connection::{token_device, Connection, ConnectionError, HelloParams};
pub use endpoint::{Endpoints, Rung, RungFailure, TransportKind, TunnelMode};
pub use group::{GroupEvent, GroupEventKind};
pub use state::DeviceState;
pub use tls::{Fingerprint, TlsError, Trust};
pub use transport::TransportOptions;
