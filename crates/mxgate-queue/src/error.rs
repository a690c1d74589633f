//! The queue's error type.

use std::io;
use std::path::PathBuf;

use crate::transport::QueueId;

/// Why the queue could not be opened or an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("spool directory {path}: {source}")]
    Spool { path: PathBuf, source: io::Error },
    #[error("no message {0} in the queue")]
    NotFound(QueueId),
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
}
