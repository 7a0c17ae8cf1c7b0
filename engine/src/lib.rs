//! tern's node engine. The pure core — the connection state machine, and later the session and
//! timeline logic — takes inputs and `now` and returns outputs; the monoio runtime, sockets and
//! storage threads are thin adapters around it, so the core runs deterministically in tests.

pub mod conn;
