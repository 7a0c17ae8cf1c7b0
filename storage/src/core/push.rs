//! The writer's side of offline push settings ([`crate::push`]): a device's token and a user's
//! mute of a conversation are single rows that nothing in the writer reads back, so they are
//! put (or deleted) without a barrier and complete with their batch.

use crate::engine::{Cf, KvEngine};
use crate::error::OpError;
use crate::push::{mute_key, token_key, MuteRecord, PushSetting, PushTokenRecord};

use super::WriterCore;

impl<E: KvEngine> WriterCore<E> {
    /// Stores (or, for an empty token or an `until_ms` of 0, deletes) one push setting.
    pub(super) fn set_push(&mut self, setting: PushSetting) -> Result<(), OpError> {
        let mut key = Vec::new();
        match setting {
            PushSetting::Token {
                user,
                device,
                platform,
                token,
            } => {
                token_key(&mut key, &user, &device);
                if token.is_empty() {
                    self.batch.delete(Cf::Push, &key);
                    return Ok(());
                }
                let rec = PushTokenRecord {
                    platform,
                    token,
                    updated_ms: self.now,
                };
                self.put(Cf::Push, &key, &rec)
            }
            PushSetting::Mute {
                user,
                conv,
                until_ms,
            } => {
                mute_key(&mut key, &user, &conv);
                if until_ms == 0 {
                    self.batch.delete(Cf::Push, &key);
                    return Ok(());
                }
                let rec = MuteRecord {
                    until_ms,
                    updated_ms: self.now,
                };
                self.put(Cf::Push, &key, &rec)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use crate::ids::{ConvKey, DeviceId, UserId};
    use crate::mem::MemEngine;
    use crate::push::{PushSetting, PushToken};
    use crate::store::{ManualClock, Store, StoreConfig};

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn tokens_and_mutes_are_stored_replaced_and_removed() {
        let store = Store::open(
            MemEngine::new(),
            StoreConfig::default(),
            Arc::new(ManualClock::new(1_000)),
        )
        .unwrap();
        let (bob, alice) = (user("bob"), user("alice"));
        let conv = ConvKey::direct(&bob, &alice);
        let token = |device: &str, token: &str| PushSetting::Token {
            user: bob.clone(),
            device: DeviceId::new(device).unwrap(),
            platform: "fcm".into(),
            token: token.into(),
        };
        let t = store
            .push_targets(bob.clone(), conv.clone())
            .unwrap()
            .wait();
        assert_eq!(t.unwrap(), Default::default());
        for s in [
            token("phone", "t1"),
            token("tablet", "t2"),
            token("phone", "t3"),
        ] {
            store.set_push(s).unwrap().wait().unwrap();
        }
        store
            .set_push(PushSetting::Mute {
                user: bob.clone(),
                conv: conv.clone(),
                until_ms: 5_000,
            })
            .unwrap()
            .wait()
            .unwrap();
        let t = store
            .push_targets(bob.clone(), conv.clone())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(t.muted_until, 5_000);
        let tok = |device: &str, token: &str| PushToken {
            device: DeviceId::new(device).unwrap(),
            platform: "fcm".into(),
            token: token.into(),
        };
        assert_eq!(t.tokens, vec![tok("phone", "t3"), tok("tablet", "t2")]);
        // Another user sees none of it; an empty token and an `until` of 0 remove the rows.
        let other = store
            .push_targets(alice.clone(), conv.clone())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(other, Default::default());
        store.set_push(token("phone", "")).unwrap().wait().unwrap();
        store
            .set_push(PushSetting::Mute {
                user: bob.clone(),
                conv: conv.clone(),
                until_ms: 0,
            })
            .unwrap()
            .wait()
            .unwrap();
        let t = store.push_targets(bob, conv).unwrap().wait().unwrap();
        assert_eq!((t.muted_until, t.tokens), (0, vec![tok("tablet", "t2")]));
    }
}
