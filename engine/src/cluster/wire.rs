//! The node-to-node link protocol, sans-io: the handshake that proves both ends hold the
//! cluster secret, the framing with a per-frame authentication tag, and the messages (rkyv
//! archives: both ends are tern). The runtime that moves these bytes is `links`.
//!
//! # Handshake
//! The dialer sends [`Hello`] (its node id, a fresh 32-byte nonce); the acceptor answers
//! [`Challenge`] (its node id, its nonce and `HMAC(link key, "acceptor" ‖ transcript)`); the
//! dialer checks that tag and sends [`Proof`] (`HMAC(link key, "dialer" ‖ transcript)`), which the
//! acceptor checks. The transcript is both nonces and both node ids, so a proof cannot be
//! replayed into another connection. The link key is the cluster secret's key for purpose
//! `"tern cluster link v1"` (never the gossip key). Each direction then has its own session key
//! (`HMAC(link key, "d2a"/"a2d" ‖ transcript)`).
//!
//! # Frames
//! Every message is `u32 BE length ‖ payload ‖ tag`; before the handshake ends the tag is
//! absent, after it the tag is the first 16 bytes of `HMAC(session key, counter u64 BE ‖
//! payload)`, the counter counting the direction's frames from 0. A frame that fails its tag
//! (altered, replayed, reordered, injected) ends the connection.
//!
//! # Messages
//! After the handshake each frame carries one [`Batch`] of [`Item`]s: the dialer sends its
//! requests (forwarded SENDs, outbox writes, calls, notices), the acceptor its answers on the
//! same connection.

use hmac::{Hmac, Mac};
use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};
use sha2::Sha256;

/// The purpose string of the link key (see [`super::ClusterSecret::derive_key`]).
pub const LINK_KEY_PURPOSE: &str = "tern cluster link v1";

/// First bytes of a dialer's [`Hello`]: the protocol and its version.
pub const MAGIC: [u8; 4] = *b"tnl1";

/// Bytes of a frame's authentication tag.
pub const TAG_LEN: usize = 16;

/// Largest frame payload accepted (a batch is cut well below it).
pub const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Why a link frame or handshake was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u32),
    #[error("not a tern link (bad magic)")]
    BadMagic,
    #[error("the peer does not hold the cluster secret (handshake proof failed)")]
    BadProof,
    #[error("frame authentication failed")]
    BadTag,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Dialer → acceptor, first frame.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub magic: [u8; 4],
    pub node: String,
    pub nonce: [u8; 32],
}

/// Acceptor → dialer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub node: String,
    pub nonce: [u8; 32],
    pub proof: [u8; 32],
}

/// Dialer → acceptor, last frame of the handshake.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub proof: [u8; 32],
}

/// A one-to-one message forwarded to the node that assigns its conversation's sequences.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    pub sender: String,
    pub sender_device: String,
    pub recipient: String,
    pub msg_id: [u8; 16],
    pub kind: u8,
    pub body: Vec<u8>,
}

/// One user's half of a stored message (an outbox entry).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireWrite {
    /// 1: the sender's half, 2: the recipient's.
    pub side: u8,
    pub sender: String,
    pub sender_device: String,
    pub recipient: String,
    pub msg_id: [u8; 16],
    pub conv_seq: u64,
    pub time_ms: u64,
    pub kind: u8,
    pub body: Vec<u8>,
}

/// The answer to a forwarded message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireResult {
    /// Durable on the answering node.
    Stored {
        conv_seq: u64,
        recipient_inbox_seq: u64,
        time_ms: u64,
        duplicate: bool,
    },
    /// Refused with a wire error code (SPEC §8) and message.
    Refused { code: u16, message: String },
}

/// One request or answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Dialer → acceptor: store this message (the acceptor assigns its sequence).
    Forward { id: u64, msg: WireMessage },
    /// Dialer → acceptor: apply this outbox entry.
    Write { seq: u64, write: WireWrite },
    /// Acceptor → dialer: the answer to `Forward { id }`.
    Forwarded { id: u64, result: WireResult },
    /// Acceptor → dialer: these outbox entries are durable here.
    Acked { seqs: Vec<u64> },
    /// Acceptor → dialer: these outbox entries were not applied (this node does not serve
    /// their user, or its store is busy): retry later, re-resolving the destination.
    NotApplied { seqs: Vec<u64>, reason: String },
    /// Dialer → acceptor: a request made for a client (HISTORY, RECALL: `super::forward`).
    Call { id: u64, call: super::forward::Call },
    /// Acceptor → dialer: the answer to `Call { id }`.
    Reply {
        id: u64,
        reply: super::forward::Reply,
    },
    /// Dialer → acceptor: an encoded client frame for the devices of `user` there (RECEIPT,
    /// relation notices, TYPING); not answered, not stored.
    Notify { user: String, frame: Vec<u8> },
}

/// The payload of every frame after the handshake.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub items: Vec<Item>,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

/// Serializes a message into `out` (appending).
pub fn encode_into<T>(out: &mut Vec<u8>, value: &T) -> Result<(), WireError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    let bytes =
        rkyv::to_bytes::<rancor::Error>(value).map_err(|e| WireError::Encode(e.to_string()))?;
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Decodes a batch (validated; archived types are unaligned, so any slice will do).
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    rkyv::from_bytes::<Batch, rancor::Error>(payload).map_err(|e| WireError::Decode(e.to_string()))
}

/// Decodes a handshake message.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, WireError> {
    let h = rkyv::from_bytes::<Hello, rancor::Error>(payload)
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if h.magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    Ok(h)
}

/// Decodes a handshake message.
pub fn decode_challenge(payload: &[u8]) -> Result<Challenge, WireError> {
    rkyv::from_bytes::<Challenge, rancor::Error>(payload)
        .map_err(|e| WireError::Decode(e.to_string()))
}

/// Decodes a handshake message.
pub fn decode_proof(payload: &[u8]) -> Result<Proof, WireError> {
    rkyv::from_bytes::<Proof, rancor::Error>(payload).map_err(|e| WireError::Decode(e.to_string()))
}

/// What both ends know after Hello and Challenge: nonces and node ids, length-prefixed.
#[derive(Clone, Debug)]
pub struct Transcript(Vec<u8>);

impl Transcript {
    pub fn new(
        dialer: &str,
        dialer_nonce: &[u8; 32],
        acceptor: &str,
        acceptor_nonce: &[u8; 32],
    ) -> Transcript {
        let mut t = Vec::with_capacity(64 + dialer.len() + acceptor.len() + 4);
        t.extend_from_slice(dialer_nonce);
        t.extend_from_slice(acceptor_nonce);
        for id in [dialer, acceptor] {
            t.extend_from_slice(&(id.len() as u16).to_be_bytes());
            t.extend_from_slice(id.as_bytes());
        }
        Transcript(t)
    }

    fn tag(&self, key: &[u8; 32], role: &[u8]) -> [u8; 32] {
        let mut m = mac(key);
        m.update(role);
        m.update(&self.0);
        m.finalize().into_bytes().into()
    }

    /// The acceptor's proof.
    pub fn acceptor_proof(&self, link_key: &[u8; 32]) -> [u8; 32] {
        self.tag(link_key, b"acceptor")
    }

    /// The dialer's proof.
    pub fn dialer_proof(&self, link_key: &[u8; 32]) -> [u8; 32] {
        self.tag(link_key, b"dialer")
    }

    /// Checks a proof in constant time.
    pub fn verify(
        &self,
        link_key: &[u8; 32],
        role: Role,
        proof: &[u8; 32],
    ) -> Result<(), WireError> {
        let mut m = mac(link_key);
        m.update(match role {
            Role::Acceptor => b"acceptor".as_slice(),
            Role::Dialer => b"dialer".as_slice(),
        });
        m.update(&self.0);
        m.verify_slice(proof).map_err(|_| WireError::BadProof)
    }

    /// The sealer and opener of one end: frames it sends and frames it receives.
    pub fn session(&self, link_key: &[u8; 32], me: Role) -> (Sealer, Opener) {
        let d2a = self.tag(link_key, b"d2a");
        let a2d = self.tag(link_key, b"a2d");
        let (send, recv) = match me {
            Role::Dialer => (d2a, a2d),
            Role::Acceptor => (a2d, d2a),
        };
        (
            Sealer {
                key: mac(&send),
                counter: 0,
            },
            Opener {
                key: mac(&recv),
                counter: 0,
            },
        )
    }
}

/// Which end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

/// Frames what one end sends after the handshake.
#[derive(Clone)]
pub struct Sealer {
    key: HmacSha256,
    counter: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Appends the frame of `payload` (length, payload, tag) to `out`.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        let mut m = self.key.clone();
        m.update(&self.counter.to_be_bytes());
        m.update(payload);
        out.extend_from_slice(&m.finalize().into_bytes()[..TAG_LEN]);
        self.counter += 1;
        Ok(())
    }
}

/// Checks what one end receives after the handshake.
#[derive(Clone)]
pub struct Opener {
    key: HmacSha256,
    counter: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Checks the tag of the next frame's `payload`.
    pub fn open(&mut self, payload: &[u8], tag: &[u8]) -> Result<(), WireError> {
        let mut m = self.key.clone();
        m.update(&self.counter.to_be_bytes());
        m.update(payload);
        m.verify_truncated_left(tag)
            .map_err(|_| WireError::BadTag)?;
        self.counter += 1;
        Ok(())
    }
}

/// A handshake frame: length and payload, no tag.
pub fn plain_frame<T>(value: &T) -> Result<Vec<u8>, WireError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    let mut payload = Vec::new();
    encode_into(&mut payload, value)?;
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The length in a frame header, checked against the limit.
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header);
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::ClusterSecret;

    fn key(secret: &[u8]) -> [u8; 32] {
        ClusterSecret::new(secret.to_vec())
            .unwrap()
            .derive_key(LINK_KEY_PURPOSE)
    }

    #[test]
    fn handshake_proves_the_secret_and_frames_are_authenticated() {
        let k = key(b"0123456789abcdef0123");
        let t = Transcript::new("node-a", &[1; 32], "node-b", &[2; 32]);
        t.verify(&k, Role::Acceptor, &t.acceptor_proof(&k)).unwrap();
        t.verify(&k, Role::Dialer, &t.dialer_proof(&k)).unwrap();
        // A proof made for the other role, or with another secret, or for another
        // connection's nonces, fails.
        assert_eq!(
            t.verify(&k, Role::Dialer, &t.acceptor_proof(&k)),
            Err(WireError::BadProof)
        );
        let other = key(b"another-secret-0123456789");
        assert_eq!(
            t.verify(&k, Role::Acceptor, &t.acceptor_proof(&other)),
            Err(WireError::BadProof)
        );
        let t2 = Transcript::new("node-a", &[1; 32], "node-b", &[3; 32]);
        assert_eq!(
            t2.verify(&k, Role::Acceptor, &t.acceptor_proof(&k)),
            Err(WireError::BadProof)
        );
        // The gossip key is not the link key.
        let gossip = ClusterSecret::new(b"0123456789abcdef0123".to_vec())
            .unwrap()
            .derive_key("tern cluster gossip v1");
        assert_ne!(gossip, k);

        let (mut d_send, mut d_recv) = t.session(&k, Role::Dialer);
        let (mut a_send, mut a_recv) = t.session(&k, Role::Acceptor);
        let batch = Batch {
            items: vec![
                Item::Write {
                    seq: 7,
                    write: WireWrite {
                        side: 2,
                        sender: "alice".into(),
                        sender_device: "phone".into(),
                        recipient: "bob".into(),
                        msg_id: [9; 16],
                        conv_seq: 3,
                        time_ms: 1_700_000_000_000,
                        kind: 1,
                        body: b"hi".to_vec(),
                    },
                },
                Item::Acked { seqs: vec![1, 2] },
            ],
        };
        let mut payload = Vec::new();
        encode_into(&mut payload, &batch).unwrap();
        let mut frame = Vec::new();
        d_send.seal(&payload, &mut frame).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        let (body, tag) = frame[4..].split_at(len);
        a_recv.open(body, tag).unwrap();
        assert_eq!(decode_batch(body).unwrap(), batch);
        // Replaying the same frame fails (the counter moved on); so does an altered one.
        assert_eq!(a_recv.open(body, tag), Err(WireError::BadTag));
        let mut f2 = Vec::new();
        d_send.seal(&payload, &mut f2).unwrap();
        let mut altered = f2[4..4 + len].to_vec();
        altered[0] ^= 1;
        assert_eq!(
            a_recv.clone().open(&altered, &f2[4 + len..]),
            Err(WireError::BadTag)
        );
        a_recv.open(&f2[4..4 + len], &f2[4 + len..]).unwrap();
        // The other direction has its own key: a dialer frame does not open as an acceptor one.
        let mut back = Vec::new();
        a_send.seal(&payload, &mut back).unwrap();
        assert_eq!(
            d_recv.clone().open(&f2[4..4 + len], &f2[4 + len..]),
            Err(WireError::BadTag)
        );
        d_recv.open(&back[4..4 + len], &back[4 + len..]).unwrap();
    }

    #[test]
    fn handshake_messages_and_limits() {
        let hello = Hello {
            magic: MAGIC,
            node: "node-a".into(),
            nonce: [5; 32],
        };
        let f = plain_frame(&hello).unwrap();
        assert_eq!(decode_hello(&f[4..]).unwrap(), hello);
        let bad = Hello {
            magic: *b"xxxx",
            ..hello
        };
        assert_eq!(
            decode_hello(&plain_frame(&bad).unwrap()[4..]),
            Err(WireError::BadMagic)
        );
        assert!(decode_batch(b"garbage").is_err());
        assert_eq!(
            frame_len((MAX_FRAME + 1).to_be_bytes()),
            Err(WireError::TooLarge(MAX_FRAME + 1))
        );
    }
}
