//! Transports around the frame stream (SPEC §12): how the first bytes of a connection pick a
//! transport, and the sans-io pieces the server drives over its sockets — PROXY protocol headers,
//! TLS sessions, WebSocket framing and the HTTP/1.1 heads of the tunnel. Nothing here touches a
//! socket or a clock.

pub mod detect;
pub mod http;
pub mod proxy;
pub mod tls;
pub mod ws;
