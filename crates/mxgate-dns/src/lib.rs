//! DNS lookups with their DNSSEC status (RFC 4033–4035).
