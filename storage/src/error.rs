//! Errors of the store, one enum per question a caller asks: could the database be opened, was
//! the request accepted, did the operation succeed.

use std::path::PathBuf;

use crate::engine::EngineError;

/// Opening a store failed; nothing is served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database was written by a newer version of tern than this one.
    #[error("database schema version {found} is newer than the supported version {supported}; upgrade tern")]
    NewerSchema {
        /// Version recorded in the database.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The database's files are damaged or missing.
    #[error("database is corrupted{}{}: {detail}",
        file.as_ref().map(|f| format!(" (file {})", f.display())).unwrap_or_default(),
        family.as_ref().map(|f| format!(" (family {f})")).unwrap_or_default())]
    Corrupted {
        /// The damaged file, when the backend names it.
        file: Option<PathBuf>,
        /// The damaged column family, when known.
        family: Option<String>,
        /// The backend's message.
        detail: String,
    },
    /// The database has column families this version does not know (and no newer schema
    /// version recorded to explain them).
    #[error("database has unknown column families {0:?}")]
    UnknownFamilies(Vec<String>),
    /// The database belongs to another node.
    #[error("database belongs to node {stored:?}, not {configured:?}")]
    NodeMismatch {
        /// Identity recorded in the database.
        stored: String,
        /// Identity this node was configured with.
        configured: String,
    },
    /// Reading or initialising the database failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The writer or reader threads could not be started.
    #[error("could not start storage thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The configuration is unusable.
    #[error("invalid storage configuration: {0}")]
    Config(&'static str),
}

/// A request was not accepted; nothing was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: shed load or retry later.
    #[error("storage queue is full")]
    Busy,
    /// The store has shut down.
    #[error("storage is shut down")]
    Closed,
}

/// An accepted operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The engine failed; for writes, nothing of the operation's batch was acknowledged.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The record the operation refers to does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may not do this (e.g. recall someone else's message).
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    /// The message was already recalled.
    #[error("message already recalled")]
    AlreadyRecalled,
    /// The message is older than the recall window.
    #[error("the message is too old to be recalled")]
    RecallExpired,
    /// The arguments are inconsistent.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The recipient blocks the sender (or the user acted toward blocks the one acting).
    #[error("blocked by the recipient")]
    Blocked,
    /// The recipient accepts messages from friends only, and the sender is not one.
    #[error("the recipient accepts messages from friends only")]
    NotFriend,
    /// A size or count limit would be exceeded (e.g. a group's member limit).
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// The store shut down before completing the operation.
    #[error("storage shut down before completing the operation")]
    Closed,
    /// Another node that must take part (a cluster) cannot be reached now; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}
