//! Zone data of the DNS test world: records, keys, signatures and NSEC chains.
//!
//! Pure data and pure functions: a [`Zone`] is built from parsed records, delegations are
//! added to it, and [`Zone::seal`] signs every authoritative RRset (RFC 4035 §2.2) and
//! builds the NSEC chain (RFC 4035 §2.3) at a given clock time. Nothing here does I/O.
//!
//! What it does NOT do: wildcards, NSEC3, glue below delegation points (every delegated
//! zone of the world is hosted by the same server, so a parent only carries NS and DS at
//! the cut), zone transfers, dynamic updates.

use std::collections::{BTreeMap, BTreeSet};

use hickory_proto::{
    dnssec::{
        crypto::EcdsaSigningKey,
        rdata::sig::SigInput,
        rdata::{DNSSECRData, DNSKEY, DS, NSEC, RRSIG},
        Algorithm, DigestType, SigningKey, TBS,
    },
    rr::{DNSClass, LowerName, Name, RData, Record, RecordSet, RecordType, RrKey, SerialNumber},
    serialize::txt::Parser,
};

use super::{DnsWorldError, Signing};

/// TTL of the SOA, NS, DNSKEY and NSEC records the world generates itself.
pub(crate) const ZONE_TTL: u32 = 300;
/// Name server host named in every zone's NS and SOA records.
pub(crate) const NS_HOST: &str = "ns.world.";

/// One DNSSEC signing key (ECDSA P-256, algorithm 13) with its DNSKEY record data.
pub(crate) struct ZoneKey {
    key: EcdsaSigningKey,
    dnskey: DNSKEY,
    tag: u16,
}

impl ZoneKey {
    /// A fresh key; `secure_entry_point` sets the SEP flag (257 for a KSK, 256 for a ZSK).
    pub(crate) fn generate(secure_entry_point: bool) -> Result<Self, DnsWorldError> {
        let algorithm = Algorithm::ECDSAP256SHA256;
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(algorithm)?;
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, algorithm)?;
        let dnskey = DNSKEY::new(true, secure_entry_point, false, key.to_public_key()?);
        let tag = dnskey.calculate_key_tag()?;
        Ok(Self { key, dnskey, tag })
    }

    pub(crate) fn dnskey(&self) -> &DNSKEY {
        &self.dnskey
    }

    /// The DS record data for this key as the DNSKEY of `owner` (SHA-256 digest).
    pub(crate) fn ds(&self, owner: &Name) -> Result<DS, DnsWorldError> {
        let digest = self.dnskey.to_digest(owner, DigestType::SHA256)?;
        Ok(DS::new(
            self.tag,
            Algorithm::ECDSAP256SHA256,
            DigestType::SHA256,
            digest.as_ref().to_vec(),
        ))
    }

    /// An RRSIG over `rrset` valid from `inception` to `expiration` (seconds since the epoch).
    fn sign(
        &self,
        rrset: &RecordSet,
        signer: &Name,
        inception: u32,
        expiration: u32,
    ) -> Result<Record, DnsWorldError> {
        let input = SigInput {
            type_covered: rrset.record_type(),
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: rrset.name().num_labels(),
            original_ttl: rrset.ttl(),
            sig_expiration: SerialNumber::new(expiration),
            sig_inception: SerialNumber::new(inception),
            key_tag: self.tag,
            signer_name: signer.clone(),
        };
        let tbs = TBS::from_input(
            rrset.name(),
            DNSClass::IN,
            &input,
            rrset.records_without_rrsigs(),
        )?;
        let signature = self.key.sign(&tbs)?;
        Ok(Record::from_rdata(
            rrset.name().clone(),
            rrset.ttl(),
            RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
        ))
    }
}

/// The key pair of a signed zone: the KSK signs the DNSKEY RRset, the ZSK everything else.
pub(crate) struct ZoneKeys {
    pub(crate) ksk: ZoneKey,
    pub(crate) zsk: ZoneKey,
}

impl ZoneKeys {
    pub(crate) fn generate() -> Result<Self, DnsWorldError> {
        Ok(Self {
            ksk: ZoneKey::generate(true)?,
            zsk: ZoneKey::generate(false)?,
        })
    }
}

/// Parses zone-file lines (absolute names; `$TTL 300` is assumed unless a TTL is given).
pub(crate) fn parse_records(text: &str) -> Result<Vec<Record>, DnsWorldError> {
    let input = format!("$TTL {ZONE_TTL}\n{text}\n");
    let (_, rrsets) = Parser::new(input, None, Some(Name::root()))
        .parse()
        .map_err(|source| DnsWorldError::Record {
            line: text.to_owned(),
            source: Box::new(source),
        })?;
    Ok(rrsets
        .into_values()
        .flat_map(|rrset| rrset.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect())
}

/// One zone of the world with its records and, once sealed, its signatures and NSEC chain.
pub(crate) struct Zone {
    pub(crate) apex: Name,
    pub(crate) signing: Signing,
    pub(crate) keys: Option<ZoneKeys>,
    rrsets: BTreeMap<RrKey, RecordSet>,
    /// Child zone cuts inside this zone (owner names of non-apex NS RRsets).
    delegations: BTreeSet<LowerName>,
    /// Signed NSEC RRsets by owner name, in canonical order.
    nsec: BTreeMap<LowerName, RecordSet>,
}

impl Zone {
    /// A zone with its SOA and NS records; keys are generated unless `signing` is insecure.
    pub(crate) fn new(apex: Name, signing: Signing) -> Result<Self, DnsWorldError> {
        let keys = match signing {
            Signing::Insecure => None,
            _ => Some(ZoneKeys::generate()?),
        };
        let mut zone = Self {
            apex: apex.clone(),
            signing,
            keys,
            rrsets: BTreeMap::new(),
            delegations: BTreeSet::new(),
            nsec: BTreeMap::new(),
        };
        let soa = format!(
            "{apex} {ZONE_TTL} IN SOA {NS_HOST} hostmaster.world. 1 3600 600 86400 {ZONE_TTL}\n\
             {apex} {ZONE_TTL} IN NS {NS_HOST}"
        );
        for record in parse_records(&soa)? {
            zone.insert(record);
        }
        if apex.is_root() {
            for record in parse_records(&format!("{NS_HOST} {ZONE_TTL} IN A 127.0.0.1"))? {
                zone.insert(record);
            }
        }
        Ok(zone)
    }

    pub(crate) fn is_signed(&self) -> bool {
        self.keys.is_some()
    }

    /// Adds one record (its owner must be inside this zone and above any cut).
    pub(crate) fn insert(&mut self, record: Record) {
        let key = RrKey::new(LowerName::new(&record.name), record.record_type());
        let rrset = self
            .rrsets
            .entry(key)
            .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), 1));
        rrset.insert(record, 1);
    }

    /// Delegates `child` from this zone: NS always, DS when `ds` is given (RFC 4035 §2.4).
    pub(crate) fn delegate(&mut self, child: &Name, ds: Option<DS>) -> Result<(), DnsWorldError> {
        for record in parse_records(&format!("{child} {ZONE_TTL} IN NS {NS_HOST}"))? {
            self.insert(record);
        }
        if let Some(ds) = ds {
            let record =
                Record::from_rdata(child.clone(), ZONE_TTL, RData::DNSSEC(DNSSECRData::DS(ds)));
            self.insert(record);
        }
        self.delegations.insert(LowerName::new(child));
        Ok(())
    }

    /// Adds the DNSKEY RRset, builds the NSEC chain and signs the zone at `now`
    /// (seconds since the epoch). Unsigned zones are left as they are.
    pub(crate) fn seal(&mut self, now: u32) -> Result<(), DnsWorldError> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let mut dnskeys = RecordSet::new(self.apex.clone(), RecordType::DNSKEY, 1);
        for key in [&keys.ksk, &keys.zsk] {
            let data = RData::DNSSEC(DNSSECRData::DNSKEY(key.dnskey().clone()));
            dnskeys.insert(Record::from_rdata(self.apex.clone(), ZONE_TTL, data), 1);
        }
        self.rrsets.insert(
            RrKey::new(LowerName::new(&self.apex), RecordType::DNSKEY),
            dnskeys,
        );

        let (inception, expiration) = match self.signing {
            // Validity long expired: a validator must call every answer bogus.
            Signing::BogusExpired => (
                now.saturating_sub(20 * 86_400),
                now.saturating_sub(10 * 86_400),
            ),
            _ => (now.saturating_sub(3_600), now.saturating_add(30 * 86_400)),
        };
        let corrupt = matches!(self.signing, Signing::BogusSignature);

        // RFC 4035 §2.3: "Each owner name in the zone that has authoritative data or a
        // delegation point NS RRset MUST have an NSEC resource record."
        let mut owners: BTreeMap<LowerName, BTreeSet<u16>> = BTreeMap::new();
        for key in self.rrsets.keys() {
            owners
                .entry(key.name().clone())
                .or_default()
                .insert(u16::from(key.record_type));
        }
        let names: Vec<LowerName> = owners.keys().cloned().collect();
        let mut nsec = BTreeMap::new();
        for (index, (owner, types)) in owners.iter().enumerate() {
            let next = names.get(index + 1).unwrap_or(&names[0]);
            let types = types.iter().map(|t| RecordType::from(*t));
            // RFC 4034 §4.1.1: "The value of the Next Domain Name field in the last NSEC
            // record in the zone is the name of the zone apex".
            let data = NSEC::new_cover_self(Name::from(next.clone()), types);
            let mut rrset = RecordSet::new(Name::from(owner.clone()), RecordType::NSEC, 1);
            rrset.insert(
                Record::from_rdata(
                    Name::from(owner.clone()),
                    ZONE_TTL,
                    RData::DNSSEC(DNSSECRData::NSEC(data)),
                ),
                1,
            );
            nsec.insert(owner.clone(), rrset);
        }

        for (key, rrset) in self.rrsets.iter_mut() {
            // RFC 4035 §2.2: "The NS RRset that appears at the zone apex name MUST be signed,
            // but the NS RRsets that appear at delegation points [...] MUST NOT be signed."
            if key.record_type == RecordType::NS && self.delegations.contains(key.name()) {
                continue;
            }
            let signer = if key.record_type == RecordType::DNSKEY {
                &keys.ksk
            } else {
                &keys.zsk
            };
            let mut rrsig = signer.sign(rrset, &self.apex, inception, expiration)?;
            if corrupt && key.record_type != RecordType::DNSKEY {
                rrsig = corrupted(rrsig);
            }
            rrset.insert_rrsig(rrsig);
        }
        for rrset in nsec.values_mut() {
            let mut rrsig = keys.zsk.sign(rrset, &self.apex, inception, expiration)?;
            if corrupt {
                rrsig = corrupted(rrsig);
            }
            rrset.insert_rrsig(rrsig);
        }
        self.nsec = nsec;
        Ok(())
    }

    /// The RRset of `name` and `record_type`, if the zone has one.
    pub(crate) fn rrset(&self, name: &LowerName, record_type: RecordType) -> Option<&RecordSet> {
        self.rrsets.get(&RrKey::new(name.clone(), record_type))
    }

    /// The SOA RRset of the apex (always present).
    pub(crate) fn soa(&self) -> Option<&RecordSet> {
        self.rrset(&LowerName::new(&self.apex), RecordType::SOA)
    }

    /// All RRsets owned by `name`.
    pub(crate) fn rrsets_at<'a>(
        &'a self,
        name: &'a LowerName,
    ) -> impl Iterator<Item = &'a RecordSet> {
        self.rrsets
            .iter()
            .filter(move |(key, _)| key.name() == name)
            .map(|(_, rrset)| rrset)
    }

    /// True when `name` owns records or is an empty non-terminal above names that do.
    pub(crate) fn name_exists(&self, name: &LowerName) -> bool {
        self.rrsets.keys().any(|key| name.zone_of(key.name()))
    }

    /// The delegation point at or above `name` inside this zone, if any.
    pub(crate) fn cut_above(&self, name: &LowerName) -> Option<&LowerName> {
        self.delegations.iter().find(|cut| cut.zone_of(name))
    }

    /// The NSEC RRset owned by `name` exactly.
    pub(crate) fn nsec_at(&self, name: &LowerName) -> Option<&RecordSet> {
        self.nsec.get(name)
    }

    /// The NSEC RRset whose owner is the last name in canonical order before `name`
    /// (RFC 4034 §6.1): it covers `name` when `name` does not exist.
    pub(crate) fn nsec_covering(&self, name: &LowerName) -> Option<&RecordSet> {
        self.nsec
            .range(..name.clone())
            .next_back()
            .or_else(|| self.nsec.iter().next_back())
            .map(|(_, rrset)| rrset)
    }
}

/// The same RRSIG with one bit of its signature flipped.
fn corrupted(record: Record) -> Record {
    let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &record.data else {
        return record;
    };
    let mut signature = rrsig.sig().to_vec();
    if let Some(byte) = signature.get_mut(0) {
        *byte ^= 0x01;
    }
    let input = rrsig.input().clone();
    Record::from_rdata(
        record.name.clone(),
        record.ttl,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
    )
}
