//! What a DNS answer teaches: the addresses answered for the question's
//! name, each with the lowest TTL of the CNAME chain that led to it.
//!
//! Parsed read-only (hickory-proto): the proxy forwards the upstream's bytes
//! unchanged (ID, EDNS, truncation), because re-encoding answers has broken
//! DNS elsewhere. Addresses are attributed to the *question*, not to the
//! CNAME targets (OpenSnitch's mistake, evilsocket/opensnitch#176).

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RData},
};

use crate::policy::names::normalize;

/// A query as the proxy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Normalized (lower case, no trailing dot).
    pub name: String,
}

/// The first question of a query, if it parses and has one.
pub fn question(query: &[u8]) -> Option<Question> {
    let message = Message::from_vec(query).ok()?;
    let q = message.queries.first()?;
    Some(Question { id: message.metadata.id, name: normalize(&q.name().to_ascii()) })
}

/// The addresses an answer gives for `name` (following CNAMEs inside the
/// answer, at most 16 deep), with the TTL to apply: the lowest of the
/// address record and of every CNAME on the way. `None` if the answer does
/// not parse or is not for `id`.
pub fn addresses(answer: &[u8], id: u16, name: &str) -> Option<Vec<(IpAddr, u32)>> {
    let message = Message::from_vec(answer).ok()?;
    if message.metadata.id != id {
        return None;
    }
    let key = |n: &Name| normalize(&n.to_ascii());
    let mut chain = vec![name.to_string()];
    let mut chain_ttl = u32::MAX;
    for _ in 0..16 {
        let current = chain.last().expect("not empty").clone();
        let next = message.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if key(&r.name) == current => Some((key(&target.0), r.ttl)),
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.contains(&target) => {
                chain_ttl = chain_ttl.min(ttl);
                chain.push(target);
            }
            _ => break,
        }
    }
    let mut out = Vec::new();
    for record in &message.answers {
        if !chain.contains(&key(&record.name)) {
            continue;
        }
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        out.push((addr, record.ttl.min(chain_ttl)));
    }
    Some(out)
}

/// An answer of the proxy's own with `rcode` (5 REFUSED, 3 NXDOMAIN, 2
/// SERVFAIL):
/// the query's ID, opcode, RD bit and question, nothing else. Not a
/// forwarded answer, so encoding it afresh is fine.
pub fn reply_with_rcode(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::from(0, rcode));
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    for query in q.queries {
        m.add_query(query);
    }
    m.to_vec().ok()
}

pub const REFUSED: u8 = 5;
pub const NXDOMAIN: u8 = 3;
pub const SERVFAIL: u8 = 2;

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{rdata, Name, RData, Record, RecordType},
    };

    use super::*;

    fn answer(id: u16, qname: &str, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.message_type = MessageType::Response;
        m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
        for r in records {
            m.add_answer(r);
        }
        m.to_vec().unwrap()
    }

    fn rec(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
    }

    #[test]
    fn cname_chains_are_followed_and_the_lowest_ttl_wins() {
        let bytes = answer(
            7,
            "Www.Example.com.",
            vec![
                rec("www.example.com.", 300, RData::CNAME(rdata::CNAME(Name::from_str("edge.cdn.net.").unwrap()))),
                rec("edge.cdn.net.", 20, RData::CNAME(rdata::CNAME(Name::from_str("a1.cdn.net.").unwrap()))),
                rec("a1.cdn.net.", 60, RData::A(rdata::A::new(198, 18, 5, 1))),
                rec("unrelated.net.", 60, RData::A(rdata::A::new(198, 18, 5, 2))),
            ],
        );
        let q = question(&bytes).unwrap();
        assert_eq!(q, Question { id: 7, name: "www.example.com".into() });
        assert_eq!(addresses(&bytes, 7, &q.name), Some(vec![("198.18.5.1".parse().unwrap(), 20)]));
        assert_eq!(addresses(&bytes, 8, &q.name), None, "another query's answer teaches nothing");
    }

    #[test]
    fn refused_echoes_the_query() {
        let query = answer(9, "x.example.com.", vec![]);
        let reply = reply_with_rcode(&query, REFUSED).unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 9);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(u16::from(m.metadata.response_code), 5);
        assert_eq!(m.queries.len(), 1);
    }
}
