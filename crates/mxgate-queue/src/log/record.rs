//! The records of the log-structured spool (format 2), sans-IO: encoding, the fixed
//! header, checksums, and the spool's own versioned record types with their mapping to
//! and from the runtime types of other crates (`Envelope`, `DeliveryFailure`).
//!
//! A segment file starts with [`SEGMENT_MAGIC`] and holds records back to back; the
//! unwritten (preallocated) rest of a segment is zeros. One record:
//!
//! ```text
//! 0..4    "MXR2"                   record magic, the digit is the format version
//! 4       kind                     1 message, 2 state, 3 done, 4 deleted
//! 5..8    0
//! 8..12   meta_len   u32 LE        JSON of the record type below
//! 12..20  body_len   u64 LE        message records only, else 0
//! 20..24  body_crc   u32 LE        CRC-32 of the body
//! 24..28  head_crc   u32 LE        CRC-32 of bytes 0..24 and the metadata
//! 28..32  0
//! meta, then body
//! ```
//!
//! Recovery reads the header and the metadata and skips the body; the body's checksum
//! is checked when it is read back for a delivery.

use mxgate_smtp::{BodyType, Envelope, Notify, Recipient, Ret};
use serde::{Deserialize, Serialize};

use crate::spool::{BounceReason, RecipientStatus};
use crate::transport::{DeliveryFailure, FailureKind};
use mxgate_smtp::EnhancedStatus;

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 16] = b"MXGATE-SEGMENT2\n";
/// First bytes of every record.
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"MXR2";
/// Size of the fixed record header.
pub(crate) const HEADER_LEN: usize = 32;
/// Upper bound on a record's metadata: an envelope with 1000 long recipients fits.
pub(crate) const MAX_META_LEN: u32 = 16 * 1024 * 1024;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message: envelope and body (and, when copied forward, its recipients' states).
    Message = 1,
    /// Per-recipient state changes of one message.
    State = 2,
    /// Every recipient of the message is final: it leaves the queue.
    Done = 3,
    /// Deleted by the operator.
    Deleted = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Message,
            2 => Kind::State,
            3 => Kind::Done,
            4 => Kind::Deleted,
            _ => return None,
        })
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub meta_len: u32,
    pub body_len: u64,
    pub body_crc: u32,
    pub head_crc: u32,
}

impl Header {
    /// Bytes of the whole record (no overflow: [`parse_header`] refuses such lengths).
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.meta_len) + self.body_len
    }
}

/// What the first bytes at a record position are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderRead {
    /// All zeros: the unwritten end of the segment.
    End,
    Header(Header),
    /// Not a record header: garbage or a torn write.
    Bad,
}

/// Parses a fixed header (`buf` holds at least [`HEADER_LEN`] bytes; fewer is `Bad`
/// unless all zero).
pub(crate) fn parse_header(buf: &[u8]) -> HeaderRead {
    if buf.iter().take(HEADER_LEN).all(|&b| b == 0) {
        return HeaderRead::End;
    }
    if buf.len() < HEADER_LEN || &buf[0..4] != RECORD_MAGIC {
        return HeaderRead::Bad;
    }
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut b8 = [0u8; 8];
    b8.copy_from_slice(&buf[12..20]);
    let Some(kind) = Kind::from_u8(buf[4]) else {
        return HeaderRead::Bad;
    };
    let h = Header {
        kind,
        meta_len: u32_at(8),
        body_len: u64::from_le_bytes(b8),
        body_crc: u32_at(20),
        head_crc: u32_at(24),
    };
    // A body length that overflows the record length is not from any writer (and
    // would make the record seem to end before it starts).
    let too_long = h
        .body_len
        .checked_add(HEADER_LEN as u64 + u64::from(h.meta_len))
        .is_none();
    if h.meta_len > MAX_META_LEN || (kind != Kind::Message && h.body_len != 0) || too_long {
        return HeaderRead::Bad;
    }
    HeaderRead::Header(h)
}

/// Checks the header checksum over the first 24 header bytes and the metadata.
pub(crate) fn head_ok(header_bytes: &[u8], meta: &[u8], h: &Header) -> bool {
    let mut c = crc32fast::Hasher::new();
    c.update(&header_bytes[..24]);
    c.update(meta);
    c.finalize() == h.head_crc
}

/// CRC-32 of a body.
pub(crate) fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

/// Appends one record (header, `meta`, `body`) to `out`.
#[cfg(test)]
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, meta: &[u8], body: &[u8]) {
    encode_head(out, kind, meta, body);
    out.extend_from_slice(body);
}

/// Appends the header and `meta` of a record whose body is `body` (not appended: the
/// writer appends it, so the body is never copied twice).
pub(crate) fn encode_head(out: &mut Vec<u8>, kind: Kind, meta: &[u8], body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body_crc(body).to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&out[start..start + 24]);
    c.update(meta);
    out.extend_from_slice(&c.finalize().to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(meta);
}

// ---- The record types (format 2). Field names are short: they are in every record.

/// Metadata of a [`Kind::Message`] record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MessageRec {
    pub id: String,
    /// Unix ms of acceptance.
    pub at: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dsn: bool,
    pub env: EnvelopeRec,
    /// The recipients' states when the message was copied forward (compaction, import);
    /// empty for a new message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub st: Vec<StateRec>,
}

/// Metadata of a [`Kind::State`] record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StatesRec {
    pub id: String,
    pub st: Vec<StateRec>,
}

/// Metadata of [`Kind::Done`] and [`Kind::Deleted`] records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdRec {
    pub id: String,
}

/// The envelope as the spool stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EnvelopeRec {
    pub from: String,
    /// `7bit` or `8bitmime`.
    pub body: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub utf8: bool,
    /// `full` or `hdrs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    pub rcpt: Vec<RecipientRec>,
}

/// One recipient as the spool stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecipientRec {
    pub to: String,
    /// `NOTIFY=`: `never`, or letters `s`, `f`, `d` (success, failure, delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

/// One recipient's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StateRec {
    /// Recipient index.
    pub i: usize,
    /// `pending`, `delivered` or `bounced`.
    pub st: String,
    /// Attempts so far.
    pub a: u32,
    /// Next attempt, unix ms.
    #[serde(default)]
    pub n: u64,
    /// Time of the last attempt, unix ms (0: none).
    #[serde(default)]
    pub t: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<FailureRec>,
    /// `rejected`, `expired` or `operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The message's delay warning has been sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub w: bool,
}

/// A delivery failure as the spool stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FailureRec {
    /// The failure kind's stable tag (`FailureKind::as_str`); absent in records of
    /// spools that had no kinds (version 1 imports), read as `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// RFC 3463 status text, `x.y.z`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta: Option<String>,
    pub diag: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

// ---- Mapping between the runtime types and the records.

pub(crate) fn envelope_rec(e: &Envelope) -> EnvelopeRec {
    EnvelopeRec {
        from: e.sender.clone(),
        body: match e.body {
            BodyType::SevenBit => "7bit",
            BodyType::EightBitMime => "8bitmime",
        }
        .into(),
        utf8: e.smtputf8,
        ret: e.ret.map(|r| {
            match r {
                Ret::Full => "full",
                Ret::Hdrs => "hdrs",
            }
            .into()
        }),
        envid: e.envid.clone(),
        rcpt: e
            .recipients
            .iter()
            .map(|r| RecipientRec {
                to: r.address.clone(),
                notify: r.notify.map(|n| {
                    if n == Notify::NEVER {
                        "never".into()
                    } else {
                        let mut s = String::new();
                        for (on, c) in [(n.success, 's'), (n.failure, 'f'), (n.delay, 'd')] {
                            if on {
                                s.push(c);
                            }
                        }
                        s
                    }
                }),
                orcpt: r.orcpt.clone(),
            })
            .collect(),
    }
}

/// Why a record cannot be mapped back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RecordError(pub String);

pub(crate) fn envelope_from_rec(r: EnvelopeRec) -> Result<Envelope, RecordError> {
    let body = match r.body.as_str() {
        "7bit" => BodyType::SevenBit,
        "8bitmime" => BodyType::EightBitMime,
        other => return Err(RecordError(format!("unknown body type {other:?}"))),
    };
    let ret = match r.ret.as_deref() {
        None => None,
        Some("full") => Some(Ret::Full),
        Some("hdrs") => Some(Ret::Hdrs),
        Some(other) => return Err(RecordError(format!("unknown RET {other:?}"))),
    };
    let mut recipients = Vec::with_capacity(r.rcpt.len());
    for rc in r.rcpt {
        let notify = match rc.notify.as_deref() {
            None => None,
            Some("never") => Some(Notify::NEVER),
            Some(s) if !s.is_empty() && s.bytes().all(|b| matches!(b, b's' | b'f' | b'd')) => {
                Some(Notify {
                    success: s.contains('s'),
                    failure: s.contains('f'),
                    delay: s.contains('d'),
                })
            }
            Some(other) => return Err(RecordError(format!("bad NOTIFY {other:?}"))),
        };
        recipients.push(Recipient {
            address: rc.to,
            notify,
            orcpt: rc.orcpt,
        });
    }
    if recipients.is_empty() {
        return Err(RecordError("no recipients".into()));
    }
    Ok(Envelope {
        sender: r.from,
        body,
        smtputf8: r.utf8,
        ret,
        envid: r.envid,
        recipients,
    })
}

pub(crate) fn failure_rec(f: &DeliveryFailure) -> FailureRec {
    FailureRec {
        kind: Some(f.kind.as_str().to_string()),
        status: f.status.to_string(),
        mta: f.remote_mta.clone(),
        diag: f.diagnostic.clone(),
        remote: f.remote,
    }
}

/// Maps a stored failure back. An unknown kind tag reads as `FailureKind::Other`; a
/// status that does not parse (never written by mxgate) as `4.0.0`, so that a record
/// never makes its message unreadable.
pub(crate) fn failure_from_rec(r: FailureRec) -> DeliveryFailure {
    DeliveryFailure {
        kind: r
            .kind
            .as_deref()
            .map_or(FailureKind::Other, FailureKind::parse),
        status: r
            .status
            .parse()
            .unwrap_or_else(|_| EnhancedStatus::transient(0, 0)),
        remote_mta: r.mta,
        diagnostic: r.diag,
        remote: r.remote,
    }
}

pub(crate) fn status_str(s: RecipientStatus) -> &'static str {
    match s {
        RecipientStatus::Pending => "pending",
        RecipientStatus::Delivered => "delivered",
        RecipientStatus::Bounced => "bounced",
    }
}

pub(crate) fn status_from_str(s: &str) -> Result<RecipientStatus, RecordError> {
    Ok(match s {
        "pending" => RecipientStatus::Pending,
        "delivered" => RecipientStatus::Delivered,
        "bounced" => RecipientStatus::Bounced,
        other => return Err(RecordError(format!("unknown recipient state {other:?}"))),
    })
}

pub(crate) fn reason_str(r: BounceReason) -> &'static str {
    match r {
        BounceReason::Rejected => "rejected",
        BounceReason::Expired => "expired",
        BounceReason::Operator => "operator",
    }
}

pub(crate) fn reason_from_str(s: &str) -> Result<BounceReason, RecordError> {
    Ok(match s {
        "rejected" => BounceReason::Rejected,
        "expired" => BounceReason::Expired,
        "operator" => BounceReason::Operator,
        other => return Err(RecordError(format!("unknown bounce reason {other:?}"))),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let mut out = Vec::new();
        encode(&mut out, Kind::Message, b"{\"x\":1}", b"body");
        let HeaderRead::Header(h) = parse_header(&out) else {
            panic!("header")
        };
        assert_eq!(h.kind, Kind::Message);
        assert_eq!(h.record_len(), out.len() as u64);
        let meta = &out[HEADER_LEN..HEADER_LEN + 7];
        assert!(head_ok(&out, meta, &h));
        assert_eq!(h.body_crc, body_crc(b"body"));
        // Any flipped bit of header or metadata fails the checksum or the parse.
        for i in 0..HEADER_LEN + 7 {
            if (28..32).contains(&i) {
                continue; // reserved
            }
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            match parse_header(&bad) {
                HeaderRead::Header(h2) => {
                    assert!(
                        !head_ok(&bad, &bad[HEADER_LEN..HEADER_LEN + 7], &h2),
                        "bit in {i}"
                    )
                }
                HeaderRead::Bad | HeaderRead::End => {}
            }
        }
        assert_eq!(parse_header(&[0u8; 40]), HeaderRead::End);
        assert_eq!(parse_header(b"MXR2"), HeaderRead::Bad);
        assert_eq!(parse_header(&[0xffu8; 40]), HeaderRead::Bad);
        // A state record with a body length is not a header.
        let mut st = Vec::new();
        encode(&mut st, Kind::State, b"{}", b"");
        st[12] = 1;
        assert_eq!(parse_header(&st), HeaderRead::Bad);
    }

    #[test]
    fn envelope_maps_both_ways() {
        let env = Envelope {
            sender: "a@b.test".into(),
            body: BodyType::EightBitMime,
            smtputf8: true,
            ret: Some(Ret::Hdrs),
            envid: Some("E1".into()),
            recipients: vec![
                Recipient {
                    address: "x@y.test".into(),
                    notify: Some(Notify::NEVER),
                    orcpt: Some("rfc822;x@y.test".into()),
                },
                Recipient {
                    address: "z@y.test".into(),
                    notify: Some(Notify {
                        success: true,
                        failure: false,
                        delay: true,
                    }),
                    orcpt: None,
                },
                Recipient {
                    address: "w@y.test".into(),
                    notify: None,
                    orcpt: None,
                },
            ],
        };
        let rec = envelope_rec(&env);
        let json = serde_json::to_vec(&rec).unwrap();
        let back: EnvelopeRec = serde_json::from_slice(&json).unwrap();
        assert_eq!(envelope_from_rec(back).unwrap(), env);
        let mut bad = envelope_rec(&env);
        bad.body = "binary".into();
        assert!(envelope_from_rec(bad).is_err());
        let mut bad = envelope_rec(&env);
        bad.rcpt[0].notify = Some("sx".into());
        assert!(envelope_from_rec(bad).is_err());
        let mut bad = envelope_rec(&env);
        bad.rcpt.clear();
        assert!(envelope_from_rec(bad).is_err());
    }

    #[test]
    fn states_and_reasons_map_both_ways() {
        for s in [
            RecipientStatus::Pending,
            RecipientStatus::Delivered,
            RecipientStatus::Bounced,
        ] {
            assert_eq!(status_from_str(status_str(s)).unwrap(), s);
        }
        for r in [
            BounceReason::Rejected,
            BounceReason::Expired,
            BounceReason::Operator,
        ] {
            assert_eq!(reason_from_str(reason_str(r)).unwrap(), r);
        }
        assert!(status_from_str("gone").is_err());
        assert!(reason_from_str("").is_err());
    }
}
