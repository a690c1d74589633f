//! The log-structured spool (format 2): segment files of records, written by one
//! thread with group commit (`writer`), read at startup (`scan`), in the format and
//! with the record types of `record`.

pub(crate) mod record;
pub(crate) mod scan;
pub(crate) mod writer;
