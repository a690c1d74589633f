//! Answering one DNS query from the zones of the world (sans-IO).
//!
//! [`Zones::answer`] takes a parsed request and returns the authoritative response: the
//! RRset with its RRSIGs, a CNAME chain, or a negative answer with the SOA and the NSEC
//! records that prove it (RFC 4035 §3.1.3). DS queries for a zone apex are answered from
//! the parent zone (RFC 4035 §3.1.4.1), which a plain "deepest zone wins" catalog gets wrong.
//!
//! What it does NOT do: referrals (every delegated zone is hosted here), wildcards,
//! recursion, fault injection (the server layer drops or fails queries before this).

use std::collections::BTreeMap;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{LowerName, Name, RData, Record, RecordSet, RecordType},
};

use super::zone::Zone;

/// Longest CNAME chain followed inside the world.
const MAX_CNAME_HOPS: usize = 8;
/// EDNS payload size the server advertises.
const EDNS_PAYLOAD: u16 = 1232;

/// All zones of the world, by apex.
pub(crate) struct Zones {
    pub(crate) by_apex: BTreeMap<LowerName, Zone>,
}

impl Zones {
    /// The zone that is authoritative for `name`; for DS at a zone apex, the parent zone.
    pub(crate) fn zone_for(&self, name: &LowerName, record_type: RecordType) -> Option<&Zone> {
        self.apex_for(name, record_type)
            .and_then(|apex| self.by_apex.get(&apex))
    }

    /// The apex of the zone [`Zones::zone_for`] picks.
    pub(crate) fn apex_for(&self, name: &LowerName, record_type: RecordType) -> Option<LowerName> {
        let mut candidate = name.clone();
        loop {
            // RFC 4035 §3.1.4.1: "the DS resource record type is unusual in that it
            // appears only on the parental side of a zone cut."
            let ds_at_cut = record_type == RecordType::DS && &candidate == name && !name.is_root();
            if self.by_apex.contains_key(&candidate) && !ds_at_cut {
                return Some(candidate);
            }
            if candidate.is_root() {
                return None;
            }
            candidate = candidate.base_name();
        }
    }

    /// The response to `request`, or `None` when the request is not a query.
    pub(crate) fn answer(&self, request: &Message) -> Option<Message> {
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        let dnssec_ok = request
            .edns
            .as_ref()
            .is_some_and(|edns| edns.flags().dnssec_ok);
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            edns.set_dnssec_ok(dnssec_ok);
            response.set_edns(edns);
        }
        let Some(query) = request
            .queries
            .first()
            .filter(|_| request.queries.len() == 1)
        else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        };
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return Some(response);
        }
        response.add_query(query.clone());
        let name = LowerName::new(query.name());
        let Some(zone) = self.zone_for(&name, query.query_type()) else {
            response.metadata.response_code = ResponseCode::Refused;
            return Some(response);
        };
        response.metadata.authoritative = true;
        self.fill(&mut response, zone, &name, query.query_type(), dnssec_ok);
        Some(response)
    }

    fn fill(
        &self,
        response: &mut Message,
        zone: &Zone,
        name: &LowerName,
        record_type: RecordType,
        dnssec_ok: bool,
    ) {
        if record_type == RecordType::ANY {
            // RFC 8482 §4.2: a responder may return a subset; we return every RRset.
            let rrsets: Vec<&RecordSet> = zone.rrsets_at(name).collect();
            if !rrsets.is_empty() {
                for rrset in rrsets {
                    push(&mut response.answers, rrset, dnssec_ok);
                }
                return;
            }
        }
        if let Some(rrset) = zone.rrset(name, record_type) {
            push(&mut response.answers, rrset, dnssec_ok);
            return;
        }
        if let Some(cname) = zone.rrset(name, RecordType::CNAME) {
            push(&mut response.answers, cname, dnssec_ok);
            self.follow_cname(response, cname, record_type, dnssec_ok);
            return;
        }
        negative(response, zone, name, dnssec_ok);
    }

    /// Appends the target RRsets of a CNAME chain that stays inside the world.
    fn follow_cname(
        &self,
        response: &mut Message,
        first: &RecordSet,
        record_type: RecordType,
        dnssec_ok: bool,
    ) {
        let mut current = first.clone();
        for _ in 0..MAX_CNAME_HOPS {
            let Some(target) =
                current
                    .records_without_rrsigs()
                    .next()
                    .and_then(|record| match &record.data {
                        RData::CNAME(cname) => Some(cname.0.clone()),
                        _ => None,
                    })
            else {
                return;
            };
            let target = LowerName::new(&target);
            let Some(zone) = self.zone_for(&target, record_type) else {
                return;
            };
            if let Some(rrset) = zone.rrset(&target, record_type) {
                push(&mut response.answers, rrset, dnssec_ok);
                return;
            }
            let Some(next) = zone.rrset(&target, RecordType::CNAME) else {
                return;
            };
            push(&mut response.answers, next, dnssec_ok);
            current = next.clone();
        }
    }
}

/// NODATA or NXDOMAIN with the SOA and, in signed zones, the proving NSEC records.
fn negative(response: &mut Message, zone: &Zone, name: &LowerName, dnssec_ok: bool) {
    if let Some(soa) = zone.soa() {
        push(&mut response.authorities, soa, dnssec_ok);
    }
    let exists = zone.name_exists(name) || zone.cut_above(name).is_some();
    if exists {
        response.metadata.response_code = ResponseCode::NoError;
        if dnssec_ok && zone.is_signed() {
            // RFC 4035 §3.1.3.1: "the name server MUST include the NSEC RR for the
            // QNAME"; for an empty non-terminal the covering NSEC proves no type exists.
            let nsec = zone.nsec_at(name).or_else(|| zone.nsec_covering(name));
            if let Some(nsec) = nsec {
                push(&mut response.authorities, nsec, dnssec_ok);
            }
        }
        return;
    }
    response.metadata.response_code = ResponseCode::NXDomain;
    if dnssec_ok && zone.is_signed() {
        // RFC 4035 §3.1.3.2: "An NSEC RR proving that there is no exact match for
        // <SNAME, SCLASS>" and "An NSEC RR proving that the zone contains no RRsets that
        // would match <SNAME, SCLASS> via wildcard name expansion."
        let mut encloser = name.base_name();
        while !zone.name_exists(&encloser) && !encloser.is_root() {
            encloser = encloser.base_name();
        }
        let first = zone.nsec_covering(name);
        let second = Name::from(encloser)
            .prepend_label("*")
            .ok()
            .and_then(|wildcard| zone.nsec_covering(&LowerName::new(&wildcard)));
        if let Some(first) = first {
            push(&mut response.authorities, first, dnssec_ok);
        }
        if let Some(second) =
            second.filter(|second| Some(second.name()) != first.map(RecordSet::name))
        {
            push(&mut response.authorities, second, dnssec_ok);
        }
    }
}

/// Appends the records of `rrset` to `section`, with its RRSIGs when DO was set.
fn push(section: &mut Vec<Record>, rrset: &RecordSet, dnssec_ok: bool) {
    section.extend(rrset.records(dnssec_ok).cloned());
}
