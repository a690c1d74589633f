//! The `trust-ad` stub resolver: one query to a validating resolver on loopback, with
//! the AD and DO bits set, and the answer's AD bit taken as the DNSSEC status.
//!
//! RFC 6840 §5.7 (paraphrased): a validating resolver sets the AD bit on authenticated
//! answers when the query set the AD or DO bit. This module does not validate
//! anything itself and does not retry beyond trying each server once (UDP, then TCP on
//! truncation): the resolver behind it does the real work. A validating resolver answers
//! SERVFAIL for bogus data, which is a temporary failure here.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::classify::{cname_chain, negative, rtype_name, Lookup};
use crate::negcache::denial_ttl;
use crate::{Answer, DnsError, DnssecStatus};

/// Queries a loopback validating resolver and trusts its AD bit.
pub struct StubResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl StubResolver {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Result<Self, DnsError> {
        if servers.is_empty() {
            return Err(DnsError::Setup("no nameserver configured".to_string()));
        }
        Ok(StubResolver { servers, timeout })
    }

    /// The answer, the CNAME chain it followed, and how long it may be cached if it is
    /// a denial (RFC 2308 §5).
    pub(crate) async fn lookup(
        &self,
        name: &str,
        fqdn: &Name,
        rtype: RecordType,
    ) -> Result<Lookup, DnsError> {
        let mut last = String::from("no nameserver answered");
        for server in &self.servers {
            match self.exchange(*server, fqdn, rtype).await {
                Ok(msg) => {
                    // The AD bit covers the whole answer, CNAME links included.
                    let status = ad_status(&msg);
                    return interpret(name, rtype, &msg).map(|answer| Lookup {
                        answer,
                        alias: cname_chain(fqdn, &msg.answers, |_| status),
                        denial_ttl: denial_ttl(&msg.authorities),
                    });
                }
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(DnsError::Temporary {
            name: name.to_string(),
            rtype: rtype_name(rtype),
            detail: last,
        })
    }

    async fn exchange(
        &self,
        server: SocketAddr,
        fqdn: &Name,
        rtype: RecordType,
    ) -> std::io::Result<Message> {
        let id: u16 = rand::random();
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(fqdn.clone(), rtype));
        query.metadata.recursion_desired = true;
        query.metadata.authentic_data = true;
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.enable_dnssec();
        query.set_edns(edns);
        let bytes = query.to_vec().map_err(std::io::Error::other)?;

        let udp = tokio::time::timeout(self.timeout, async {
            let bind: SocketAddr = if server.is_ipv4() {
                ([127, 0, 0, 1], 0).into()
            } else {
                (std::net::Ipv6Addr::LOCALHOST, 0).into()
            };
            let sock = UdpSocket::bind(bind).await?;
            sock.connect(server).await?;
            sock.send(&bytes).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut buf).await?;
                // Ignore datagrams that are not the answer to this query.
                if let Ok(msg) = Message::from_vec(&buf[..n]) {
                    if msg.metadata.id == id && msg.metadata.message_type == MessageType::Response {
                        return Ok::<Message, std::io::Error>(msg);
                    }
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
        if !udp.metadata.truncation {
            return Ok(udp);
        }
        tokio::time::timeout(self.timeout, async {
            let mut tcp = TcpStream::connect(server).await?;
            let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
            tcp.write_all(&len.to_be_bytes()).await?;
            tcp.write_all(&bytes).await?;
            let mut lenbuf = [0u8; 2];
            tcp.read_exact(&mut lenbuf).await?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenbuf))];
            tcp.read_exact(&mut buf).await?;
            let msg = Message::from_vec(&buf).map_err(std::io::Error::other)?;
            if msg.metadata.id != id {
                return Err(std::io::Error::other("answer id mismatch"));
            }
            Ok(msg)
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
    }
}

/// AD set = secure, else insecure.
fn ad_status(msg: &Message) -> DnssecStatus {
    if msg.metadata.authentic_data {
        DnssecStatus::Secure
    } else {
        DnssecStatus::Insecure
    }
}

/// The answer of a validating resolver: AD set = secure, else insecure.
pub fn interpret(name: &str, rtype: RecordType, msg: &Message) -> Result<Answer<Record>, DnsError> {
    let status = ad_status(msg);
    let records: Vec<Record> = msg
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .cloned()
        .collect();
    if !records.is_empty() {
        return Ok(Answer::Found { records, status });
    }
    negative(name, rtype_name(rtype), msg.metadata.response_code, status)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::RData;

    fn answer(ad: bool, code: ResponseCode, with_a: bool) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.authentic_data = ad;
        m.metadata.response_code = code;
        if with_a {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("h.example.").unwrap(),
                60,
                RData::A(A::new(192, 0, 2, 7)),
            ));
        }
        m
    }

    #[test]
    fn ad_bit_decides_the_status() {
        use DnssecStatus::*;
        let table = [
            (true, ResponseCode::NoError, true, Ok(("found", Secure))),
            (false, ResponseCode::NoError, true, Ok(("found", Insecure))),
            (true, ResponseCode::NoError, false, Ok(("nodata", Secure))),
            (false, ResponseCode::NXDomain, false, Ok(("nx", Insecure))),
            (false, ResponseCode::ServFail, false, Err(())),
            (false, ResponseCode::Refused, false, Err(())),
        ];
        for (ad, code, with_a, want) in table {
            let got = interpret("h.example", RecordType::A, &answer(ad, code, with_a));
            let got = got.map(|a| {
                let kind = match a {
                    Answer::Found { .. } => "found",
                    Answer::NoData { .. } => "nodata",
                    Answer::NxDomain { .. } => "nx",
                };
                (kind, a.status())
            });
            assert_eq!(got.map_err(|_| ()), want, "ad={ad} {code:?} a={with_a}");
        }
    }

    /// A fake validating resolver on loopback: answers one A query with AD set and
    /// checks that the query carried the AD and DO bits.
    #[tokio::test]
    async fn stub_sends_ad_and_do_and_reads_the_answer() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            assert!(q.metadata.authentic_data, "AD bit not set");
            assert!(
                q.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
                "DO bit not set"
            );
            let mut r = answer(true, ResponseCode::NoError, true);
            r.metadata.id = q.metadata.id;
            r.add_query(q.queries[0].clone());
            sock.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        });
        let stub = StubResolver::new(vec![addr], Duration::from_secs(2)).unwrap();
        let got = stub
            .lookup(
                "h.example",
                &Name::from_ascii("h.example.").unwrap(),
                RecordType::A,
            )
            .await
            .unwrap()
            .answer;
        assert_eq!(got.status(), DnssecStatus::Secure);
        assert_eq!(got.records().len(), 1);
        server.await.unwrap();
    }
}
