//! The recipient's "friends only" setting for a one-to-one message whose conversation this
//! node sequences while another node serves the recipient ([`Placement::Routed`]).
//!
//! The setting is a row of the recipient's own node; the rows saying whether the two are
//! friends are the pair's, kept by the conversation's node (this one; CLUSTER.md "Requests
//! between nodes", RELATION). The store checks blocks and friendships when it appends, but
//! reads the setting from its own rows, where the recipient's is not. So before the append
//! this node asks the recipient's node for the setting ([`Call::FriendsOnly`]) and, when it is
//! on, looks for the recipient's FRIEND row about the sender in its own store; a stranger gets
//! `NOT_FRIEND`, as on one node. A recipient's node that does not answer (down, cut off: the
//! call fails at once on a broken link, after `CALL_TIMEOUT` on a silent one) leaves the setting
//! unknown and the message is stored as before, its recipient's half waiting in the outbox:
//! refusing it would make every user of a down node unreachable, which the outbox exists to
//! avoid. The cost is one node-to-node round trip per such SEND.
//!
//! [`Placement::Routed`]: super::route::Placement::Routed
//! [`Call::FriendsOnly`]: super::forward::Call::FriendsOnly

use std::sync::Arc;

use tern_protocol::ErrorCode;
use tern_storage::{
    AppendResult, Completion, DirectMessage, OpError, RelationKind, RemoteSide, UserId,
};

use super::forward::{refused, submit_error, Answering, Call, Done, Reply};
use super::links::Links;
use crate::server::NodeShared;
use crate::slots::Owner;

/// FRIEND rows read per page while looking for the sender among the recipient's friends.
const PAGE: usize = 512;
/// Pages read at most: a recipient with more friends than this ordered before the sender
/// cannot be checked, and the SEND is refused as `UNAVAILABLE` rather than let through.
const MAX_PAGES: usize = 200;

/// Stores `msg` (conversation here, recipient at node `dest`) once the recipient's node said
/// whether the recipient takes messages from friends only, and the sender is one if so.
pub fn append_routed(
    node: &NodeShared,
    links: &Arc<Links>,
    msg: DirectMessage,
    dest: String,
) -> Completion<AppendResult> {
    let (resolver, completion) = Completion::detached();
    let store = Arc::clone(&node.store);
    let to = dest.clone();
    let call = Call::FriendsOnly {
        user: msg.recipient.as_str().to_owned(),
    };
    let done = Done::new(move |answer| {
        // Only an answer "on" holds the message back. Without an answer (the recipient's node
        // is down or cut off, or no longer serves the user) the setting is unknown and the
        // message is stored as before: its recipient's half waits in the outbox for that node,
        // which is what lets a user write to a user whose node is down.
        let friends_only = matches!(answer, Ok(Reply::FriendsOnly(true)));
        // The answer runs on the link core: the rest (store reads, the append) is awaited
        // there as a task, like any link work.
        monoio::spawn(async move {
            if friends_only {
                match is_friend(&store, &msg.recipient, &msg.sender).await {
                    Ok(true) => {}
                    Ok(false) => return resolver.resolve(Err(OpError::NotFriend)),
                    Err(e) => return resolver.resolve(Err(e)),
                }
            }
            let r = match store.append_routed(msg, RemoteSide::Recipient, dest) {
                Ok(c) => c.await,
                Err(e) => Err(submit_error(e)),
            };
            resolver.resolve(r);
        });
    });
    Arc::clone(links).call(to, call, done);
    completion
}

/// Whether `user` has a FRIEND row about `other` in this node's store. Rows come in key
/// order: ids by length, then bytes; the search stops at the first id past `other`.
async fn is_friend(
    store: &crate::server::NodeStore,
    user: &UserId,
    other: &UserId,
) -> Result<bool, OpError> {
    let past = |id: &UserId| {
        (id.as_str().len(), id.as_str().as_bytes())
            > (other.as_str().len(), other.as_str().as_bytes())
    };
    let mut after: Option<UserId> = None;
    for _ in 0..MAX_PAGES {
        let page = store
            .relation_page(user.clone(), RelationKind::FRIEND, after.clone(), PAGE)
            .map_err(submit_error)?
            .await?;
        for r in &page {
            if r.other == *other {
                return Ok(true);
            }
            if past(&r.other) {
                return Ok(false);
            }
        }
        if page.len() < PAGE {
            return Ok(false);
        }
        after = page.last().map(|r| r.other.clone());
    }
    Err(OpError::Unavailable(
        "too many friends to check the friends-only setting".into(),
    ))
}

/// Answers [`Call::FriendsOnly`] for `user`, who must be served here (the writes' table): only
/// this node holds the setting.
pub fn serve(node: Arc<NodeShared>, user: String) -> Answering {
    let Ok(user) = UserId::new(user) else {
        return Box::pin(async { refused(ErrorCode::INVALID_ARGUMENT, "invalid user id") });
    };
    if let Owner::Remote(o) = super::quorum::writes_table(&node).owner_of_user(user.as_str()) {
        let m = format!("{user} is served by node {}; retry", o.node);
        return Box::pin(async move { refused(ErrorCode::UNAVAILABLE, m) });
    }
    let submitted = node.store.friends_only(user);
    Box::pin(async move {
        match submitted {
            Ok(c) => match c.await {
                Ok(on) => Reply::FriendsOnly(on),
                Err(e) => super::forward::refusal(&e),
            },
            Err(e) => super::forward::refusal(&submit_error(e)),
        }
    })
}
