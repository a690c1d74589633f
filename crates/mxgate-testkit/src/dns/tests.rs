//! Tests of the DNS test world: wire answers, DNSSEC proofs, faults, and a real validator.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hickory_proto::{
    dnssec::{rdata::DNSSECRData, Proof, TrustAnchors},
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    Resolver,
};
use tokio::net::{TcpStream, UdpSocket};

use super::{DnsWorld, Fault, Signing};

async fn world() -> DnsWorld {
    DnsWorld::builder()
        .zone("secure.test.", Signing::Secure)
        .zone("insecure.test.", Signing::Insecure)
        .zone("bogus.test.", Signing::Bogus)
        .zone("expired.test.", Signing::BogusExpired)
        .zone("corrupt.test.", Signing::BogusSignature)
        .record("example.secure.test. 300 IN MX 10 mx1.example.secure.test.")
        .record("mx1.example.secure.test. 300 IN A 127.0.0.1")
        .record("_25._tcp.mx1.example.secure.test. 300 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        .record("null.secure.test. 300 IN MX 0 .")
        .record("alias.secure.test. 300 IN CNAME mx1.example.secure.test.")
        .record("example.insecure.test. 300 IN MX 10 mx.example.insecure.test.")
        .record("example.bogus.test. 300 IN MX 10 mx.example.bogus.test.")
        .record("example.expired.test. 300 IN MX 10 mx.example.expired.test.")
        .record("example.corrupt.test. 300 IN MX 10 mx.example.corrupt.test.")
        .drop_queries_for("timeout.secure.test.")
        .servfail_for("broken.secure.test.")
        .start()
        .await
        .unwrap()
}

fn query(name: &str, record_type: RecordType) -> Message {
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message
}

async fn udp_exchange(addr: SocketAddr, request: &Message) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&request.to_vec().unwrap(), addr)
        .await
        .unwrap();
    let mut buffer = vec![0u8; 65_535];
    let received = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buffer)).await;
    let len = received.ok()?.unwrap();
    Some(Message::from_vec(&buffer[..len]).unwrap())
}

async fn ask(world: &DnsWorld, name: &str, record_type: RecordType) -> Message {
    udp_exchange(world.addr(), &query(name, record_type))
        .await
        .expect("an answer")
}

fn types(records: &[hickory_proto::rr::Record]) -> Vec<RecordType> {
    records.iter().map(|r| r.record_type()).collect()
}

#[tokio::test]
async fn answers_carry_rrsigs_from_the_zone_key() {
    let world = world().await;
    let reply = ask(&world, "example.secure.test.", RecordType::MX).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert_eq!(
        types(&reply.answers),
        vec![RecordType::MX, RecordType::RRSIG]
    );
    let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &reply.answers[1].data else {
        panic!("not an RRSIG")
    };
    assert_eq!(
        rrsig.input().signer_name,
        Name::from_ascii("secure.test.").unwrap()
    );

    // Without DO, no DNSSEC records.
    let mut plain = query("example.secure.test.", RecordType::MX);
    plain.edns = None;
    let reply = udp_exchange(world.addr(), &plain).await.unwrap();
    assert_eq!(types(&reply.answers), vec![RecordType::MX]);
}

#[tokio::test]
async fn ds_is_answered_from_the_parent_and_absent_ds_is_proven() {
    let world = world().await;
    let reply = ask(&world, "secure.test.", RecordType::DS).await;
    assert_eq!(
        types(&reply.answers),
        vec![RecordType::DS, RecordType::RRSIG]
    );
    let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &reply.answers[1].data else {
        panic!("not an RRSIG")
    };
    assert!(
        rrsig.input().signer_name.is_root(),
        "DS must be signed by the root"
    );

    let reply = ask(&world, "insecure.test.", RecordType::DS).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    let nsec = reply
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::NSEC(nsec)) => Some((r.name.clone(), nsec.clone())),
            _ => None,
        })
        .expect("NSEC proving no DS");
    assert_eq!(nsec.0, Name::from_ascii("insecure.test.").unwrap());
    let bitmap: Vec<RecordType> = nsec.1.type_bit_maps().collect();
    assert!(bitmap.contains(&RecordType::NS));
    assert!(!bitmap.contains(&RecordType::DS));

    // The child's own apex answers DNSKEY, signed by its KSK.
    let reply = ask(&world, "secure.test.", RecordType::DNSKEY).await;
    assert_eq!(
        types(&reply.answers)
            .iter()
            .filter(|t| **t == RecordType::DNSKEY)
            .count(),
        2
    );
}

#[tokio::test]
async fn nxdomain_and_nodata_come_with_signed_nsec() {
    let world = world().await;
    let reply = ask(&world, "nothing.secure.test.", RecordType::MX).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let authority = types(&reply.authorities);
    assert!(authority.contains(&RecordType::SOA));
    assert!(authority.contains(&RecordType::NSEC));
    assert!(authority.contains(&RecordType::RRSIG));

    let reply = ask(&world, "example.secure.test.", RecordType::AAAA).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert!(types(&reply.authorities).contains(&RecordType::NSEC));

    // "test." is an empty non-terminal of the root: NODATA, not NXDOMAIN.
    let reply = ask(&world, "test.", RecordType::DS).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);

    let reply = ask(&world, "nothing.insecure.test.", RecordType::MX).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(!types(&reply.authorities).contains(&RecordType::NSEC));
}

#[tokio::test]
async fn null_mx_cname_and_tlsa_are_served() {
    let world = world().await;
    let reply = ask(&world, "null.secure.test.", RecordType::MX).await;
    let RData::MX(mx) = &reply.answers[0].data else {
        panic!("not MX")
    };
    assert_eq!(mx.preference, 0);
    assert!(mx.exchange.is_root());

    let reply = ask(&world, "alias.secure.test.", RecordType::A).await;
    let answer = types(&reply.answers);
    assert_eq!(answer.first(), Some(&RecordType::CNAME));
    assert!(answer.contains(&RecordType::A));

    let reply = ask(
        &world,
        "_25._tcp.mx1.example.secure.test.",
        RecordType::TLSA,
    )
    .await;
    assert_eq!(
        types(&reply.answers),
        vec![RecordType::TLSA, RecordType::RRSIG]
    );
}

#[tokio::test]
async fn faults_drop_or_fail_and_can_change_while_running() {
    let world = world().await;
    assert!(
        udp_exchange(world.addr(), &query("timeout.secure.test.", RecordType::MX))
            .await
            .is_none()
    );
    let reply = ask(&world, "broken.secure.test.", RecordType::MX).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);

    world
        .set_fault(
            "example.secure.test.",
            Some(RecordType::MX),
            Some(Fault::Refused),
        )
        .unwrap();
    let reply = ask(&world, "example.secure.test.", RecordType::MX).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    // Another type at the same name is untouched.
    let reply = ask(&world, "example.secure.test.", RecordType::TXT).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    world
        .set_fault("example.secure.test.", Some(RecordType::MX), None)
        .unwrap();
    let reply = ask(&world, "example.secure.test.", RecordType::MX).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(world.query_count("EXAMPLE.secure.test.", RecordType::MX), 2);
}

#[tokio::test]
async fn tcp_answers_with_length_prefix() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = world().await;
    let mut stream = TcpStream::connect(world.addr()).await.unwrap();
    let request = query("example.secure.test.", RecordType::MX)
        .to_vec()
        .unwrap();
    stream.write_u16(request.len() as u16).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        types(&reply.answers),
        vec![RecordType::MX, RecordType::RRSIG]
    );
}

#[tokio::test]
async fn trust_anchor_file_is_readable_by_hickory() {
    let world = world().await;
    assert!(world
        .trust_anchor_text()
        .starts_with(". 300 IN DNSKEY 257 3 13 "));
    let anchors = TrustAnchors::from_file(world.trust_anchor_path()).unwrap();
    assert_eq!(anchors.len(), 1);
    assert!(anchors.contains(world.root_ksk().public_key()));
}

fn validating_resolver(world: &DnsWorld) -> Resolver<TokioRuntimeProvider> {
    let mut udp = ConnectionConfig::udp();
    udp.port = world.addr().port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = world.addr().port();
    let mut server = NameServerConfig::udp_and_tcp(world.addr().ip());
    server.connections = vec![udp, tcp];
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options = builder.options_mut();
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    options.use_hosts_file = ResolveHosts::Never;
    options.ndots = 0;
    options.edns0 = true;
    options.validate = true;
    let anchors = TrustAnchors::from_file(world.trust_anchor_path()).unwrap();
    builder
        .with_trust_anchor(Arc::new(anchors))
        .build()
        .unwrap()
}

/// The proof hickory's validator assigns to an MX lookup (`None` when it failed).
async fn mx_proof(resolver: &Resolver<TokioRuntimeProvider>, name: &str) -> Option<Proof> {
    let lookup = resolver.lookup(name, RecordType::MX).await.ok()?;
    let mx = lookup
        .answers()
        .iter()
        .find(|r| r.record_type() == RecordType::MX)?;
    Some(mx.proof)
}

#[tokio::test]
async fn hickory_validator_classifies_secure_insecure_and_bogus() {
    let world = world().await;
    let resolver = validating_resolver(&world);
    assert_eq!(
        mx_proof(&resolver, "example.secure.test.").await,
        Some(Proof::Secure)
    );
    assert_eq!(
        mx_proof(&resolver, "example.insecure.test.").await,
        Some(Proof::Insecure)
    );
    for bogus in [
        "example.bogus.test.",
        "example.expired.test.",
        "example.corrupt.test.",
    ] {
        let proof = mx_proof(&resolver, bogus).await;
        assert!(
            matches!(proof, None | Some(Proof::Bogus)),
            "{bogus}: {proof:?}"
        );
    }
}

/// Asks `addr` recursively with DO set.
async fn ask_resolver(addr: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let mut request = query(name, record_type);
    request.metadata.recursion_desired = true;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&request.to_vec().unwrap(), addr)
        .await
        .unwrap();
    let mut buffer = vec![0u8; 65_535];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
        .await
        .expect("resolver answered")
        .unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

#[tokio::test]
async fn unbound_sets_ad_for_secure_and_fails_bogus() {
    if !super::unbound::Unbound::available() {
        eprintln!("unbound not installed: skipped");
        return;
    }
    let world = world().await;
    let unbound = super::unbound::Unbound::start(&world).await.unwrap();
    let secure = ask_resolver(unbound.addr(), "example.secure.test.", RecordType::MX).await;
    assert_eq!(
        secure.metadata.response_code,
        ResponseCode::NoError,
        "{}",
        unbound.log()
    );
    assert!(secure.metadata.authentic_data, "{}", unbound.log());
    let insecure = ask_resolver(unbound.addr(), "example.insecure.test.", RecordType::MX).await;
    assert_eq!(
        insecure.metadata.response_code,
        ResponseCode::NoError,
        "{}",
        unbound.log()
    );
    assert!(!insecure.metadata.authentic_data);
    let nx = ask_resolver(unbound.addr(), "nothing.secure.test.", RecordType::MX).await;
    assert_eq!(
        nx.metadata.response_code,
        ResponseCode::NXDomain,
        "{}",
        unbound.log()
    );
    assert!(nx.metadata.authentic_data, "{}", unbound.log());
    for bogus in [
        "example.bogus.test.",
        "example.expired.test.",
        "example.corrupt.test.",
    ] {
        let reply = ask_resolver(unbound.addr(), bogus, RecordType::MX).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{bogus}"
        );
    }
}
