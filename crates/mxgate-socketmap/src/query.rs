//! The socketmap request (socketmap_table(5), "REQUEST FORMAT": `name <space> key`)
//! and what kind of `smtp_tls_policy_maps` key it carries.
//!
//! postconf(5), `smtp_tls_policy_maps`: "The TLS policy table is indexed by the full
//! next-hop destination, which is either the recipient domain, or the verbatim
//! next-hop specified in the transport table [...] This includes any enclosing square
//! brackets and any non-default destination server port suffix." and "When the lookup
//! key is a domain name without enclosing square brackets or any :port suffix [...] the
//! parent domain starting with a leading "." is matched recursively."

/// A request that is a valid netstring but not a socketmap lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("request is not \"name key\"")]
    NoKey,
}

/// One lookup: the socketmap name (the last field of `socketmap:inet:host:port:name`)
/// and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub name: &'a str,
    pub key: &'a str,
}

/// Splits a request payload at its first space.
pub fn parse_query(payload: &[u8]) -> Result<Query<'_>, QueryError> {
    let text = std::str::from_utf8(payload).map_err(|_| QueryError::NotUtf8)?;
    let (name, key) = text.split_once(' ').ok_or(QueryError::NoKey)?;
    if name.is_empty() || key.is_empty() {
        return Err(QueryError::NoKey);
    }
    Ok(Query { name, key })
}

/// What a policy-table key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A next-hop domain (`example.com`), lower case, without a trailing dot.
    Domain(String),
    /// A parent-domain lookup (`.example.com`), leading dot kept, lower case.
    Parent(String),
    /// Anything else: `[host]`, `[host]:port`, `host:port`, an LMTP path, a name that is
    /// not a DNS name. mxgate's policy is per destination domain, so none applies.
    Other,
}

/// Classifies a key. Only ASCII DNS names (letters, digits, `-`, `_`, labels of 1 to
/// 63 octets, at most 253 in all) are domains.
pub fn classify(key: &str) -> Key {
    let key = key.strip_suffix('.').unwrap_or(key).to_ascii_lowercase();
    let (parent, name) = match key.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, key.as_str()),
    };
    if !is_dns_name(name) {
        return Key::Other;
    }
    if parent {
        Key::Parent(key)
    } else {
        Key::Domain(key)
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_query(b"postfix example.com"),
            Ok(Query {
                name: "postfix",
                key: "example.com"
            })
        );
        // Only the first space separates; the key is passed on verbatim.
        assert_eq!(parse_query(b"postfix a b").map(|q| q.key), Ok("a b"));
        assert_eq!(parse_query(b"postfix"), Err(QueryError::NoKey));
        assert_eq!(parse_query(b"postfix "), Err(QueryError::NoKey));
        assert_eq!(parse_query(b" example.com"), Err(QueryError::NoKey));
        assert_eq!(parse_query(b""), Err(QueryError::NoKey));
        assert_eq!(parse_query(b"postfix \xff"), Err(QueryError::NotUtf8));
    }

    #[test]
    fn keys() {
        let d = |s: &str| Key::Domain(s.to_string());
        let p = |s: &str| Key::Parent(s.to_string());
        let cases: &[(&str, Key)] = &[
            ("example.com", d("example.com")),
            ("Example.COM.", d("example.com")),
            ("com", d("com")),
            ("_x.example", d("_x.example")),
            (".example.com", p(".example.com")),
            (".Example.com.", p(".example.com")),
            ("[mx.example.com]", Key::Other),
            ("[mx.example.com]:587", Key::Other),
            ("example.com:2525", Key::Other),
            ("[192.0.2.1]", Key::Other),
            ("[ipv6:2001:db8::1]", Key::Other),
            ("/var/run/lmtp", Key::Other),
            ("", Key::Other),
            (".", Key::Other),
            ("..example.com", Key::Other),
            ("a..b", Key::Other),
            ("exa mple.com", Key::Other),
            ("bücher.example", Key::Other),
            (&"a".repeat(64), Key::Other),
        ];
        for (key, want) in cases {
            assert_eq!(&classify(key), want, "{key:?}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert_eq!(classify(&long), Key::Domain(long.clone()));
        assert_eq!(classify(&format!("{long}x")), Key::Other);
    }
}
