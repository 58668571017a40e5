use uuid::Uuid;

use crate::record::StreamId;

/// Everything the event log can fail with.
///
/// Expected outcomes that a caller handles (a version conflict, a duplicate that does not
/// match) are kept apart from fatal ones (storage, corruption). The API maps them as:
/// `WrongExpectedVersion` → 409, `InvalidInput`/`DuplicateMismatch` → 422/409,
/// `Unavailable`/`Storage` → 503, `Corrupt` → 500, `Locked` → a CLI message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wrong expected version on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: String,
        actual: u64,
    },
    #[error("event {event_id} was already appended, but the other events of this append were not")]
    DuplicateMismatch { event_id: Uuid },
    #[error("invalid append: {0}")]
    InvalidInput(String),
    #[error("the data folder is held by another process (is the server running?)")]
    Locked,
    #[error("the on-disk format version {found} is not supported (this build reads {supported})")]
    UnsupportedFormat { found: u8, supported: u8 },
    #[error("this log was written with another payload key: the configured pepper is not the one this data folder was created with")]
    WrongKey,
    #[error("the log refuses writes after a storage failure; restart the process")]
    Unavailable,
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the event log writer has stopped")]
    Closed,
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
