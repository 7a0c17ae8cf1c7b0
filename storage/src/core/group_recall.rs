//! The writer's side of a RECALL in a group (SPEC.md, RECALL): who may recall (the sender, or
//! the owner, or an admin for a plain member's message), the tombstone on the stored message,
//! and the RECALL event appended through the group append path so it reaches every member
//! under the group's diffusion like any group entry.

use crate::engine::{Cf, KvEngine};
use crate::error::OpError;
use crate::ids::{ConvKey, MessageFlags, MessageKind, Seq};
use crate::keys;
use crate::records::{DedupRecordRef, MessageRecord};
use crate::types::{Diffusion, GroupAppendResult, MemberRole, Recall};

use super::groups::{group_conv, CursorState, Entry, Mentioned};
use super::{PendingAppend, WriterCore};

impl<E: KvEngine> WriterCore<E> {
    /// Recalls message `req.seq` of the group `req.conv` names. The sender may recall their
    /// own content message; the owner any member's; an admin a plain member's (not the
    /// owner's or another admin's, as for the other admin powers). A retransmission (same
    /// recaller and client id) writes nothing and returns the original.
    pub(super) fn recall_group(&mut self, req: Recall) -> Result<GroupAppendResult, OpError> {
        let ConvKey::Group(group) = &req.conv else {
            return Err(OpError::Invalid("not a group conversation"));
        };
        let seen = self.dedup_check(&req.by, req.client_msg_id)?;
        if let Some(e) = seen.earlier {
            return Ok(GroupAppendResult::repeated(e));
        }
        if !self.load_group_state(group)? {
            return Err(OpError::NotFound("group"));
        }
        let Some(g) = self.groups.get(group) else {
            return Err(OpError::NotFound("group"));
        };
        let Some(me) = g.members.get(&req.by).map(|m| m.role) else {
            return Err(OpError::NotAllowed("not a member of the group"));
        };
        let diffusion = Diffusion(g.rec.diffusion);
        let conv_bytes = group_conv(group);
        let mut key = conv_bytes.clone();
        keys::put_seq(&mut key, req.seq);
        let original = self
            .stored_message(&key)?
            .ok_or(OpError::NotFound("message"))?;
        if original.sender != req.by.as_str() {
            // A former member's message counts as a plain member's.
            let sender_role = g
                .members
                .iter()
                .find(|(u, _)| u.as_str() == original.sender)
                .map_or(MemberRole::MEMBER, |(_, m)| m.role);
            let allowed = me == MemberRole::OWNER
                || (me == MemberRole::ADMIN && sender_role == MemberRole::MEMBER);
            if !allowed {
                return Err(OpError::NotAllowed(
                    "only the sender, the owner or an admin may recall a message",
                ));
            }
        }
        if MessageKind(original.kind).is_event() {
            return Err(OpError::Invalid("events cannot be recalled"));
        }
        if MessageFlags(original.flags).contains(MessageFlags::RECALLED) {
            return Err(OpError::AlreadyRecalled);
        }
        if req.window_ms > 0 && self.now.saturating_sub(original.time_ms) > req.window_ms {
            return Err(OpError::RecallExpired);
        }

        // Under write diffusion the recalled message no longer counts as unread for a member
        // (other than its sender) who had not read it, as in a one-to-one recall. Loads first.
        let mut unread_fixes = Vec::new();
        if diffusion == Diffusion::WRITE {
            let members: Vec<_> = g
                .members
                .keys()
                .filter(|u| u.as_str() != original.sender)
                .cloned()
                .collect();
            let mut k = Vec::new();
            for user in &members {
                keys::user_key(&mut k, user);
                let u = self.user_slot(&k);
                let total = self.total(u)?;
                keys::recent_key(&mut k, user, &req.conv);
                let recent = self.recent_slot(&k)?;
                unread_fixes.push((u, total, recent));
            }
        }

        // Under read diffusion the recaller's read position moves to the event, as a sender's
        // does to their message: one cursor row, whatever the member count.
        let cursor = if diffusion == Diffusion::READ {
            Some(self.member_cursor(group, &req.by)?)
        } else {
            None
        };

        let recalled = MessageRecord {
            flags: original.flags | MessageFlags::RECALLED.0,
            ..original
        };
        self.put(Cf::Messages, &key, &recalled)?;
        for (u, total, recent) in unread_fixes {
            let Some(mut state) = self.recent(recent) else {
                continue;
            };
            if req.seq > state.read_seq && state.unread > 0 {
                state.unread -= 1;
                self.set_recent(recent, state);
                self.set_total(u, total.saturating_sub(1));
            }
        }
        // The wire's body of a RECALL event: the recalled message's conv_seq as a varint.
        let mut body = Vec::with_capacity(10);
        tern_protocol::wire::put_varint(&mut body, req.seq.0);
        let entry = Entry {
            sender: &req.by,
            sender_device: &req.by_device,
            client_msg_id: req.client_msg_id.0,
            kind: MessageKind::RECALL_EVENT,
            body,
            mentioned: Mentioned::Nobody,
        };
        let (fanout, by_inbox_seq) = self.append_entry(group, &conv_bytes, entry, &[])?;
        let seq = fanout.message.seq;
        let now = self.now;
        let dedup = DedupRecordRef {
            conv: &conv_bytes,
            conv_seq: seq.0,
            sender_inbox_seq: by_inbox_seq.0,
            recipient_inbox_seq: 0,
            time_ms: now,
        };
        self.put(Cf::Dedup, &seen.key, &dedup)?;
        if let Some(c) = cursor {
            self.put_cursor_row(
                group,
                &req.by,
                CursorState {
                    acked: seq.0,
                    read: seq.0,
                    since: c.since,
                },
            )?;
            self.touch_group(group);
        }
        let c = self.conv_slot(&conv_bytes)?;
        self.pending_dedup.insert(
            (seen.user, req.client_msg_id.0),
            PendingAppend {
                conv: c,
                conv_seq: seq,
                sender_inbox_seq: by_inbox_seq,
                recipient_inbox_seq: Seq::ZERO,
                time_ms: now,
                gen: self.gen,
            },
        );
        Ok(GroupAppendResult {
            conv_seq: seq,
            sender_inbox_seq: by_inbox_seq,
            time_ms: now,
            duplicate: false,
            fanout: Some(fanout),
        })
    }
}
