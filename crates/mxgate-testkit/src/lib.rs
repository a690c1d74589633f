//! The test world of mxgate: real servers speaking real protocols on loopback.
//!
//! Certificates (a private CA and leaf certificates with chosen names and dates), SMTP
//! receivers with STARTTLS, an authoritative DNS server with really signed zones, an
//! HTTPS server for MTA-STS policies, a man-in-the-middle SMTP proxy, a private
//! Postfix instance and a private redis-server. Nothing here is a stub: every piece listens on a socket.
//!
//! Not for production use; never linked into the `mxgate` binary.

// The fixtures read the real clock on purpose: certificate validity around now, unique
// names, readiness deadlines of real child processes. The product crates read time only
// through their `clock` modules (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod certs;
pub mod dns;
pub mod https;
pub mod mitm;
pub mod postfix;
pub mod redis;
pub mod smtp;
