//! The connection state machine of SPEC.md §6 (server view), declared as a transition table.
//!
//! The table is data: the node drives it, a test renders it as the mermaid diagram committed at
//! `protocol-spec/diagrams/connection.mmd`, so the spec's picture and the code cannot drift.
//! [`Conn`] adds the timers (handshake, idle, token expiry) with time passed in, never read.

use tern_protocol::{CloseReason, ErrorCode, FrameType};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Accepted; the first frame must be HELLO.
    AwaitingHello,
    /// Authenticated; requests flow.
    Open,
    /// Finished; the socket is closed once the last frame is flushed.
    Closed,
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    HelloAccepted,
    HelloBadToken,
    HelloExpiredToken,
    HelloOtherNode,
    /// The token's tenant has its configured connections on this node already.
    HelloTenantFull,
    /// HELLO asks for a protocol revision this node does not speak.
    HelloUnsupportedProtocol,
    UnexpectedFrame,
    HandshakeTimeout,
    Request,
    IdleTimeout,
    TokenExpired,
    OutboundFull,
    Drain,
    Replaced,
    /// The user's slot was handed to another node (cluster handoff).
    SlotMoved,
    DecodeError,
    PeerClose,
    /// The node is stopping (storage closed, process shutting down).
    ShuttingDown,
}

/// What the node sends as it takes a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing is sent.
    Nothing,
    /// WELCOME answering the HELLO.
    Welcome,
    /// The response of the request (SEND_ACK, OK, a page, ERROR that keeps the connection…).
    Respond,
    /// ERROR with this code, then close.
    Error(ErrorCode),
    /// ERROR with the code of the decode failure, then close.
    DecodeErrorCode,
    /// REDIRECT to the owner node, then CLOSE with reason REDIRECT.
    Redirect,
    /// CLOSE with this reason.
    Close(CloseReason),
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub trigger: Trigger,
    pub to: State,
    pub effect: Effect,
}

const fn t(from: State, trigger: Trigger, to: State, effect: Effect) -> Transition {
    Transition {
        from,
        trigger,
        to,
        effect,
    }
}

use Effect as E;
use State::*;
use Trigger as T;

//= SPEC.md#connection-state-machine
//# Every transition of a server-side connection; anything not listed cannot happen.
pub const TRANSITIONS: &[Transition] = &[
    t(AwaitingHello, T::HelloAccepted, Open, E::Welcome),
    t(
        AwaitingHello,
        T::HelloBadToken,
        Closed,
        E::Error(ErrorCode::AUTH_INVALID),
    ),
    t(
        AwaitingHello,
        T::HelloExpiredToken,
        Closed,
        E::Error(ErrorCode::AUTH_EXPIRED),
    ),
    t(AwaitingHello, T::HelloOtherNode, Closed, E::Redirect),
    t(
        AwaitingHello,
        T::HelloTenantFull,
        Closed,
        E::Error(ErrorCode::LIMIT_EXCEEDED),
    ),
    t(
        AwaitingHello,
        T::HelloUnsupportedProtocol,
        Closed,
        E::Error(ErrorCode::UNSUPPORTED_VERSION),
    ),
    t(
        AwaitingHello,
        T::UnexpectedFrame,
        Closed,
        E::Error(ErrorCode::UNEXPECTED_FRAME),
    ),
    t(
        AwaitingHello,
        T::HandshakeTimeout,
        Closed,
        E::Error(ErrorCode::HANDSHAKE_TIMEOUT),
    ),
    t(AwaitingHello, T::DecodeError, Closed, E::DecodeErrorCode),
    t(
        AwaitingHello,
        T::Drain,
        Closed,
        E::Close(CloseReason::DRAIN),
    ),
    t(AwaitingHello, T::PeerClose, Closed, E::Nothing),
    t(
        AwaitingHello,
        T::ShuttingDown,
        Closed,
        E::Error(ErrorCode::SHUTTING_DOWN),
    ),
    t(Open, T::Request, Open, E::Respond),
    t(
        Open,
        T::UnexpectedFrame,
        Closed,
        E::Error(ErrorCode::UNEXPECTED_FRAME),
    ),
    t(
        Open,
        T::IdleTimeout,
        Closed,
        E::Close(CloseReason::IDLE_TIMEOUT),
    ),
    t(
        Open,
        T::TokenExpired,
        Closed,
        E::Close(CloseReason::AUTH_EXPIRED),
    ),
    t(
        Open,
        T::OutboundFull,
        Closed,
        E::Close(CloseReason::SLOW_CONSUMER),
    ),
    t(Open, T::Drain, Closed, E::Close(CloseReason::DRAIN)),
    t(Open, T::Replaced, Closed, E::Close(CloseReason::REPLACED)),
    t(Open, T::SlotMoved, Closed, E::Close(CloseReason::REDIRECT)),
    t(Open, T::DecodeError, Closed, E::DecodeErrorCode),
    t(Open, T::PeerClose, Closed, E::Nothing),
    t(
        Open,
        T::ShuttingDown,
        Closed,
        E::Error(ErrorCode::SHUTTING_DOWN),
    ),
];

/// The row for `trigger` in `from`, if the table has one.
pub fn transition(from: State, trigger: Trigger) -> Option<Transition> {
    TRANSITIONS
        .iter()
        .copied()
        .find(|r| r.from == from && r.trigger == trigger)
}

/// Renders the table as a mermaid state diagram (the file committed next to the spec).
pub fn mermaid() -> String {
    let mut s = String::from("stateDiagram-v2\n    [*] --> AwaitingHello: accept\n");
    for r in TRANSITIONS {
        let effect = match r.effect {
            E::Nothing => String::new(),
            E::Welcome => " / WELCOME".into(),
            E::Respond => " / response".into(),
            E::Error(c) => format!(" / ERROR {c}"),
            E::DecodeErrorCode => " / ERROR (decode code)".into(),
            E::Redirect => " / REDIRECT + CLOSE REDIRECT".into(),
            E::Close(c) => format!(" / CLOSE {c}"),
        };
        s.push_str(&format!(
            "    {:?} --> {:?}: {:?}{}\n",
            r.from, r.to, r.trigger, effect
        ));
    }
    s.push_str("    Closed --> [*]\n");
    s
}

/// Which trigger a decoded frame is in a state: HELLO only first, never again.
pub fn classify(state: State, frame: FrameType) -> Trigger {
    match (state, frame) {
        (AwaitingHello, FrameType::HELLO) => T::HelloAccepted,
        (_, FrameType::CLOSE) => T::PeerClose,
        (Open, FrameType::HELLO) | (AwaitingHello, _) => T::UnexpectedFrame,
        (Open, _) => T::Request,
        (Closed, _) => T::UnexpectedFrame,
    }
}

/// Timer settings (SPEC.md §6.3), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub handshake_ms: u64,
    pub heartbeat_ms: u64,
    pub idle_ms: u64,
    /// Traffic-free time after which a native connection parks without a task
    /// ([`crate::park`]); 0 never parks.
    pub park_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            handshake_ms: 10_000,
            heartbeat_ms: 30_000,
            idle_ms: 90_000,
            park_ms: 100,
        }
    }
}

/// One connection's state and deadlines. 32 bytes: it lives in every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    state: State,
    /// Handshake deadline while awaiting HELLO, idle deadline once open.
    deadline_ms: u64,
    /// Token expiry (ms since the epoch on the same clock as `now`), 0 for none.
    token_expiry_ms: u64,
    idle_ms: u64,
}

impl Conn {
    pub fn new(now_ms: u64, timers: &Timers) -> Self {
        Conn {
            state: AwaitingHello,
            deadline_ms: now_ms + timers.handshake_ms,
            token_expiry_ms: 0,
            idle_ms: timers.idle_ms,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Token expiry armed by [`Conn::accept`], ms since the epoch (0: none).
    pub fn token_expiry_ms(&self) -> u64 {
        self.token_expiry_ms
    }

    /// Applies a trigger; returns the transition taken, or `None` if the table has no row (the
    /// trigger is ignored, e.g. a timer firing after close).
    pub fn apply(&mut self, trigger: Trigger) -> Option<Transition> {
        let row = transition(self.state, trigger)?;
        self.state = row.to;
        Some(row)
    }

    /// Records an authenticated HELLO: the idle clock starts and the token's expiry is armed.
    pub fn accept(&mut self, now_ms: u64, token_expiry_ms: u64) -> Option<Transition> {
        let row = self.apply(T::HelloAccepted)?;
        self.token_expiry_ms = token_expiry_ms;
        self.deadline_ms = now_ms + self.idle_ms;
        Some(row)
    }

    //= SPEC.md#heartbeat
    //# Any inbound frame resets the idle timer.
    pub fn inbound(&mut self, now_ms: u64) {
        if self.state == Open {
            self.deadline_ms = now_ms + self.idle_ms;
        }
    }

    /// The earliest moment [`Conn::poll_timers`] can fire, for the runtime's timer.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            Closed => None,
            AwaitingHello => Some(self.deadline_ms),
            Open if self.token_expiry_ms > 0 => Some(self.deadline_ms.min(self.token_expiry_ms)),
            Open => Some(self.deadline_ms),
        }
    }

    /// Fires whichever timer is due at `now`.
    pub fn poll_timers(&mut self, now_ms: u64) -> Option<Transition> {
        let trigger = match self.state {
            AwaitingHello if now_ms >= self.deadline_ms => T::HandshakeTimeout,
            Open if self.token_expiry_ms > 0 && now_ms >= self.token_expiry_ms => T::TokenExpired,
            Open if now_ms >= self.deadline_ms => T::IdleTimeout,
            _ => return None,
        };
        self.apply(trigger)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn diagram_next_to_the_spec_is_the_table() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol-spec/diagrams/connection.mmd"
        );
        if std::env::var_os("TERN_BLESS").is_some() {
            std::fs::write(path, mermaid()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert_eq!(committed, mermaid(), "regenerate with TERN_BLESS=1");
    }

    #[test]
    fn table_is_deterministic_and_closed_is_terminal() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            assert_ne!(a.from, Closed);
            for b in &TRANSITIONS[i + 1..] {
                assert!(
                    !(a.from == b.from && a.trigger == b.trigger),
                    "two rows for {a:?}"
                );
            }
        }
    }

    #[test]
    fn handshake_timeout_fires_only_before_hello() {
        let timers = Timers::default();
        let mut c = Conn::new(1_000, &timers);
        assert_eq!(c.poll_timers(10_999), None);
        let row = c.poll_timers(11_000).unwrap();
        assert_eq!(row.effect, Effect::Error(ErrorCode::HANDSHAKE_TIMEOUT));
        assert_eq!(c.state(), Closed);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn idle_and_token_timers_once_open() {
        let timers = Timers::default();
        let mut c = Conn::new(0, &timers);
        c.accept(5_000, 200_000).unwrap();
        assert_eq!(c.next_deadline(), Some(95_000));
        c.inbound(50_000);
        assert_eq!(c.poll_timers(139_999), None);
        let row = c.poll_timers(140_000).unwrap();
        assert_eq!(row.effect, Effect::Close(CloseReason::IDLE_TIMEOUT));

        let mut c = Conn::new(0, &timers);
        c.accept(0, 60_000).unwrap();
        c.inbound(59_000);
        assert_eq!(c.next_deadline(), Some(60_000));
        let row = c.poll_timers(60_000).unwrap();
        assert_eq!(row.effect, Effect::Close(CloseReason::AUTH_EXPIRED));
    }

    #[test]
    fn frames_classify_by_state() {
        assert_eq!(classify(AwaitingHello, FrameType::HELLO), T::HelloAccepted);
        assert_eq!(classify(AwaitingHello, FrameType::SEND), T::UnexpectedFrame);
        assert_eq!(classify(Open, FrameType::HELLO), T::UnexpectedFrame);
        assert_eq!(classify(Open, FrameType::SEND), T::Request);
        assert_eq!(classify(Open, FrameType::CLOSE), T::PeerClose);
        let mut c = Conn::new(0, &Timers::default());
        let row = c.apply(classify(c.state(), FrameType::SEND)).unwrap();
        assert_eq!(row.effect, Effect::Error(ErrorCode::UNEXPECTED_FRAME));
    }

    #[test]
    fn conn_is_small() {
        assert!(std::mem::size_of::<Conn>() <= 32);
    }
}
