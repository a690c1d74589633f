//! (in progress)

mod common;
