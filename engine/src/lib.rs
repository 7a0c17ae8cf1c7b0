//! tern's node engine. The pure core — the connection state machine ([`conn`]), the per-request
//! session rules ([`session`]), slot ownership ([`slots`]) and token checks ([`auth`]) — takes
//! inputs and `now` and returns outputs; the monoio runtime ([`server`]), the admin HTTP endpoint
//! ([`admin`]) and the storage threads are thin adapters around it, so the core runs
//! deterministically in tests.

pub mod admin;
pub mod alloc;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod conns;
pub mod filter;
pub mod front;
pub mod groups;
pub mod link;
pub mod metrics;
pub mod park;
pub mod pool;
pub mod presence;
pub mod push;
pub mod rooms;
pub mod server;
pub mod session;
pub mod slots;
pub mod tenant;
pub mod topics;
pub mod transport;
pub mod tunnel;
pub mod webhook;
