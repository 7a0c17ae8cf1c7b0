//! `tern group ...`: every group operation of SPEC.md §7 (Groups) from the command line, and how
//! group events are printed (by `watch`, `sync` and `history` too).
//!
//! Requests that change or read a group go over one connection and print the node's answer;
//! `group send` goes through the SDK's send queue, so a message is retransmitted with the same
//! message id until the node acknowledges it (or refuses it, which exits with status 3).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde_json::json;
use tern_protocol::{
    Body, Conv, Direction, Frame, GroupCreate, GroupInfo, GroupMembers, GroupReceipts, GroupRef,
    GroupTransfer, GroupUpdate, History, ListRequest, MemberOp, Message, MessageKind, Read, Role,
};
use tern_tools::group::role_name;
use tern_tools::{Client, ClientConfig, Endpoints, GroupEvent, HelloParams};

use crate::{connect, print_message, TIMEOUT};

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group (you become its owner); prints the id the node chose.
    Create {
        name: String,
        /// A member besides you (repeatable, or comma-separated).
        #[arg(long = "member", value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Rename a group (owner and admins).
    Rename { group: String, name: String },
    /// Change a group's name, announcement or avatar reference (owner and admins).
    Update {
        group: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        announcement: Option<String>,
        /// A reference to an image uploaded elsewhere.
        #[arg(long)]
        avatar: Option<String>,
    },
    /// Add members (owner and admins; members already in the group are skipped).
    Add {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (owner and admins).
    Remove {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Mute members: they may not send until --until (ms since the epoch), for --for seconds,
    /// or, with neither, until unmuted.
    Mute {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
        #[arg(long, conflicts_with = "for_secs")]
        until: Option<u64>,
        #[arg(long = "for", value_name = "SECONDS")]
        for_secs: Option<u64>,
    },
    /// End the mute of members.
    Unmute {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Make members admins or plain members (owner only).
    Role {
        group: String,
        #[arg(value_enum)]
        role: RoleArg,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group (the owner transfers or disbands instead).
    Leave { group: String },
    /// Make another member the owner (you become an admin).
    Transfer { group: String, owner: String },
    /// Disband a group: every membership ends (owner only).
    Disband { group: String },
    /// Your groups, every page from --cursor on (or one page with --one-page).
    List {
        /// Groups per page (0: the node's default).
        #[arg(long, default_value_t = 0)]
        limit: u16,
        #[arg(long, default_value = "")]
        cursor: String,
        #[arg(long)]
        one_page: bool,
    },
    /// A group's name, announcement, owner and members.
    Info { group: String },
    /// Send a text message to a group (retransmitted until the node acknowledges it).
    Send {
        group: String,
        text: String,
        /// Mention this member (repeatable): their CONTACTS entry is flagged until read.
        #[arg(long = "mention")]
        mentions: Vec<String>,
        /// Mention everyone (@all).
        #[arg(long)]
        mention_all: bool,
    },
    /// Page a group's messages and events, newest last.
    History {
        group: String,
        #[arg(long, default_value_t = 50)]
        limit: u16,
        /// Messages before this conversation sequence (default: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
    },
    /// Mark a group read up to a conversation sequence (clears its unread count and mention
    /// flag; in a write-diffusion group the senders see the receipt).
    Read { group: String, seq: u64 },
    /// Who read your messages: "read by k of n" for each SEQ of a write-diffusion group, with the
    /// readers' ids when one SEQ is asked with --readers; your own read position in a
    /// read-diffusion group.
    Receipts {
        group: String,
        seqs: Vec<u64>,
        #[arg(long)]
        readers: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Member,
}

/// What the group commands need from the command line.
pub struct Ctx<'a> {
    pub ladder: &'a mut Endpoints,
    pub state: Option<&'a PathBuf>,
    pub hello: &'a HelloParams,
    /// For `group send`, which goes through the SDK's send queue.
    pub client: ClientConfig,
    pub json: bool,
}

fn owned(users: &[String]) -> Vec<std::borrow::Cow<'static, str>> {
    users.iter().map(|u| u.clone().into()).collect()
}

/// Prints a group event: `[group:g1 #3] alice added bob`.
pub fn print_event(json: bool, m: &Message<'_>, e: &GroupEvent) {
    if json {
        println!(
            "{}",
            json!({
                "type": "group_event",
                "group": m.conv.id,
                "event": e.kind.name(),
                "users": e.users,
                "arg": e.arg,
                "sender": m.sender,
                "conv_seq": m.conv_seq,
                "inbox_seq": m.inbox_seq,
                "time": m.time,
            })
        );
    } else {
        println!("[{} #{}] {}", m.conv, m.conv_seq, e.describe(&m.sender));
    }
}

fn info_json(kind: &str, i: &GroupInfo<'_>) -> serde_json::Value {
    let members: Vec<_> = i
        .members
        .iter()
        .map(|m| json!({"user": m.user, "role": role_name(m.role), "muted_until": m.muted_until}))
        .collect();
    json!({
        "type": kind,
        "group": i.group,
        "name": i.name,
        "announcement": i.announcement,
        "avatar": i.avatar,
        "owner": i.owner,
        "member_count": i.member_count,
        "members": members,
    })
}

fn print_info(json: bool, kind: &str, i: &GroupInfo<'_>) {
    if json {
        println!("{}", info_json(kind, i));
        return;
    }
    println!(
        "group {} \"{}\": owner {}, {} members",
        i.group, i.name, i.owner, i.member_count
    );
    if !i.announcement.is_empty() {
        println!("announcement: {}", i.announcement);
    }
    if !i.avatar.is_empty() {
        println!("avatar: {}", i.avatar);
    }
    for m in &i.members {
        if m.muted_until == 0 {
            println!("  {} {}", m.user, role_name(m.role));
        } else {
            println!(
                "  {} {} (muted until {})",
                m.user,
                role_name(m.role),
                m.muted_until
            );
        }
    }
    if (i.members.len() as u64) < i.member_count {
        println!("  ... {} more", i.member_count - i.members.len() as u64);
    }
}

/// Prints the OK of a change: `ok: add bob to g1`.
fn print_ok(json: bool, op: &str, group: &str, users: &[String]) {
    if json {
        println!(
            "{}",
            json!({"type": "group_ok", "op": op, "group": group, "users": users, "ok": true})
        );
    } else if users.is_empty() {
        println!("ok: {op} {group}");
    } else {
        println!("ok: {op} {} in {group}", users.join(", "));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A change answered by OK: its request body, name for output and users.
fn change(cmd: &GroupCmd) -> Option<(Body<'static>, &'static str, &str, Vec<String>)> {
    let members = |group: &str, op, users: &[String], arg| {
        Body::GroupMembers(GroupMembers {
            group: group.to_owned().into(),
            op,
            users: owned(users),
            arg,
        })
    };
    let gref = |group: &str| GroupRef {
        group: group.to_owned().into(),
    };
    Some(match cmd {
        GroupCmd::Rename { group, name } => (
            Body::GroupUpdate(GroupUpdate {
                group: group.clone().into(),
                name: Some(name.clone().into()),
                announcement: None,
                avatar: None,
            }),
            "rename",
            group,
            Vec::new(),
        ),
        GroupCmd::Update {
            group,
            name,
            announcement,
            avatar,
        } => (
            Body::GroupUpdate(GroupUpdate {
                group: group.clone().into(),
                name: name.clone().map(Into::into),
                announcement: announcement.clone().map(Into::into),
                avatar: avatar.clone().map(Into::into),
            }),
            "update",
            group,
            Vec::new(),
        ),
        GroupCmd::Add { group, users } => (
            members(group, MemberOp::ADD, users, 0),
            "add",
            group,
            users.clone(),
        ),
        GroupCmd::Remove { group, users } => (
            members(group, MemberOp::REMOVE, users, 0),
            "remove",
            group,
            users.clone(),
        ),
        GroupCmd::Mute {
            group,
            users,
            until,
            for_secs,
        } => {
            let until = match (until, for_secs) {
                (Some(t), _) => *t,
                (None, Some(s)) => now_ms().saturating_add(s.saturating_mul(1000)),
                (None, None) => u64::MAX,
            };
            (
                members(group, MemberOp::MUTE, users, until),
                "mute",
                group,
                users.clone(),
            )
        }
        GroupCmd::Unmute { group, users } => (
            members(group, MemberOp::UNMUTE, users, 0),
            "unmute",
            group,
            users.clone(),
        ),
        GroupCmd::Role { group, role, users } => {
            let (role, name) = match role {
                RoleArg::Admin => (Role::ADMIN, "make_admin"),
                RoleArg::Member => (Role::MEMBER, "make_member"),
            };
            (
                members(group, MemberOp::SET_ROLE, users, u64::from(role.0)),
                name,
                group,
                users.clone(),
            )
        }
        GroupCmd::Leave { group } => (Body::GroupLeave(gref(group)), "leave", group, Vec::new()),
        GroupCmd::Transfer { group, owner } => (
            Body::GroupTransfer(GroupTransfer {
                group: group.clone().into(),
                owner: owner.clone().into(),
            }),
            "transfer",
            group,
            vec![owner.clone()],
        ),
        GroupCmd::Disband { group } => (
            Body::GroupDisband(gref(group)),
            "disband",
            group,
            Vec::new(),
        ),
        _ => return None,
    })
}

fn unexpected(f: &Frame<'_>) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer {:?}", f.frame_type())
}

pub fn run(ctx: &mut Ctx<'_>, cmd: &GroupCmd) -> anyhow::Result<()> {
    let json = ctx.json;
    if let Some((body, op, group, users)) = change(cmd) {
        let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
        let f = conn
            .request(body, TIMEOUT)
            .with_context(|| format!("group {op} {group}"))?;
        let Body::Ok = f.body else {
            return Err(unexpected(&f));
        };
        print_ok(json, op, group, &users);
        return Ok(());
    }
    match cmd {
        GroupCmd::Create { name, members } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::GroupCreate(GroupCreate {
                        name: name.clone().into(),
                        members: owned(members),
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("creating group {name}"))?;
            let Body::GroupInfo(info) = &f.body else {
                return Err(unexpected(&f));
            };
            print_info(json, "group_created", info);
        }
        GroupCmd::Info { group } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::GroupGet(GroupRef {
                        group: group.clone().into(),
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("group info {group}"))?;
            let Body::GroupInfo(info) = &f.body else {
                return Err(unexpected(&f));
            };
            print_info(json, "group_info", info);
        }
        GroupCmd::List {
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
                        Body::GroupList(ListRequest {
                            cursor: cursor.as_str().into(),
                            limit: *limit,
                        }),
                        TIMEOUT,
                    )
                    .context("listing groups")?;
                let Body::GroupListPage(page) = f.body else {
                    return Err(unexpected(&f));
                };
                for g in &page.groups {
                    count += 1;
                    if json {
                        println!(
                            "{}",
                            json!({"type": "group", "group": g.group, "name": g.name, "members": g.members})
                        );
                    } else {
                        println!("{}  \"{}\"  {} members", g.group, g.name, g.members);
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
                    json!({"type": "groups_end", "count": count, "next_cursor": cursor})
                );
            } else if !cursor.is_empty() {
                println!("{count} groups; more after --cursor {cursor}");
            } else {
                println!("{count} groups");
            }
        }
        GroupCmd::Send {
            group,
            text,
            mentions,
            mention_all,
        } => {
            let client = Client::start(ctx.client.clone());
            let users: Vec<&str> = mentions.iter().map(String::as_str).collect();
            let sent = client.send_group_mentioning_wait(
                group,
                MessageKind::TEXT,
                text.as_bytes().to_vec(),
                &users,
                *mention_all,
                TIMEOUT,
            );
            client.stop();
            let ack = sent.with_context(|| format!("sending to group {group}"))?;
            if json {
                println!(
                    "{}",
                    json!({"type": "send_ack", "group": group, "msg_id": hex::encode(ack.msg_id.0), "conv_seq": ack.conv_seq, "inbox_seq": ack.inbox_seq, "time": ack.time})
                );
            } else {
                println!(
                    "sent to group {group}: conv_seq {} inbox_seq {} time {}",
                    ack.conv_seq, ack.inbox_seq, ack.time
                );
            }
        }
        GroupCmd::History {
            group,
            limit,
            before,
        } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::History(History {
                        conv: Conv::group(group.clone()),
                        direction: Direction::BEFORE,
                        seq: *before,
                        limit: *limit,
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("history of group {group}"))?;
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
        GroupCmd::Read { group, seq } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::Read(Read {
                        conv: Conv::group(group.clone()),
                        conv_seq: *seq,
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("read of group {group}"))?;
            let Body::Ok = f.body else {
                return Err(unexpected(&f));
            };
            if json {
                println!(
                    "{}",
                    json!({"type": "read", "group": group, "conv_seq": seq})
                );
            } else {
                println!("group {group} read up to #{seq}");
            }
        }
        GroupCmd::Receipts {
            group,
            seqs,
            readers,
        } => {
            let mut conn = connect(ctx.ladder, ctx.state, ctx.hello)?;
            let f = conn
                .request(
                    Body::GroupReceipts(GroupReceipts {
                        group: group.clone().into(),
                        seqs: seqs.clone(),
                        readers: *readers,
                    }),
                    TIMEOUT,
                )
                .with_context(|| format!("receipts of group {group}"))?;
            let Body::GroupReceiptsPage(page) = f.body else {
                return Err(unexpected(&f));
            };
            if json {
                let messages: Vec<_> = page
                    .messages
                    .iter()
                    .map(|m| json!({"conv_seq": m.conv_seq, "members": m.members, "read": m.read, "readers": m.readers}))
                    .collect();
                println!(
                    "{}",
                    json!({"type": "receipts", "group": group, "diffusion": page.diffusion.0, "read_seq": page.read_seq, "messages": messages})
                );
            } else {
                println!("group {group}: you read up to #{}", page.read_seq);
                for m in &page.messages {
                    println!("  #{} read by {} of {}", m.conv_seq, m.read, m.members);
                    if !m.readers.is_empty() {
                        println!("    {}", m.readers.join(", "));
                    }
                }
            }
        }
        GroupCmd::Rename { .. }
        | GroupCmd::Update { .. }
        | GroupCmd::Add { .. }
        | GroupCmd::Remove { .. }
        | GroupCmd::Mute { .. }
        | GroupCmd::Unmute { .. }
        | GroupCmd::Role { .. }
        | GroupCmd::Leave { .. }
        | GroupCmd::Transfer { .. }
        | GroupCmd::Disband { .. } => {
            bail!("handled above as a change")
        }
    }
    Ok(())
}
