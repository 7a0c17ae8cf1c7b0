//! Offline push settings: each device's push token and each user's muted conversations, in the
//! `push` family. The node's push hook reads them (on a reader thread) when a message reaches a
//! user with no device online; the writer stores them like every other write (durable before
//! the completion).
//!
//! | key                           | value                                  |
//! |-------------------------------|----------------------------------------|
//! | `id(user) ‖ 1 ‖ id(device)`   | platform, token, updated ms            |
//! | `id(user) ‖ 2 ‖ conv`         | muted until ms, updated ms             |
//!
//! Both are prefix scans of one user: the hook reads the tokens of a user with one scan and the
//! mute of a conversation with one get. Nothing here expires; a device removes its token with an
//! empty one.

use rkyv::{Archive, Serialize};

use crate::engine::{Cf, EngineError, KvEngine};
use crate::ids::{ConvKey, DeviceId, UserId};
use crate::keys::{self, prefix_end, KeyReader};
use crate::records::{access, bad};

/// Key tag of a device's push token.
const TAG_TOKEN: u8 = 1;
/// Key tag of a muted conversation.
const TAG_MUTE: u8 = 2;

/// Most tokens one user's lookup returns (a user has a handful of devices).
pub(crate) const MAX_TOKENS: usize = 64;

/// A change of push settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushSetting {
    /// The device's token; an empty `token` removes it.
    Token {
        user: UserId,
        device: DeviceId,
        platform: String,
        token: String,
    },
    /// No offline push for `conv` until `until_ms` (ms since the epoch); 0 unmutes.
    Mute {
        user: UserId,
        conv: ConvKey,
        until_ms: u64,
    },
}

/// One device's registered token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushToken {
    pub device: DeviceId,
    pub platform: String,
    pub token: String,
}

/// What the push hook needs to notify a user about a message in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushTargets {
    pub tokens: Vec<PushToken>,
    /// The conversation is muted until this time (ms since the epoch); 0: not muted.
    pub muted_until: u64,
}

/// `push` value of a token row.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct PushTokenRecord {
    pub platform: String,
    pub token: String,
    pub updated_ms: u64,
}

/// `push` value of a mute row.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct MuteRecord {
    pub until_ms: u64,
    pub updated_ms: u64,
}

const _: () = {
    // The unaligned format (see the crate docs): records are read in place at any address.
    assert!(std::mem::align_of::<ArchivedPushTokenRecord>() == 1);
    assert!(std::mem::align_of::<ArchivedMuteRecord>() == 1);
};

/// `push`: `user ‖ 1 ‖ device`.
pub(crate) fn token_key<'b>(out: &'b mut Vec<u8>, user: &UserId, device: &DeviceId) -> &'b [u8] {
    out.clear();
    keys::put_id(out, user.as_str());
    out.push(TAG_TOKEN);
    keys::put_id(out, device.as_str());
    out
}

/// `push`: `user ‖ 2 ‖ conv`.
pub(crate) fn mute_key<'b>(out: &'b mut Vec<u8>, user: &UserId, conv: &ConvKey) -> &'b [u8] {
    out.clear();
    keys::put_id(out, user.as_str());
    out.push(TAG_MUTE);
    keys::put_conv(out, conv);
    out
}

/// The tokens of `user`'s devices and whether `conv` is muted for them.
pub(crate) fn targets(
    engine: &impl KvEngine,
    user: &UserId,
    conv: &ConvKey,
) -> Result<PushTargets, EngineError> {
    let mut key = Vec::new();
    mute_key(&mut key, user, conv);
    let muted_until = engine
        .get_with(Cf::Push, &key, |v| {
            access::<ArchivedMuteRecord>(Cf::Push, v).map(|r| r.until_ms.to_native())
        })?
        .transpose()?
        .unwrap_or(0);
    let mut prefix = Vec::new();
    keys::put_id(&mut prefix, user.as_str());
    prefix.push(TAG_TOKEN);
    let end = prefix_end(&prefix);
    let mut tokens = Vec::new();
    engine.scan(
        Cf::Push,
        crate::engine::ScanRange {
            start: &prefix,
            end: end.as_deref(),
        },
        crate::engine::Direction::Forward,
        MAX_TOKENS,
        &mut |k, v| {
            let mut r = KeyReader::new(k);
            r.id().map_err(|e| bad(Cf::Push, e))?;
            r.u8().map_err(|e| bad(Cf::Push, e))?;
            let device = r.device().map_err(|e| bad(Cf::Push, e))?;
            let rec = access::<ArchivedPushTokenRecord>(Cf::Push, v)?;
            tokens.push(PushToken {
                device,
                platform: rec.platform.as_str().to_owned(),
                token: rec.token.as_str().to_owned(),
            });
            Ok(())
        },
    )?;
    Ok(PushTargets {
        tokens,
        muted_until,
    })
}
