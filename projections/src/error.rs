/// Everything a projection can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] eventlog::Error),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("projector {projector} cannot apply the event at position {position}: {reason}")]
    Apply {
        projector: String,
        position: u64,
        reason: String,
    },
    #[error("read model value is corrupt: {0}")]
    Corrupt(String),
    #[error("no projection is named {0}")]
    UnknownProjection(String),
    #[error("the projections have stopped")]
    Stopped,
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
