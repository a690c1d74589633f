//! The two boundaries of the queue: what the listener calls to store a message, and
//! what the scheduler calls to deliver one.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use mxgate_smtp::{EnhancedStatus, Envelope};
use serde::{Deserialize, Serialize};

/// A queue id: short, unique, safe as a file name (upper-case hex, like Postfix's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub String);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message could not be stored. The listener answers `452 4.3.1` for
/// [`StoreError::NoSpace`] and `451 4.3.0` for the rest (docs/operations.md), never `250`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool full: {0}")]
    NoSpace(std::io::Error),
    #[error("spool I/O error: {0}")]
    Io(std::io::Error),
    #[error("queue is shutting down")]
    ShuttingDown,
}

/// Where the listener puts accepted messages.
pub trait MessageStore: Send + Sync + 'static {
    /// A fresh id for a message about to be stored, so that the listener can name it in
    /// the `Received:` header (RFC 5321 §4.4 `id`) before handing the message over. An
    /// id that is never stored is simply unused.
    fn reserve_id(&self) -> QueueId;

    /// Stores `message` (exactly the bytes to relay, `Received:` already prepended, not
    /// dot-stuffed, CRLF line ends) with `envelope` under `id` (from
    /// [`MessageStore::reserve_id`]). Resolves only after both are on stable storage.
    fn store_as(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Bytes,
    ) -> impl Future<Output = Result<QueueId, StoreError>> + Send;

    /// [`MessageStore::store_as`] under a fresh id.
    fn store(
        &self,
        envelope: Envelope,
        message: Bytes,
    ) -> impl Future<Output = Result<QueueId, StoreError>> + Send {
        let id = self.reserve_id();
        self.store_as(id, envelope, message)
    }
}

/// A shared store is a store (`Arc<Queue>` is what the binary hands the listener).
impl<S: MessageStore> MessageStore for Arc<S> {
    fn reserve_id(&self) -> QueueId {
        (**self).reserve_id()
    }

    fn store_as(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Bytes,
    ) -> impl Future<Output = Result<QueueId, StoreError>> + Send {
        (**self).store_as(id, envelope, message)
    }
}

/// One delivery attempt for the recipients of one message in one domain.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: QueueId,
    pub envelope: Arc<Envelope>,
    /// The destination domain, lower-case; every recipient below is in it.
    pub domain: String,
    /// Indices into `envelope.recipients`.
    pub recipients: Vec<usize>,
    /// The message as stored (not dot-stuffed).
    pub message: Bytes,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `host:port` to deliver to instead of the domain's MX hosts (`queue.bounce_relay`
    /// for the queue's own DSNs); `None` = MX resolution and the domain's TLS policy.
    pub relay: Option<String>,
}

/// The outcome of one recipient of a [`DeliveryJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// Index into `envelope.recipients`.
    pub index: usize,
    pub outcome: Outcome,
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The destination accepted it (`250` after DATA).
    Delivered {
        /// `host[addr]:port`
        relay: String,
        /// The server's final reply.
        reply: String,
    },
    /// Try again later (`4xx`, network, DNS temp-fail, TLS policy not met).
    Deferred(DeliveryFailure),
    /// Give up now and bounce (`5xx`, null MX, NXDOMAIN, `on_tls_failure = "bounce"`).
    Failed(DeliveryFailure),
}

/// Why a recipient was not delivered: what goes into logs and the DSN.
///
/// Delivery decides deferred-or-failed (the [`Outcome`] variant) and bounds
/// `diagnostic` before it crosses this boundary; the queue stores and quotes it as given
/// and never re-decides from the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailure {
    /// What went wrong, as a stable tag (spool files written before kinds existed read
    /// as [`FailureKind::Other`]).
    #[serde(default)]
    pub kind: FailureKind,
    /// RFC 3463 enhanced status code, e.g. `4.7.5` or `5.1.1`.
    pub status: EnhancedStatus,
    /// The remote MTA that answered, if one did (`mx.example.com`).
    pub remote_mta: Option<String>,
    /// The server's reply (`550 5.1.1 no such user`), or a local reason
    /// (`dane: no TLSA match for mx1.example.com (3 1 1)`). At most
    /// [`MAX_DIAGNOSTIC`] bytes, control characters escaped.
    pub diagnostic: String,
    /// `true` when the diagnostic comes from the remote server (`smtp;` in the DSN),
    /// `false` for a local reason (`x-mxgate;`).
    pub remote: bool,
}

/// The longest `diagnostic` delivery hands over (RFC 5321 §4.5.3.1.5: a reply line
/// is at most 512 octets).
pub const MAX_DIAGNOSTIC: usize = 512;

impl DeliveryFailure {
    /// A failure with a local reason (`x-mxgate;` in the DSN).
    pub fn local(kind: FailureKind, status: EnhancedStatus, diagnostic: impl Into<String>) -> Self {
        DeliveryFailure {
            kind,
            status,
            remote_mta: None,
            diagnostic: diagnostic.into(),
            remote: false,
        }
    }

    /// RFC 3463 class 5.
    pub fn is_permanent(&self) -> bool {
        self.status.is_permanent()
    }
}

/// What kind of failure a [`DeliveryFailure`] is: a field-less vocabulary shared by
/// logs, metrics, the spool (as [`FailureKind::as_str`]) and TLS reporting
/// ([`FailureKind::tls_rpt_result`], RFC 8460 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailureKind {
    // --- the destination's DNS and policy (before any connection) ---
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx,
    /// NXDOMAIN for the recipient domain.
    NoSuchDomain,
    /// A DNS lookup failed temporarily (SERVFAIL, timeout).
    DnsTemporary,
    /// DNSSEC validation failed (bogus answer) for an MX, address or TLSA lookup.
    DnssecInvalid,
    /// The TLSA records of an MX cannot be used (all unusable, or the lookup failed).
    TlsaInvalid,
    /// The level requires DANE but the destination has no usable DANE records.
    DaneRequired,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetch,
    /// The MTA-STS policy text is invalid.
    StsPolicyInvalid,
    /// The MTA-STS policy host's HTTPS certificate did not validate.
    StsWebpkiInvalid,
    /// The MX host is not listed in the destination's MTA-STS policy.
    StsMxNotListed,
    /// The plan has no MX host that could be dialled.
    NoMxHost,
    // --- the connection ---
    /// TCP connect refused or unreachable.
    ConnectFailed,
    /// TCP connect timed out.
    ConnectTimeout,
    /// The server did not answer within the command timeout.
    Timeout,
    /// The connection was closed or broke before the end of the message.
    ConnectionLost,
    /// The connection was lost or timed out after the final dot: the message may have
    /// been delivered (RFC 1047), so this MX is not sent it again in this attempt.
    LostAfterData,
    /// The server spoke something other than SMTP (malformed or oversized reply).
    ProtocolError,
    /// The greeting was not `220` (RFC 5321 §3.1).
    GreetingRejected,
    /// EHLO and, where allowed, HELO were refused.
    HeloRejected,
    // --- TLS (RFC 3207) ---
    /// The server does not advertise STARTTLS but TLS is required.
    StarttlsNotOffered,
    /// The server answered STARTTLS with something other than `220`.
    StarttlsRefused,
    /// The server sent bytes after `220 Ready to start TLS` (response injection).
    ResponseInjection,
    /// The TLS handshake failed (alert, protocol error, timeout).
    HandshakeFailed,
    /// The server certificate is not valid for the MX host name.
    CertificateHostMismatch,
    /// The server certificate has expired or is not yet valid.
    CertificateExpired,
    /// The server certificate does not chain to a trusted root (or is self-signed).
    CertificateNotTrusted,
    /// The server certificate is invalid for another reason.
    CertificateInvalid,
    /// No TLSA record matches the server's certificate chain (RFC 7672 §3).
    DaneMismatch,
    // --- the mail transaction ---
    /// The server refused the sender, a recipient or the message with a reply.
    Rejected,
    /// The server deferred with a transient reply.
    RemoteTemporary,
    /// The message is bigger than the server's SIZE (RFC 1870).
    MessageTooBig,
    /// The message needs SMTPUTF8 and the server does not offer it (RFC 6531 §3.5).
    Smtputf8NotSupported,
    /// An address cannot be written as an SMTP command.
    BadAddress,
    // --- local ---
    /// A local problem (spool read error, shutting down, no outcome reported).
    Local,
    /// The queue gave up after `queue.max_age`.
    Expired,
    /// The operator bounced the message.
    OperatorBounce,
    /// Anything else, including tags this version does not know.
    #[default]
    Other,
}

impl FailureKind {
    /// Every kind, for tables and exhaustive tests.
    pub const ALL: [FailureKind; 37] = [
        FailureKind::NullMx,
        FailureKind::NoSuchDomain,
        FailureKind::DnsTemporary,
        FailureKind::DnssecInvalid,
        FailureKind::TlsaInvalid,
        FailureKind::DaneRequired,
        FailureKind::StsPolicyFetch,
        FailureKind::StsPolicyInvalid,
        FailureKind::StsWebpkiInvalid,
        FailureKind::StsMxNotListed,
        FailureKind::NoMxHost,
        FailureKind::ConnectFailed,
        FailureKind::ConnectTimeout,
        FailureKind::Timeout,
        FailureKind::ConnectionLost,
        FailureKind::LostAfterData,
        FailureKind::ProtocolError,
        FailureKind::GreetingRejected,
        FailureKind::HeloRejected,
        FailureKind::StarttlsNotOffered,
        FailureKind::StarttlsRefused,
        FailureKind::ResponseInjection,
        FailureKind::HandshakeFailed,
        FailureKind::CertificateHostMismatch,
        FailureKind::CertificateExpired,
        FailureKind::CertificateNotTrusted,
        FailureKind::CertificateInvalid,
        FailureKind::DaneMismatch,
        FailureKind::Rejected,
        FailureKind::RemoteTemporary,
        FailureKind::MessageTooBig,
        FailureKind::Smtputf8NotSupported,
        FailureKind::BadAddress,
        FailureKind::Local,
        FailureKind::Expired,
        FailureKind::OperatorBounce,
        FailureKind::Other,
    ];

    /// The stable tag (spool records, metric labels, JSON): lower-case, `-`-separated.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NullMx => "null-mx",
            FailureKind::NoSuchDomain => "no-such-domain",
            FailureKind::DnsTemporary => "dns-temporary",
            FailureKind::DnssecInvalid => "dnssec-invalid",
            FailureKind::TlsaInvalid => "tlsa-invalid",
            FailureKind::DaneRequired => "dane-required",
            FailureKind::StsPolicyFetch => "sts-policy-fetch-error",
            FailureKind::StsPolicyInvalid => "sts-policy-invalid",
            FailureKind::StsWebpkiInvalid => "sts-webpki-invalid",
            FailureKind::StsMxNotListed => "sts-mx-not-listed",
            FailureKind::NoMxHost => "no-mx-host",
            FailureKind::ConnectFailed => "connect-failed",
            FailureKind::ConnectTimeout => "connect-timeout",
            FailureKind::Timeout => "timeout",
            FailureKind::ConnectionLost => "connection-lost",
            FailureKind::LostAfterData => "lost-after-data",
            FailureKind::ProtocolError => "protocol-error",
            FailureKind::GreetingRejected => "greeting-rejected",
            FailureKind::HeloRejected => "helo-rejected",
            FailureKind::StarttlsNotOffered => "starttls-not-offered",
            FailureKind::StarttlsRefused => "starttls-refused",
            FailureKind::ResponseInjection => "response-injection",
            FailureKind::HandshakeFailed => "handshake-failed",
            FailureKind::CertificateHostMismatch => "certificate-host-mismatch",
            FailureKind::CertificateExpired => "certificate-expired",
            FailureKind::CertificateNotTrusted => "certificate-not-trusted",
            FailureKind::CertificateInvalid => "certificate-invalid",
            FailureKind::DaneMismatch => "dane-mismatch",
            FailureKind::Rejected => "rejected",
            FailureKind::RemoteTemporary => "remote-temporary",
            FailureKind::MessageTooBig => "message-too-big",
            FailureKind::Smtputf8NotSupported => "smtputf8-not-supported",
            FailureKind::BadAddress => "bad-address",
            FailureKind::Local => "local",
            FailureKind::Expired => "expired",
            FailureKind::OperatorBounce => "operator-bounce",
            FailureKind::Other => "other",
        }
    }

    /// The kind of a tag; an unknown tag (a newer or older mxgate) is
    /// [`FailureKind::Other`], so a spool record never fails to load.
    pub fn parse(tag: &str) -> FailureKind {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == tag)
            .unwrap_or(FailureKind::Other)
    }

    /// The RFC 8460 §4.3 result type for a TLS or TLS-policy failure; `None` for a
    /// failure that says nothing about TLS (a refused recipient, a lost connection).
    pub fn tls_rpt_result(self) -> Option<&'static str> {
        Some(match self {
            // §4.3.1 negotiation failures.
            FailureKind::StarttlsNotOffered | FailureKind::StarttlsRefused => {
                "starttls-not-supported"
            }
            FailureKind::CertificateHostMismatch => "certificate-host-mismatch",
            FailureKind::CertificateExpired => "certificate-expired",
            FailureKind::CertificateNotTrusted => "certificate-not-trusted",
            FailureKind::CertificateInvalid
            | FailureKind::HandshakeFailed
            | FailureKind::ResponseInjection
            | FailureKind::StsMxNotListed => "validation-failure",
            // §4.3.2.1 DANE policy failures: "None of the records in the RRset were
            // found to be valid" covers a chain that matches no TLSA record.
            FailureKind::TlsaInvalid | FailureKind::DaneMismatch => "tlsa-invalid",
            FailureKind::DnssecInvalid => "dnssec-invalid",
            FailureKind::DaneRequired => "dane-required",
            // §4.3.2.2 MTA-STS policy failures.
            FailureKind::StsPolicyFetch => "sts-policy-fetch-error",
            FailureKind::StsPolicyInvalid => "sts-policy-invalid",
            FailureKind::StsWebpkiInvalid => "sts-webpki-invalid",
            _ => return None,
        })
    }

    /// A failure of the TLS level (counted as a TLS policy failure, subject to
    /// `on_tls_failure`).
    pub fn is_tls(self) -> bool {
        self.tls_rpt_result().is_some()
    }

    /// A sentence an operator understands, without the specifics of the diagnostic.
    pub fn sentence(self) -> &'static str {
        match self {
            FailureKind::NullMx => "the domain accepts no mail (null MX)",
            FailureKind::NoSuchDomain => "the domain does not exist",
            FailureKind::DnsTemporary => "a DNS lookup failed temporarily",
            FailureKind::DnssecInvalid => "DNSSEC validation failed",
            FailureKind::TlsaInvalid => "the TLSA records cannot be used",
            FailureKind::DaneRequired => "DANE is required but the destination has no usable TLSA records",
            FailureKind::StsPolicyFetch => "the MTA-STS policy could not be fetched",
            FailureKind::StsPolicyInvalid => "the MTA-STS policy is invalid",
            FailureKind::StsWebpkiInvalid => "the MTA-STS policy host's certificate is not valid",
            FailureKind::StsMxNotListed => "the MX host is not listed in the MTA-STS policy",
            FailureKind::NoMxHost => "no MX host could be dialled",
            FailureKind::ConnectFailed => "the connection was refused or the host is unreachable",
            FailureKind::ConnectTimeout => "the connection timed out",
            FailureKind::Timeout => "the server did not answer in time",
            FailureKind::ConnectionLost => "the connection was lost",
            FailureKind::LostAfterData => "the connection was lost after the message was sent; it may be delivered more than once",
            FailureKind::ProtocolError => "the server does not speak SMTP correctly",
            FailureKind::GreetingRejected => "the server refused the connection in its greeting",
            FailureKind::HeloRejected => "the server refused our EHLO/HELO",
            FailureKind::StarttlsNotOffered => "the server does not offer STARTTLS",
            FailureKind::StarttlsRefused => "the server refused STARTTLS",
            FailureKind::ResponseInjection => "the server sent data after agreeing to STARTTLS (response injection)",
            FailureKind::HandshakeFailed => "the TLS handshake failed",
            FailureKind::CertificateHostMismatch => "the certificate does not name the MX host",
            FailureKind::CertificateExpired => "the certificate has expired or is not yet valid",
            FailureKind::CertificateNotTrusted => "the certificate is not issued by a trusted authority",
            FailureKind::CertificateInvalid => "the certificate is not valid",
            FailureKind::DaneMismatch => "no TLSA record matches the server's certificate",
            FailureKind::Rejected => "the server rejected the mail",
            FailureKind::RemoteTemporary => "the server deferred the mail",
            FailureKind::MessageTooBig => "the message is too big for the server",
            FailureKind::Smtputf8NotSupported => "the message needs SMTPUTF8 and the server does not support it",
            FailureKind::BadAddress => "an address cannot be sent over SMTP",
            FailureKind::Local => "a local error",
            FailureKind::Expired => "the message was too long in the queue",
            FailureKind::OperatorBounce => "bounced by the operator",
            FailureKind::Other => "delivery failed",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tag = String::deserialize(d)?;
        Ok(FailureKind::parse(&tag))
    }
}

/// Delivers one [`DeliveryJob`]; implemented by `mxgate-delivery`.
pub trait Transport: Send + Sync + 'static {
    /// Returns exactly one outcome for each index in `job.recipients`.
    fn deliver(&self, job: DeliveryJob) -> impl Future<Output = Vec<RecipientOutcome>> + Send;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kind_tags_round_trip_and_unknown_is_other() {
        let mut seen = std::collections::HashSet::new();
        for k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), k);
            seen.insert(k.as_str());
            assert!(!k.sentence().is_empty());
        }
        assert_eq!(FailureKind::parse("from-the-future"), FailureKind::Other);
        assert_eq!(FailureKind::parse(""), FailureKind::Other);
        // `ALL` lists every kind (the match in `as_str` is exhaustive).
        assert_eq!(seen.len(), 37);
    }

    #[test]
    fn tls_rpt_results_are_rfc_8460_types() {
        let allowed = [
            "starttls-not-supported",
            "certificate-host-mismatch",
            "certificate-expired",
            "certificate-not-trusted",
            "validation-failure",
            "tlsa-invalid",
            "dnssec-invalid",
            "dane-required",
            "sts-policy-fetch-error",
            "sts-policy-invalid",
            "sts-webpki-invalid",
        ];
        for k in FailureKind::ALL {
            if let Some(r) = k.tls_rpt_result() {
                assert!(allowed.contains(&r), "{k:?} -> {r}");
            }
        }
        assert_eq!(FailureKind::Rejected.tls_rpt_result(), None);
        assert_eq!(FailureKind::ConnectionLost.tls_rpt_result(), None);
        assert_eq!(
            FailureKind::StarttlsRefused.tls_rpt_result(),
            Some("starttls-not-supported")
        );
    }

    #[test]
    fn failure_serialises_kind_as_tag_and_old_records_load() {
        let f = DeliveryFailure::local(
            FailureKind::CertificateExpired,
            "4.7.5".parse().unwrap(),
            "x",
        );
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"kind\":\"certificate-expired\""), "{json}");
        assert!(json.contains("\"status\":\"4.7.5\""), "{json}");
        let old = r#"{"status":"5.1.1","remote_mta":null,"diagnostic":"550","remote":true}"#;
        let back: DeliveryFailure = serde_json::from_str(old).unwrap();
        assert_eq!(back.kind, FailureKind::Other);
        assert!(back.is_permanent());
    }
}
