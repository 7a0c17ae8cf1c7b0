//! Read positions and group receipts in the SDK (SPEC.md §7 READ, Groups "Receipts"): the
//! [`Client`] calls that mark a conversation read and ask how far a group's messages are read.
//! RECEIPT notices come out of the client's events as [`crate::Event::Receipt`].
//!
//! Both are requests on the current connection: between connections they fail with
//! [`SendError::NotConnected`] and the caller tries again (READ only moves forward, so repeating
//! it is harmless).

use std::time::Duration;

use tern_protocol::{Body, Conv, GroupReceipts, GroupReceiptsPage, Read};

use crate::client::{Client, SendError};

impl Client {
    /// Marks `conv` read up to and including `conv_seq`.
    pub fn mark_read(
        &self,
        conv: Conv<'static>,
        conv_seq: u64,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.request_ok(Body::Read(Read { conv, conv_seq }), timeout)
    }

    /// How many members have read each of `seqs` in a write-diffusion group ("read by k of n"),
    /// and who when `readers` is set (one message at a time); for a read-diffusion group only
    /// our own read position.
    pub fn group_receipts(
        &self,
        group: &str,
        seqs: &[u64],
        readers: bool,
        timeout: Duration,
    ) -> Result<GroupReceiptsPage<'static>, SendError> {
        let body = Body::GroupReceipts(GroupReceipts {
            group: group.to_owned().into(),
            seqs: seqs.to_vec(),
            readers,
        });
        match self.request(body, timeout)?.body {
            Body::GroupReceiptsPage(p) => Ok(p),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }
}
