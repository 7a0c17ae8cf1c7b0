//! `tern`: command-line client of a tern node, built on the SDK (`tern_tools`).
//!
//! ```text
//! tern --server 127.0.0.1:14000 --token $T send --to bob "hi"
//! tern --token $T watch            # messages, receipts, typing, presence as they arrive
//! tern --token $T sync             # pull the inbox from the saved position
//! tern --token $T history --with bob
//! tern --token $T contacts
//! tern --token $T friend request bob --note "from the meetup"
//! tern --token $T relations --kind pending
//! tern --token $T block mallory
//! tern --token $T friends-only on
//! tern --token $T group create friends --member bob --member carol   # prints the group id
//! tern --token $T group send G "hi all"
//! tern --token $T group history G
//! tern --server tls://chat.example.com:443 --ca cert.pem --token $T watch
//! tern --server 10.0.0.5:14000,https://chat.example.com --proxy squid:3128 --token $T watch
//! ```
//! `--server` takes `host:port` (native), URLs (`tern://`, `tls://`, `ws://`, `wss://`, `http://`
//! and `https://` for the HTTP tunnel) or a bare host (the default ladder: native on 14000, TLS
//! on 443, the tunnel on 80 and 8080), repeated or comma-separated: the rungs are tried in order.
//! `--json` prints one JSON object per line.
//!
//! Exit status: 0 on success, 3 when the node refused the request with an ERROR (its code and
//! message are printed; with `--json` also as `{"type":"error",...}` on stdout), 1 for any other
//! failure, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::json;
use tern_protocol::{
    Body, Contacts, Conv, ConvKind, Direction, ErrorCode, History, Message, MessageKind, MsgId,
    Mute, Ping, Presence, PresenceStatus, PushAck, PushToken, Read, Recall, Relation, RelationKind,
    RelationList, RelationOp, RoomJoin, Send, Sync, Typing, TypingState,
};
use tern_tools::{
    token_device, Client, ClientConfig, Connection, ConnectionError, DeviceState, Endpoints, Event,
    Fingerprint, GroupEvent, HelloParams, SendError, TransportOptions,
};

mod group;
mod topic;

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "tern command-line client")]
struct Cli {
    /// Node addresses, tried in order: host:port (native), tern://, tls://, ws://, wss://,
    /// http:// or https:// (HTTP tunnel) URLs, or a bare host (the default ladder). Repeat the
    /// option or separate with commas.
    #[arg(
        long,
        env = "TERN_SERVER",
        default_value = "127.0.0.1:14000",
        global = true,
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// PEM file of the CA (or the server's self-signed certificate, e.g. DATA_DIR/tls/cert.pem
    /// of `ternd --dev`) that TLS trusts; default: the system's CAs.
    #[arg(long, env = "TERN_CA", global = true, conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint (hex, colons allowed).
    #[arg(long, env = "TERN_PIN", global = true)]
    pin: Option<String>,
    /// HTTP forward proxy (host:port): absolute-URI requests for http://, CONNECT otherwise.
    #[arg(long, env = "TERN_PROXY", global = true)]
    proxy: Option<String>,
    /// Seconds each rung may take to connect and handshake.
    #[arg(long, default_value_t = 5.0, global = true)]
    rung_timeout: f64,
    /// Token (JWT) identifying the user; `ternd token` mints one in dev mode.
    #[arg(long, env = "TERN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Device id; default: the token's device claim, else "cli".
    #[arg(long, env = "TERN_DEVICE", global = true)]
    device: Option<String>,
    /// File keeping this device's inbox position (for sync and watch).
    #[arg(long, env = "TERN_STATE", global = true)]
    state: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send a text message to a user (`--to`) or a group (`--group`, with optional mentions);
    /// retransmitted until the node acknowledges it.
    Send {
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Mention this group member (repeatable; `--group` only).
        #[arg(long = "mention")]
        mentions: Vec<String>,
        /// Mention everyone in the group (@all; `--group` only).
        #[arg(long)]
        mention_all: bool,
        text: String,
    },
    /// Print incoming messages, receipts, typing and presence as they arrive.
    Watch {
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Also follow the presence of these users (comma-separated); friends and followed
        /// users' changes arrive without it.
        #[arg(long, value_delimiter = ',')]
        presence: Vec<String>,
    },
    /// Set your presence (all your devices): `tern presence set busy "in a meeting"`.
    Presence {
        #[command(subcommand)]
        action: PresenceCmd,
    },
    /// Tell a user you are typing (or, with --stop, that you stopped).
    Typing {
        user: String,
        #[arg(long)]
        stop: bool,
    },
    /// Register this device's push token for offline notifications (an empty token removes it).
    PushToken {
        /// Who issued the token, e.g. apns or fcm.
        platform: String,
        /// The token (named apart from the global --token, the session's JWT).
        #[arg(value_name = "TOKEN")]
        device_token: String,
    },
    /// Mute offline notifications of the conversation with a user (until --until ms since the
    /// epoch; default: until unmuted), or unmute it with --off.
    Mute {
        user: String,
        #[arg(long)]
        until: Option<u64>,
        #[arg(long)]
        off: bool,
    },
    /// Pull the inbox from the saved position (or --after) to the end.
    Sync {
        #[arg(long)]
        after: Option<u64>,
    },
    /// Page the conversation with a user.
    History {
        #[arg(long = "with")]
        with: String,
        #[arg(long, default_value_t = 50)]
        limit: u16,
        /// Messages before this conversation sequence (default: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
    },
    /// Recent conversations with unread counts.
    Contacts {
        #[arg(long, default_value_t = 50)]
        limit: u16,
    },
    /// Join a chat room: print its recent messages, post `--say` texts, then print what the room
    /// says (for --seconds or --count; without them and with --say, exit after posting).
    Room {
        name: String,
        /// Recent messages to print on joining (0: the node's default).
        #[arg(long, default_value_t = 0)]
        recent: u16,
        /// Text to post (repeatable, posted in order).
        #[arg(long)]
        say: Vec<String>,
        #[arg(long)]
        seconds: Option<u64>,
        #[arg(long)]
        count: Option<usize>,
    },
    /// Mark the conversation with a user read up to a sequence.
    Read {
        #[arg(long = "with")]
        with: String,
        #[arg(long)]
        seq: u64,
    },
    /// Recall a message you sent to a user, or one in a group (yours, or a member's when you
    /// own or administer the group), within the node's recall window (2 minutes by default): it
    /// becomes a tombstone on every device of the conversation.
    Recall {
        /// The user the conversation is with.
        #[arg(
            long = "with",
            required_unless_present = "group",
            conflicts_with = "group"
        )]
        with: Option<String>,
        /// The group the message is in.
        #[arg(long)]
        group: Option<String>,
        /// The message's conversation sequence (see `history`).
        seq: u64,
    },
    /// Follow a user (one-way).
    Follow { user: String },
    /// Stop following a user.
    Unfollow { user: String },
    /// Friend requests and friendships (two-way).
    Friend {
        #[command(subcommand)]
        action: FriendCmd,
    },
    /// Block a user: their messages, follows and friend requests are refused.
    Block { user: String },
    /// End the block of a user.
    Unblock { user: String },
    /// List relations, every page from --cursor on (or one page with --one-page).
    Relations {
        #[arg(long, value_enum)]
        kind: ListKind,
        /// Entries per page (0: the node's default).
        #[arg(long, default_value_t = 0)]
        limit: u16,
        /// Start after this cursor (a previous page's next_cursor).
        #[arg(long, default_value = "")]
        cursor: String,
        /// Print only the first page and its next cursor.
        #[arg(long)]
        one_page: bool,
    },
    /// Accept one-to-one messages from friends only (on) or from everyone not blocked (off).
    FriendsOnly {
        #[arg(value_enum, value_name = "on|off")]
        setting: OnOff,
    },
    /// Groups: create, change, list, send, history (`tern group --help`).
    Group {
        #[command(subcommand)]
        action: group::GroupCmd,
    },
    /// Topics: sub, unsub, list, post, history (`tern topic --help`).
    Topic {
        #[command(subcommand)]
        action: topic::TopicCmd,
    },
}

#[derive(Debug, Subcommand)]
enum FriendCmd {
    /// Ask a user to be friends.
    Request {
        user: String,
        /// Shown to the user with the request.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Accept a user's friend request.
    Accept { user: String },
    /// Decline a user's friend request (or withdraw yours).
    Decline { user: String },
    /// End a friendship.
    Remove { user: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ListKind {
    Following,
    Followers,
    Friends,
    Blocked,
    /// Friend requests to you awaiting an answer.
    Pending,
    /// Your friend requests awaiting an answer.
    Requested,
}

impl ListKind {
    fn wire(self) -> RelationKind {
        match self {
            ListKind::Following => RelationKind::FOLLOWING,
            ListKind::Followers => RelationKind::FOLLOWERS,
            ListKind::Friends => RelationKind::FRIENDS,
            ListKind::Blocked => RelationKind::BLOCKED,
            ListKind::Pending => RelationKind::PENDING,
            ListKind::Requested => RelationKind::REQUESTED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ListKind::Following => "following",
            ListKind::Followers => "followers",
            ListKind::Friends => "friends",
            ListKind::Blocked => "blocked",
            ListKind::Pending => "pending",
            ListKind::Requested => "requested",
        }
    }
}

#[derive(Debug, Subcommand)]
enum PresenceCmd {
    /// Set the status (online, away, busy) and an optional status text.
    Set {
        #[arg(value_enum)]
        status: StatusArg,
        #[arg(default_value = "")]
        text: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    Online,
    Away,
    Busy,
}

impl StatusArg {
    fn wire(self) -> PresenceStatus {
        match self {
            StatusArg::Online => PresenceStatus::ONLINE,
            StatusArg::Away => PresenceStatus::AWAY,
            StatusArg::Busy => PresenceStatus::BUSY,
        }
    }
}

/// A presence status as printed: its name in lower case, or its number.
fn status_name(s: PresenceStatus) -> String {
    s.name()
        .map_or_else(|| s.0.to_string(), str::to_ascii_lowercase)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// A relation operation's wire op, name for output, user and note.
fn relation_op(cmd: &Cmd) -> Option<(RelationOp, &'static str, &str, &str)> {
    Some(match cmd {
        Cmd::Follow { user } => (RelationOp::FOLLOW, "follow", user, ""),
        Cmd::Unfollow { user } => (RelationOp::UNFOLLOW, "unfollow", user, ""),
        Cmd::Block { user } => (RelationOp::BLOCK, "block", user, ""),
        Cmd::Unblock { user } => (RelationOp::UNBLOCK, "unblock", user, ""),
        Cmd::Friend { action } => match action {
            FriendCmd::Request { user, note } => {
                (RelationOp::FRIEND_REQUEST, "friend_request", user, note)
            }
            FriendCmd::Accept { user } => (RelationOp::FRIEND_ACCEPT, "friend_accept", user, ""),
            FriendCmd::Decline { user } => (RelationOp::FRIEND_DECLINE, "friend_decline", user, ""),
            FriendCmd::Remove { user } => (RelationOp::UNFRIEND, "unfriend", user, ""),
        },
        Cmd::FriendsOnly { setting: OnOff::On } => {
            (RelationOp::SET_FRIENDS_ONLY, "friends_only_on", "", "")
        }
        Cmd::FriendsOnly {
            setting: OnOff::Off,
        } => (RelationOp::CLEAR_FRIENDS_ONLY, "friends_only_off", "", ""),
        _ => return None,
    })
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// An answer that must be OK.
fn expect_ok(
    answer: Result<tern_protocol::Frame<'static>, tern_tools::ConnectionError>,
    what: &str,
) -> anyhow::Result<()> {
    let f = answer.with_context(|| what.to_owned())?;
    match f.body {
        Body::Ok => Ok(()),
        _ => bail!("{what}: unexpected answer {:?}", f.frame_type()),
    }
}

fn body_text(m: &Message<'_>) -> String {
    match std::str::from_utf8(&m.body) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("0x{}", hex::encode(&m.body)),
    }
}

fn message_json(m: &Message<'_>) -> serde_json::Value {
    json!({
        "type": "message",
        "conv": m.conv.id,
        "conv_kind": m.conv.kind.0,
        "sender": m.sender,
        "sender_device": m.sender_device,
        "conv_seq": m.conv_seq,
        "inbox_seq": m.inbox_seq,
        "msg_id": hex::encode(m.msg_id.0),
        "time": m.time,
        "kind": m.kind.0,
        "flags": m.flags.0,
        "body": body_text(m),
    })
}

fn print_message(json: bool, m: &Message<'_>) {
    if let Some(event) = GroupEvent::of(m) {
        group::print_event(json, m, &event);
    } else if json {
        println!("{}", message_json(m));
    } else {
        println!(
            "[{} #{} inbox {}] {}/{}: {}",
            m.conv,
            m.conv_seq,
            m.inbox_seq,
            m.sender,
            m.sender_device,
            body_text(m)
        );
    }
}

/// The ladder the options describe.
fn endpoints(cli: &Cli) -> anyhow::Result<Endpoints> {
    let mut options = TransportOptions::new();
    if let Some(ca) = &cli.ca {
        options = options.with_ca_file(ca);
    }
    if let Some(pin) = &cli.pin {
        options = options.with_pin(Fingerprint::parse(pin)?);
    }
    if let Some(proxy) = &cli.proxy {
        options = options.with_proxy(proxy);
    }
    let timeout = Duration::try_from_secs_f64(cli.rung_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--rung-timeout must be a positive number of seconds")?;
    Ok(Endpoints::parse_all(&cli.server)?
        .with_options(options)
        .with_rung_timeout(timeout))
}

/// One connection through the ladder, the remembered rung first.
fn connect(
    ladder: &mut Endpoints,
    state: Option<&PathBuf>,
    hello: &HelloParams,
) -> anyhow::Result<Connection> {
    let mut saved = match state {
        Some(p) => DeviceState::load(p).with_context(|| format!("reading {}", p.display()))?,
        None => DeviceState::default(),
    };
    if let Some(r) = &saved.rung {
        ladder.remember(r);
    }
    let conn = ladder.connect(hello)?;
    let via = conn.rung().to_string();
    if let Some(p) = state.filter(|_| saved.rung.as_deref() != Some(via.as_str())) {
        saved.rung = Some(via);
        saved
            .save(p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(conn)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}

/// The node's refusal somewhere in an error's chain: its code and message.
fn refusal(e: &anyhow::Error) -> Option<(ErrorCode, String)> {
    e.chain().find_map(|c| {
        if let Some(SendError::Server { code, message }) = c.downcast_ref::<SendError>() {
            return Some((*code, message.clone()));
        }
        if let Some(ConnectionError::Server { code, message }) = c.downcast_ref::<ConnectionError>()
        {
            return Some((*code, message.clone()));
        }
        None
    })
}

/// Prints a failure and picks the exit status: 3 for a refusal by the node, 1 otherwise.
fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    match refusal(e) {
        Some((code, message)) => {
            if json {
                println!(
                    "{}",
                    json!({"type": "error", "code": code.to_string(), "code_num": code.0, "message": message, "context": e.to_string()})
                );
            }
            eprintln!("error: {e}: refused by the node with {code}: {message}");
            ExitCode::from(3)
        }
        None => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut ladder = endpoints(cli)?;
    let Some(token) = cli.token.clone() else {
        bail!("--token (or TERN_TOKEN) is required; in dev mode mint one with `ternd token --user U --device D`");
    };
    let device = cli
        .device
        .clone()
        .or_else(|| token_device(&token))
        .unwrap_or_else(|| "cli".into());
    let hello = HelloParams::new(token.clone(), device.clone());
    let json = cli.json;
    if let Some((op, name, user, note)) = relation_op(&cli.command) {
        let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
        let f = conn
            .request(
                Body::Relation(Relation {
                    op,
                    user: user.into(),
                    note: note.into(),
                }),
                TIMEOUT,
            )
            .with_context(|| format!("{name} {user}"))?;
        let Body::Ok = f.body else {
            bail!("unexpected answer {:?}", f.frame_type())
        };
        if json {
            println!(
                "{}",
                json!({"type": "relation", "op": name, "user": user, "ok": true})
            );
        } else if user.is_empty() {
            println!("ok: {}", name.replace('_', " "));
        } else {
            println!("ok: {} {user}", name.replace('_', " "));
        }
        return Ok(());
    }
    match &cli.command {
        Cmd::Send {
            to,
            group,
            mentions,
            mention_all,
            text,
        } => {
            if to.is_some() && (!mentions.is_empty() || *mention_all) {
                bail!("--mention and --mention-all go with --group");
            }
            let mut cfg =
                ClientConfig::new(String::new(), token, device).with_endpoints(ladder.clone());
            cfg.state_path = cli.state.clone();
            let client = Client::start(cfg);
            let body = text.as_bytes().to_vec();
            let (to, sent) = match (to, group) {
                (Some(to), _) => (to, client.send_wait(to, MessageKind::TEXT, body, TIMEOUT)),
                (None, Some(g)) => {
                    let users: Vec<&str> = mentions.iter().map(String::as_str).collect();
                    let sent = client.send_group_mentioning_wait(
                        g,
                        MessageKind::TEXT,
                        body,
                        &users,
                        *mention_all,
                        TIMEOUT,
                    );
                    (g, sent)
                }
                (None, None) => bail!("send needs --to or --group"),
            };
            client.stop();
            let ack = sent.with_context(|| format!("sending to {to}"))?;
            if json {
                println!(
                    "{}",
                    json!({"type": "send_ack", "to": to, "msg_id": hex::encode(ack.msg_id.0), "conv_seq": ack.conv_seq, "inbox_seq": ack.inbox_seq, "time": ack.time})
                );
            } else {
                println!(
                    "sent to {to}: conv_seq {} inbox_seq {} time {}",
                    ack.conv_seq, ack.inbox_seq, ack.time
                );
            }
        }
        Cmd::Watch {
            seconds,
            count,
            presence,
        } => {
            let mut cfg =
                ClientConfig::new(String::new(), token, device).with_endpoints(ladder.clone());
            cfg.state_path = cli.state.clone();
            let client = Client::start(cfg);
            let end = seconds.map(|s| Instant::now() + Duration::from_secs(s));
            let mut messages = 0usize;
            let mut subscribed = presence.is_empty();
            while end.is_none_or(|e| Instant::now() < e) && count.is_none_or(|c| messages < c) {
                let Some(ev) = client.next_event(Duration::from_millis(200)) else {
                    continue;
                };
                // Once connected, follow the asked users' presence (the client repeats it
                // after a reconnect).
                if !subscribed && matches!(ev, Event::Connected { .. }) {
                    let users: Vec<&str> = presence.iter().map(String::as_str).collect();
                    client
                        .subscribe(&users, TIMEOUT)
                        .context("subscribing to presence")?;
                    subscribed = true;
                }
                match ev {
                    Event::Message(m) => {
                        messages += 1;
                        print_message(json, &m);
                    }
                    Event::GroupEvent { message, event } => {
                        messages += 1;
                        group::print_event(json, &message, &event);
                    }
                    Event::Receipt(r) if json => println!(
                        "{}",
                        json!({"type": "receipt", "conv": r.conv.id, "user": r.user, "kind": r.kind.0, "conv_seq": r.conv_seq, "time": r.time})
                    ),
                    Event::Receipt(r) => {
                        println!("[{}] {} {} up to #{}", r.conv, r.user, r.kind, r.conv_seq)
                    }
                    Event::Typing(t) if json => println!(
                        "{}",
                        json!({"type": "typing", "conv": t.conv.id, "user": t.user, "state": t.state.0})
                    ),
                    Event::Typing(t) => println!("[{}] {} {}", t.conv, t.user, t.state),
                    Event::Presence(p) if json => println!(
                        "{}",
                        json!({"type": "presence", "user": p.user, "status": status_name(p.status), "last_seen": p.last_seen, "text": p.text})
                    ),
                    Event::Presence(p) if p.text.is_empty() => {
                        println!("{} is {}", p.user, status_name(p.status))
                    }
                    Event::Presence(p) => {
                        println!("{} is {}: {}", p.user, status_name(p.status), p.text)
                    }
                    Event::Relation(r) if json => println!(
                        "{}",
                        json!({"type": "relation_notice", "op": r.op.0, "user": r.user, "note": r.note})
                    ),
                    Event::Relation(r) => println!("{} from {}: {}", r.op, r.user, r.note),
                    Event::Connected {
                        user,
                        session_id,
                        via,
                    } if json => println!(
                        "{}",
                        json!({"type": "connected", "user": user, "session_id": session_id, "via": via})
                    ),
                    Event::Connected { user, via, .. } => {
                        eprintln!("connected as {user} via {via}")
                    }
                    Event::Disconnected { reason } if json => {
                        println!("{}", json!({"type": "disconnected", "reason": reason}))
                    }
                    Event::Disconnected { reason } => {
                        eprintln!("disconnected: {reason}; reconnecting")
                    }
                    Event::Fatal { code, message } => {
                        bail!("refused by the server ({code}): {message}")
                    }
                    Event::Synced { inbox_seq } if json => {
                        println!("{}", json!({"type": "synced", "inbox_seq": inbox_seq}))
                    }
                    Event::Synced { .. } | Event::SendAcked { .. } | Event::SendFailed { .. } => {}
                }
            }
            client.stop();
        }
        Cmd::Presence {
            action: PresenceCmd::Set { status, text },
        } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let body = Body::Presence(Presence {
                user: "".into(),
                status: status.wire(),
                last_seen: 0,
                text: text.as_str().into(),
            });
            expect_ok(conn.request(body, TIMEOUT), "setting presence")?;
            let name = status_name(status.wire());
            if json {
                println!(
                    "{}",
                    json!({"type": "presence_set", "status": name, "text": text, "ok": true})
                );
            } else {
                println!("ok: presence {name} {text}");
            }
        }
        Cmd::Typing { user, stop } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let state = if *stop {
                TypingState::STOPPED
            } else {
                TypingState::TYPING
            };
            let typing = Body::Typing(Typing {
                conv: Conv::direct(user.as_str()),
                user: "".into(),
                state,
            });
            conn.send(&tern_protocol::Frame::new(0, typing))?;
            // TYPING has no answer: a PING behind it shows the node has read it.
            conn.request(Body::Ping(Ping { time: 0 }), TIMEOUT)
                .context("typing")?;
            if json {
                println!(
                    "{}",
                    json!({"type": "typing_sent", "to": user, "state": state.0})
                );
            } else {
                println!("ok: {state} to {user}");
            }
        }
        Cmd::PushToken {
            platform,
            device_token,
        } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let body = Body::PushToken(PushToken {
                platform: platform.as_str().into(),
                token: device_token.as_str().into(),
            });
            expect_ok(conn.request(body, TIMEOUT), "registering the push token")?;
            if json {
                println!(
                    "{}",
                    json!({"type": "push_token", "platform": platform, "ok": true})
                );
            } else {
                println!("ok: push token registered for device {device}");
            }
        }
        Cmd::Mute { user, until, off } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let until = match (off, until) {
                (true, _) => 0,
                (false, Some(t)) => *t,
                (false, None) => u64::MAX,
            };
            let body = Body::Mute(Mute {
                conv: Conv::direct(user.as_str()),
                until,
            });
            expect_ok(conn.request(body, TIMEOUT), "muting")?;
            if json {
                println!(
                    "{}",
                    json!({"type": "mute", "with": user, "until": until, "ok": true})
                );
            } else if until == 0 {
                println!("ok: unmuted {user}");
            } else {
                println!("ok: muted {user}");
            }
        }
        Cmd::Sync { after } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let mut saved = match &cli.state {
                Some(p) => {
                    DeviceState::load(p).with_context(|| format!("reading {}", p.display()))?
                }
                None => DeviceState::default(),
            };
            let mut pos = after.unwrap_or(saved.inbox_seq);
            // Bounded: at most 10,000 pages of up to 500 messages.
            for _ in 0..10_000 {
                let f = conn.request(
                    Body::Sync(Sync {
                        after_inbox_seq: pos,
                        limit: 500,
                    }),
                    TIMEOUT,
                )?;
                let Body::SyncPage(page) = f.body else {
                    bail!("unexpected answer {:?}", f.frame_type())
                };
                for m in &page.messages {
                    print_message(json, m);
                    pos = pos.max(m.inbox_seq);
                }
                if !page.more {
                    break;
                }
            }
            conn.request(Body::PushAck(PushAck { inbox_seq: pos }), TIMEOUT)?;
            if let Some(p) = &cli.state {
                saved.inbox_seq = pos;
                saved
                    .save(p)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if json {
                println!("{}", json!({"type": "synced", "inbox_seq": pos}));
            } else {
                eprintln!("synced to inbox seq {pos}");
            }
        }
        Cmd::History {
            with,
            limit,
            before,
        } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let body = Body::History(History {
                conv: Conv::direct(with.as_str()),
                direction: Direction::BEFORE,
                seq: *before,
                limit: *limit,
            });
            let f = conn.request(body, TIMEOUT)?;
            let Body::HistoryPage(page) = f.body else {
                bail!("unexpected answer {:?}", f.frame_type())
            };
            for m in &page.messages {
                print_message(json, m);
            }
            if page.more && !json {
                eprintln!(
                    "(more: --before {})",
                    page.messages.first().map_or(0, |m| m.conv_seq)
                );
            }
        }
        Cmd::Contacts { limit } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let f = conn.request(
                Body::Contacts(Contacts {
                    before_time: 0,
                    limit: *limit,
                }),
                TIMEOUT,
            )?;
            let Body::ContactsPage(page) = f.body else {
                bail!("unexpected answer {:?}", f.frame_type())
            };
            if json {
                for c in &page.entries {
                    println!(
                        "{}",
                        json!({"type": "contact", "conv": c.conv.id, "conv_kind": c.conv.kind.0, "unread": c.unread, "read_seq": c.read_seq, "time": c.time, "last": c.last.as_ref().map(message_json)})
                    );
                }
                println!(
                    "{}",
                    json!({"type": "total_unread", "total_unread": page.total_unread, "more": page.more})
                );
            } else {
                for c in &page.entries {
                    let last = c.last.as_ref().map(body_text).unwrap_or_default();
                    println!("{}  unread {}  {}", c.conv, c.unread, last);
                }
                println!("total unread: {}", page.total_unread);
            }
        }
        Cmd::Room {
            name,
            recent,
            say,
            seconds,
            count,
        } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let f = conn.request(
                Body::RoomJoin(RoomJoin {
                    room: name.as_str().into(),
                    recent: *recent,
                }),
                TIMEOUT,
            )?;
            let Body::HistoryPage(page) = f.body else {
                bail!("unexpected answer {:?}", f.frame_type())
            };
            for m in &page.messages {
                print_message(json, m);
            }
            for text in say {
                let id: [u8; 16] = rand::random();
                let f = conn.request(
                    Body::Send(Send {
                        to: Conv {
                            kind: ConvKind::ROOM,
                            id: name.as_str().into(),
                        },
                        msg_id: MsgId(id),
                        kind: MessageKind::TEXT,
                        body: text.as_bytes().into(),
                    }),
                    TIMEOUT,
                )?;
                let Body::SendAck(a) = f.body else {
                    bail!("unexpected answer {:?}", f.frame_type())
                };
                if json {
                    println!(
                        "{}",
                        json!({"type": "posted", "room": name, "conv_seq": a.conv_seq, "time": a.time})
                    );
                } else {
                    println!("posted to {name} as #{}", a.conv_seq);
                }
            }
            if !say.is_empty() && seconds.is_none() && count.is_none() {
                return Ok(());
            }
            let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let left = match deadline {
                    Some(d) if Instant::now() >= d => break,
                    Some(d) => d - Instant::now(),
                    None => Duration::from_secs(3600),
                };
                if let Some(f) = conn.recv(left)? {
                    if let Body::Push(m) = &f.body {
                        if m.conv.kind == ConvKind::ROOM && m.conv.id == name.as_str() {
                            print_message(json, m);
                            seen += 1;
                        }
                    }
                }
            }
        }
        Cmd::Recall { with, group, seq } => {
            let (conv, name) = match (with, group) {
                (_, Some(g)) => (Conv::group(g.as_str()), format!("in group {g}")),
                (Some(w), None) => (Conv::direct(w.as_str()), format!("with {w}")),
                (None, None) => bail!("name the conversation: --with USER or --group GROUP"),
            };
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let id: [u8; 16] = rand::random();
            let f = conn.request(
                Body::Recall(Recall {
                    conv,
                    conv_seq: *seq,
                    msg_id: MsgId(id),
                }),
                TIMEOUT,
            )?;
            let Body::SendAck(a) = f.body else {
                bail!("unexpected answer {:?}", f.frame_type())
            };
            if json {
                println!(
                    "{}",
                    json!({"type": "recalled", "conv": with.as_ref().or(group.as_ref()), "kind": if group.is_some() { "group" } else { "direct" }, "conv_seq": seq, "event_seq": a.conv_seq, "time": a.time})
                );
            } else {
                println!("recalled #{seq} {name} (event #{})", a.conv_seq);
            }
        }
        Cmd::Read { with, seq } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            conn.request(
                Body::Read(Read {
                    conv: Conv::direct(with.as_str()),
                    conv_seq: *seq,
                }),
                TIMEOUT,
            )?;
            if json {
                println!("{}", json!({"type": "read", "conv": with, "conv_seq": seq}));
            } else {
                println!("read {with} up to #{seq}");
            }
        }
        Cmd::Relations {
            kind,
            limit,
            cursor,
            one_page,
        } => {
            let mut conn = connect(&mut ladder, cli.state.as_ref(), &hello)?;
            let mut cursor = cursor.clone();
            let mut count = 0usize;
            // Bounded: at most 10,000 pages.
            for _ in 0..10_000 {
                let f = conn.request(
                    Body::RelationList(RelationList {
                        kind: kind.wire(),
                        cursor: cursor.as_str().into(),
                        limit: *limit,
                    }),
                    TIMEOUT,
                )?;
                let Body::RelationPage(page) = f.body else {
                    bail!("unexpected answer {:?}", f.frame_type())
                };
                for e in &page.users {
                    count += 1;
                    if json {
                        println!(
                            "{}",
                            json!({"type": "relation", "kind": kind.name(), "user": e.user, "since": e.since, "note": e.note})
                        );
                    } else if e.note.is_empty() {
                        println!("{}  since {}", e.user, e.since);
                    } else {
                        println!("{}  since {}  \"{}\"", e.user, e.since, e.note);
                    }
                }
                cursor = page.next_cursor.into_owned();
                if cursor.is_empty() || *one_page {
                    break;
                }
            }
            if json {
                println!(
                    "{}",
                    json!({"type": "relations_end", "kind": kind.name(), "count": count, "next_cursor": cursor})
                );
            } else if !cursor.is_empty() {
                println!("{count} {}; more after --cursor {cursor}", kind.name());
            } else {
                println!("{count} {}", kind.name());
            }
        }
        Cmd::Follow { .. }
        | Cmd::Unfollow { .. }
        | Cmd::Friend { .. }
        | Cmd::Block { .. }
        | Cmd::Unblock { .. }
        | Cmd::FriendsOnly { .. } => {
            // Answered by the relation operation above.
        }
        Cmd::Group { action } => {
            let mut cfg =
                ClientConfig::new(String::new(), token, device).with_endpoints(ladder.clone());
            cfg.state_path = cli.state.clone();
            let mut ctx = group::Ctx {
                ladder: &mut ladder,
                state: cli.state.as_ref(),
                hello: &hello,
                client: cfg,
                json,
            };
            group::run(&mut ctx, action)?;
        }
        Cmd::Topic { action } => {
            let mut cfg =
                ClientConfig::new(String::new(), token, device).with_endpoints(ladder.clone());
            cfg.state_path = cli.state.clone();
            let mut ctx = topic::Ctx {
                ladder: &mut ladder,
                state: cli.state.as_ref(),
                hello: &hello,
                client: cfg,
                json,
            };
            topic::run(&mut ctx, action)?;
        }
    }
    Ok(())
}
