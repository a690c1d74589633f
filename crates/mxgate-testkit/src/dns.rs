//! An authoritative DNS server that serves a whole private, DNSSEC-signed test world.
//!
//! [`DnsWorld`] listens on one loopback address (UDP and TCP on the same port) and answers
//! for a private root zone `.` signed with its own KSK/ZSK, plus the child zones a test
//! declares: [`Signing::Secure`] (signed, DS in the parent), [`Signing::Insecure`]
//! (delegated without DS, the absence proven by a signed NSEC in the parent) and several
//! bogus kinds (DS for a wrong key, expired or corrupted signatures). Negative answers
//! in signed zones carry NSEC proofs. Queries for chosen names can be dropped (the client
//! times out) or answered SERVFAIL/REFUSED, at build time or while the world runs.
//!
//! The root KSK is the trust anchor: [`DnsWorld::trust_anchor_path`] is a file in zone-file
//! syntax (`. 300 IN DNSKEY 257 3 13 ...`) that hickory's `TrustAnchors::from_file` and
//! unbound's `trust-anchor-file` both read. [`unbound::Unbound`] runs a private validating
//! resolver in front of the world for the AD-bit (`trust-ad`) mode.
//!
//! What it does NOT do: recursion, referrals to other servers, wildcards, NSEC3, zone
//! transfers, TSIG. Records are fixed once started; faults are not.

mod answer;
mod server;
pub mod unbound;
mod zone;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use hickory_proto::{
    dnssec::{rdata::DNSKEY, DnsSecError},
    rr::{LowerName, Name, RecordType},
    serialize::txt::ParseError,
    ProtoError,
};
use tokio::task::JoinHandle;

use answer::Zones;
use zone::{parse_records, Zone, ZoneKey, ZONE_TTL};

pub use hickory_proto::rr::RecordType as DnsRecordType;

/// How a zone of the world is signed, and how it is broken if it is bogus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed; the parent publishes a DS for its KSK: a validator says secure.
    Secure,
    /// Unsigned and delegated without DS, the absence proven by NSEC: a validator says insecure.
    Insecure,
    /// Signed, but the parent's DS names a key the zone does not have: bogus.
    Bogus,
    /// Signed with a correct DS, but every RRSIG expired ten days ago: bogus.
    BogusExpired,
    /// Signed with a correct DS, but every RRSIG except the DNSKEY one is corrupted: bogus.
    BogusSignature,
}

/// What the server does with a query that matches a fault rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No answer at all: the client times out.
    Drop,
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
}

/// Errors building or starting the world.
#[derive(Debug, thiserror::Error)]
pub enum DnsWorldError {
    /// A name given as text is not a valid domain name.
    #[error("invalid domain name {name:?}: {source}")]
    Name {
        name: String,
        #[source]
        source: ProtoError,
    },
    /// A record line is not valid zone-file syntax.
    #[error("invalid record line {line:?}: {source}")]
    Record {
        line: String,
        #[source]
        source: Box<ParseError>,
    },
    /// A zone was declared twice, or the root was declared.
    #[error("zone {0} declared twice (the root zone always exists)")]
    DuplicateZone(Name),
    /// Generating keys or signatures failed.
    #[error("DNSSEC: {0}")]
    Dnssec(#[from] DnsSecError),
    /// Encoding DNS data failed.
    #[error("DNS encoding: {0}")]
    Proto(#[from] ProtoError),
    /// Sockets or the trust anchor file.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One fault rule: a name (exact, case-insensitive) and optionally a record type.
#[derive(Clone, Debug)]
struct FaultRule {
    name: LowerName,
    record_type: Option<RecordType>,
    fault: Fault,
}

/// State shared between the world handle and its server tasks.
pub(crate) struct Shared {
    zones: Zones,
    faults: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<(Name, RecordType)>>,
    /// Answer every query as if its DO bit were clear (see
    /// [`DnsWorldBuilder::strip_dnssec`]).
    strip_dnssec: bool,
}

impl Shared {
    fn fault_for(&self, name: &LowerName, record_type: RecordType) -> Option<Fault> {
        let faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        faults
            .iter()
            .find(|rule| &rule.name == name && rule.record_type.is_none_or(|t| t == record_type))
            .map(|rule| rule.fault)
    }
}

/// Builder for a [`DnsWorld`]; nothing is parsed until [`DnsWorldBuilder::start`].
#[derive(Default, Debug)]
pub struct DnsWorldBuilder {
    zones: Vec<(String, Signing)>,
    records: Vec<String>,
    faults: Vec<(String, Option<RecordType>, Fault)>,
    strip_dnssec: bool,
}

impl DnsWorldBuilder {
    /// Hosts zone `apex` (e.g. `"secure.test."`), delegated from the closest hosted
    /// ancestor (the root unless another declared zone is closer).
    pub fn zone(mut self, apex: &str, signing: Signing) -> Self {
        self.zones.push((apex.to_owned(), signing));
        self
    }

    /// Adds records in zone-file syntax with absolute names, one or more lines, e.g.
    /// `"example.secure.test. 300 IN MX 10 mx1.example.secure.test."`. Each record goes to
    /// the deepest hosted zone containing its owner name.
    pub fn record(mut self, line: &str) -> Self {
        self.records.push(line.to_owned());
        self
    }

    /// Queries for exactly `name` (any type) get no answer.
    pub fn drop_queries_for(self, name: &str) -> Self {
        self.fault(name, None, Fault::Drop)
    }

    /// Queries for exactly `name` (any type) are answered SERVFAIL.
    pub fn servfail_for(self, name: &str) -> Self {
        self.fault(name, None, Fault::ServFail)
    }

    /// A fault for `name`, for one record type or (with `None`) all of them.
    pub fn fault(mut self, name: &str, record_type: Option<RecordType>, fault: Fault) -> Self {
        self.faults.push((name.to_owned(), record_type, fault));
        self
    }

    /// Serves unsigned copies: every answer leaves out RRSIG and NSEC records, as a
    /// resolver does that neither validates nor passes DNSSEC records on. A validator
    /// that trusts the world's anchor then finds every answer bogus.
    pub fn strip_dnssec(mut self) -> Self {
        self.strip_dnssec = true;
        self
    }

    /// Builds and signs all zones and starts serving on 127.0.0.1 (UDP and TCP, one port).
    pub async fn start(self) -> Result<DnsWorld, DnsWorldError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let mut zones = Zones {
            by_apex: Default::default(),
        };
        zones.by_apex.insert(
            LowerName::new(&Name::root()),
            Zone::new(Name::root(), Signing::Secure)?,
        );
        for (apex, signing) in &self.zones {
            let apex = parse_name(apex)?;
            let key = LowerName::new(&apex);
            if zones.by_apex.contains_key(&key) {
                return Err(DnsWorldError::DuplicateZone(apex));
            }
            zones.by_apex.insert(key, Zone::new(apex, *signing)?);
        }
        for line in &self.records {
            for record in parse_records(line)? {
                let owner = LowerName::new(&record.name);
                if let Some(apex) = zones.apex_for(&owner, record.record_type()) {
                    if let Some(zone) = zones.by_apex.get_mut(&apex) {
                        zone.insert(record);
                    }
                }
            }
        }
        let mut delegations = Vec::new();
        for (apex, child) in zones.by_apex.iter().filter(|(apex, _)| !apex.is_root()) {
            let owner = child.apex.clone();
            let ds = match (child.signing, &child.keys) {
                (Signing::Insecure, _) | (_, None) => None,
                (Signing::Bogus, _) => Some(ZoneKey::generate(true)?.ds(&owner)?),
                (_, Some(keys)) => Some(keys.ksk.ds(&owner)?),
            };
            if let Some(parent) = zones.apex_for(apex, RecordType::DS) {
                delegations.push((parent, owner, ds));
            }
        }
        for (parent, child, ds) in delegations {
            if let Some(zone) = zones.by_apex.get_mut(&parent) {
                zone.delegate(&child, ds)?;
            }
        }
        for zone in zones.by_apex.values_mut() {
            zone.seal(now)?;
        }
        let root_ksk = zones
            .by_apex
            .get(&LowerName::new(&Name::root()))
            .and_then(|root| root.keys.as_ref())
            .map(|keys| keys.ksk.dnskey().clone())
            .ok_or(DnsWorldError::Dnssec(DnsSecError::Message(
                "root zone has no key",
            )))?;

        let mut faults = Vec::new();
        for (name, record_type, fault) in &self.faults {
            faults.push(FaultRule {
                name: LowerName::new(&parse_name(name)?),
                record_type: *record_type,
                fault: *fault,
            });
        }

        let dir = tempfile::tempdir()?;
        let trust_anchor_path = dir.path().join("root.key");
        let trust_anchor = format!(". {ZONE_TTL} IN DNSKEY {root_ksk}\n");
        std::fs::write(&trust_anchor_path, &trust_anchor)?;

        let shared = Arc::new(Shared {
            zones,
            faults: Mutex::new(faults),
            log: Mutex::new(Vec::new()),
            strip_dnssec: self.strip_dnssec,
        });
        let (addr, tasks) = server::spawn(shared.clone()).await?;
        Ok(DnsWorld {
            addr,
            _dir: dir,
            trust_anchor_path,
            trust_anchor,
            root_ksk,
            shared,
            tasks,
        })
    }
}

/// A running DNS test world. Dropping it stops the server.
pub struct DnsWorld {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    trust_anchor_path: PathBuf,
    trust_anchor: String,
    root_ksk: DNSKEY,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsWorld {
    /// Starts describing a world; the signed root zone always exists.
    pub fn builder() -> DnsWorldBuilder {
        DnsWorldBuilder::default()
    }

    /// The address (UDP and TCP) every query of the world goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// File with the root KSK in zone-file syntax, for `dns.trust_anchor`.
    pub fn trust_anchor_path(&self) -> &Path {
        &self.trust_anchor_path
    }

    /// The trust anchor line itself: `. 300 IN DNSKEY 257 3 13 <base64>`.
    pub fn trust_anchor_text(&self) -> &str {
        &self.trust_anchor
    }

    /// The root KSK as DNSKEY record data (for building a `TrustAnchors` in code).
    pub fn root_ksk(&self) -> &DNSKEY {
        &self.root_ksk
    }

    /// Sets (or with `None` removes) the fault for `name` and `record_type` while running.
    pub fn set_fault(
        &self,
        name: &str,
        record_type: Option<RecordType>,
        fault: Option<Fault>,
    ) -> Result<(), DnsWorldError> {
        let name = LowerName::new(&parse_name(name)?);
        let mut faults = self
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        faults.retain(|rule| !(rule.name == name && rule.record_type == record_type));
        if let Some(fault) = fault {
            faults.push(FaultRule {
                name,
                record_type,
                fault,
            });
        }
        Ok(())
    }

    /// Every query received so far, in order (name as sent, type).
    pub fn queries(&self) -> Vec<(Name, RecordType)> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many queries for `name` (case-insensitive) of `record_type` arrived.
    pub fn query_count(&self, name: &str, record_type: RecordType) -> usize {
        let Ok(name) = parse_name(name) else {
            return 0;
        };
        let name = LowerName::new(&name);
        self.queries()
            .iter()
            .filter(|(n, t)| LowerName::new(n) == name && *t == record_type)
            .count()
    }
}

impl Drop for DnsWorld {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn parse_name(text: &str) -> Result<Name, DnsWorldError> {
    let mut name = Name::from_ascii(text).map_err(|source| DnsWorldError::Name {
        name: text.to_owned(),
        source,
    })?;
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
