/// Everything a worker can fail with. Workers log and retry most of these; they surface to
/// callers only from `start` and from the sealing helpers the API uses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] eventlog::Error),
    #[error(transparent)]
    Domain(#[from] domain::DomainError),
    #[error("a sealed secret could not be opened (wrong master key or altered ciphertext)")]
    Unseal,
    #[error("crypto failure: {0}")]
    Crypto(String),
    #[error("building the message failed: {0}")]
    Mime(String),
    #[error("I/O failure: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP failure: {0}")]
    Http(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
