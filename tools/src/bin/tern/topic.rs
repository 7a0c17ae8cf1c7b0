//! `tern topic ...`: subscribe to topics, list subscriptions, publish and read a topic's
//! history (SPEC.md §7, Topics). A subscription belongs to the user and is kept by the node, so
//! `tern watch` and `tern sync` then show the topic's messages like any other.
//!
//! `topic post` goes through the SDK's send queue (retransmitted with the same message id until
//! the node acknowledges it, or refuses it, which exits with status 3).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use tern_protocol::{Body, Direction, Frame, History, ListRequest, MessageKind, SubOp, TopicSub};
use tern_tools::topic::topic_conv;
use tern_tools::{Client, ClientConfig, Endpoints, HelloParams};

use crate::{connect, print_message, TIMEOUT};

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Subscribe (all your devices) to a topic, from its next message on.
    Sub { topic: String },
    /// End your subscription to a topic.
    Unsub { topic: String },
    /// Your subscriptions, every page from --cursor on (or one page with --one-page).
    List {
        /// Topics per page (0: the node's default).
        #[arg(long, default_value_t = 0)]
        limit: u16,
        #[arg(long, default_value = "")]
        cursor: String,
        #[arg(long)]
        one_page: bool,
    },
    /// Publish a text message to a topic (retransmitted until the node acknowledges it).
    Post { topic: String, text: String },
    /// Page a topic's messages, newest last.
    History {
        topic: String,
        #[arg(long, default_value_t = 50)]
        limit: u16,
        /// Messages before this conversation sequence (default: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
    },
}

/// What the topic commands need from the command line.
pub struct Ctx<'a> {
    pub ladder: &'a mut Endpoints,
    pub state: Option<&'a PathBuf>,
    pub hello: &'a HelloParams,
    /// For `topic post`, which goes through the SDK's send queue.
    pub client: ClientConfig,
    pub json: bool,
}

fn unexpected(f: &Frame<'_>) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer {:?}", f.frame_type())
}

pub fn run(ctx: &mut Ctx<'_>, cmd: &TopicCmd) -> anyhow::Result<()> {
    let json = ctx.json;
    match cmd {
        TopicCmd::Sub { topic } | TopicCmd::Unsub { topic } => {
            let (op, name) = match cmd {
                TopicCmd::Sub { .. } => (SubOp::ADD, "subscribed"),
                _ => (SubOp::REMOVE, "unsubscribed"),
            };
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::TopicSub(TopicSub {
                        op,
                        topic: topic.clone().into(),
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("topic {name} {topic}"))?;
            let Body::Ok = f.body else {
                return Err(unexpected(&f));
            };
            if json {
                println!("{}", json!({"type": "ok", "op": name, "topic": topic}));
            } else {
                println!("{name} {topic}");
            }
        }
        TopicCmd::List {
            limit,
            cursor,
            one_page,
        } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let mut cursor = cursor.clone();
            let mut count = 0usize;
            // Bounded: at most 10,000 pages.
            for _ in 0..10_000 {
                let f = conn
                    .request(
                        Body::TopicList(ListRequest {
                            cursor: cursor.as_str().into(),
                            limit: *limit,
                        }),
                        TIMEOUT,
                    )
                    .context("listing topics")?;
                let Body::TopicListPage(page) = f.body else {
                    return Err(unexpected(&f));
                };
                for t in &page.topics {
                    count += 1;
                    if json {
                        println!(
                            "{}",
                            json!({"type": "topic", "topic": t.topic, "subscribers": t.subscribers, "last_seq": t.last_seq, "read_seq": t.read_seq})
                        );
                    } else {
                        println!(
                            "{}  {} subscribers  last #{}  read #{}",
                            t.topic, t.subscribers, t.last_seq, t.read_seq
                        );
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
                    json!({"type": "topics_end", "count": count, "next_cursor": cursor})
                );
            } else if !cursor.is_empty() {
                println!("{count} topics; more after --cursor {cursor}");
            } else {
                println!("{count} topics");
            }
        }
        TopicCmd::Post { topic, text } => {
            let client = Client::start(ctx.client.clone());
            let sent =
                client.publish_wait(topic, MessageKind::TEXT, text.as_bytes().to_vec(), TIMEOUT);
            client.stop();
            let ack = sent.with_context(|| format!("posting to topic {topic}"))?;
            if json {
                println!(
                    "{}",
                    json!({"type": "send_ack", "topic": topic, "msg_id": hex::encode(ack.msg_id.0), "conv_seq": ack.conv_seq, "time": ack.time})
                );
            } else {
                println!(
                    "posted to topic {topic}: conv_seq {} time {}",
                    ack.conv_seq, ack.time
                );
            }
        }
        TopicCmd::History {
            topic,
            limit,
            before,
        } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::History(History {
                        conv: topic_conv(topic),
                        direction: Direction::BEFORE,
                        seq: *before,
                        limit: *limit,
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("history of topic {topic}"))?;
            let Body::HistoryPage(page) = f.body else {
                return Err(unexpected(&f));
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
    }
    Ok(())
}
