//! DKIM signing of report mails (RFC 6376; RFC 8460 §3 asks that mailed reports be
//! signed), `c=relaxed/relaxed`, `rsa-sha256` or `ed25519-sha256` (RFC 8463), with
//! `ring` — the crypto provider rustls already links — so no second RSA stack is
//! carried (see docs/tlsrpt.md).
//!
//! The key record should say `s=tlsrpt` (RFC 8460 §3); that is the domain owner's DNS,
//! not something the signer writes.

use std::path::Path;

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use sha2::{Digest, Sha256};

/// A loaded signing key.
pub struct DkimSigner {
    domain: String,
    selector: String,
    key: Key,
}

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("tlsrpt.dkim_key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tlsrpt.dkim_key {0}: no PEM private key found")]
    NoKey(String),
    #[error("tlsrpt.dkim_key {0}: not an RSA (PKCS#1/PKCS#8) or Ed25519 (PKCS#8) key, or RSA shorter than 1024 bits")]
    Unsupported(String),
}

impl DkimSigner {
    /// Loads a PEM private key (`RSA PRIVATE KEY` or `PRIVATE KEY`).
    pub fn load(domain: &str, selector: &str, key_path: &Path) -> Result<DkimSigner, DkimError> {
        let shown = key_path.display().to_string();
        let pem = std::fs::read(key_path).map_err(|source| DkimError::Read {
            path: shown.clone(),
            source,
        })?;
        DkimSigner::from_pem(domain, selector, &pem).map_err(|e| match e {
            DkimError::NoKey(_) => DkimError::NoKey(shown.clone()),
            DkimError::Unsupported(_) => DkimError::Unsupported(shown.clone()),
            other => other,
        })
    }

    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<DkimSigner, DkimError> {
        let der = rustls_pemfile::private_key(&mut &pem[..])
            .ok()
            .flatten()
            .ok_or_else(|| DkimError::NoKey(String::new()))?;
        use rustls::pki_types::PrivateKeyDer;
        let key = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(Key::Rsa)
                .map_err(|_| DkimError::Unsupported(String::new()))?,
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                if let Ok(rsa) = RsaKeyPair::from_pkcs8(bytes) {
                    Key::Rsa(rsa)
                } else if let Ok(ed) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                    Key::Ed25519(ed)
                } else {
                    return Err(DkimError::Unsupported(String::new()));
                }
            }
            _ => return Err(DkimError::Unsupported(String::new())),
        };
        Ok(DkimSigner {
            domain: domain.to_string(),
            selector: selector.to_string(),
            key,
        })
    }

    fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// The public key as the `p=` of a DKIM key record (for docs and tests).
    pub fn public_key_record(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        match &self.key {
            // `p=` for RSA is the DER SubjectPublicKeyInfo; ring gives the PKCS#1
            // RSAPublicKey, which we wrap.
            Key::Rsa(k) => format!(
                "v=DKIM1; k=rsa; s=tlsrpt; p={}",
                b64.encode(rsa_spki(k.public_key().as_ref()))
            ),
            Key::Ed25519(k) => format!(
                "v=DKIM1; k=ed25519; s=tlsrpt; p={}",
                b64.encode(k.public_key().as_ref())
            ),
        }
    }

    /// Returns `message` with a `DKIM-Signature:` header prepended, signing the
    /// [`crate::mail::SIGNED_HEADERS`] present. `now` is unix seconds (`t=`).
    pub fn sign(&self, message: &[u8], now: u64) -> Vec<u8> {
        let (head, body) = split(message);
        let headers = parse_headers(head);
        let b64 = base64::engine::general_purpose::STANDARD;
        let body_hash = b64.encode(Sha256::digest(canon_body_relaxed(body)));
        let signed: Vec<&str> = crate::mail::SIGNED_HEADERS
            .iter()
            .copied()
            .filter(|h| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(h)))
            .collect();
        let value = format!(
            "v=1; a={}; c=relaxed/relaxed; d={}; s={}; t={now};\r\n\th={};\r\n\tbh={body_hash};\r\n\tb=",
            self.algorithm(),
            self.domain,
            self.selector,
            signed.join(":"),
        );
        let mut data = Vec::new();
        for name in &signed {
            // RFC 6376 §5.4.2: several instances are signed bottom-up; ours has one each.
            if let Some((n, v)) = headers
                .iter()
                .rev()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                data.extend_from_slice(canon_header_relaxed(n, v).as_bytes());
                data.extend_from_slice(b"\r\n");
            }
        }
        // §3.7: the DKIM-Signature header itself, b= empty, without the final CRLF.
        data.extend_from_slice(canon_header_relaxed("DKIM-Signature", &value).as_bytes());
        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                let rng = ring::rand::SystemRandom::new();
                match k.sign(&RSA_PKCS1_SHA256, &rng, &data, &mut sig) {
                    Ok(()) => sig,
                    Err(_) => Vec::new(),
                }
            }
            Key::Ed25519(k) => {
                // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
                k.sign(&Sha256::digest(&data)).as_ref().to_vec()
            }
        };
        let sig = b64.encode(signature);
        let mut folded = String::new();
        for (i, chunk) in sig.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                folded.push_str("\r\n\t");
            }
            folded.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        }
        let mut out = format!("DKIM-Signature: {value}{folded}\r\n").into_bytes();
        out.extend_from_slice(message);
        out
    }
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (rsaEncryption, NULL params).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn der_len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            vec![n as u8]
        } else if n < 0x100 {
            vec![0x81, n as u8]
        } else {
            vec![0x82, (n >> 8) as u8, n as u8]
        }
    }
    let alg: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    bit_string.extend(der_len(pkcs1.len() + 1));
    bit_string.push(0);
    bit_string.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(der_len(alg.len() + bit_string.len()));
    out.extend_from_slice(alg);
    out.extend(bit_string);
    out
}

fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (&message[..p + 2], &message[p + 4..]),
        None => (message, &[]),
    }
}

/// Header fields (name, raw value with folding) in order.
fn parse_headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.to_string(), v.to_string()));
        }
    }
    out
}

/// RFC 6376 §3.4.2: lower-case name, unfold, runs of WSP to one SP, no WSP at the
/// ends of the value or around the colon.
fn canon_header_relaxed(name: &str, value: &str) -> String {
    let unfolded = value.replace("\r\n", "");
    let mut v = String::with_capacity(unfolded.len());
    let mut in_ws = false;
    for c in unfolded.chars() {
        if c == ' ' || c == '\t' {
            in_ws = true;
        } else {
            if in_ws && !v.is_empty() {
                v.push(' ');
            }
            in_ws = false;
            v.push(c);
        }
    }
    format!("{}:{}", name.trim().to_ascii_lowercase(), v)
}

/// RFC 6376 §3.4.4: runs of WSP to one SP, no WSP at line ends, no empty lines at the
/// end; a non-empty body ends in CRLF.
fn canon_body_relaxed(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut lines: Vec<String> = text
        .split("\r\n")
        .map(|line| {
            let mut out = String::new();
            let mut in_ws = false;
            for c in line.chars() {
                if c == ' ' || c == '\t' {
                    in_ws = true;
                } else {
                    if in_ws {
                        out.push(' ');
                    }
                    in_ws = false;
                    out.push(c);
                }
            }
            out
        })
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_canonicalisation_matches_rfc_6376_example() {
        // RFC 6376 §3.4.5.
        assert_eq!(canon_header_relaxed("A", " X"), "a:X");
        assert_eq!(canon_header_relaxed("B ", " Y\t\r\n\tZ  "), "b:Y Z");
        assert_eq!(
            canon_body_relaxed(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n".to_vec()
        );
        assert_eq!(canon_body_relaxed(b""), b"".to_vec());
    }

    #[test]
    fn ed25519_signature_verifies_with_the_published_key() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let signer = DkimSigner::from_pem("relay.example", "tlsrpt", pem.as_bytes()).unwrap();
        let msg = b"From: <a@relay.example>\r\nTo: <b@dest.example>\r\nSubject:  hi\r\n\r\nbody  \r\n\r\n";
        let signed = signer.sign(msg, 1000);
        let text = String::from_utf8(signed.clone()).unwrap();
        assert!(text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=relay.example; s=tlsrpt; t=1000;"));
        assert!(text.contains("h=from:to:subject;"));
        // Verify: rebuild the signed data from the signed message.
        let (head, _) = split(&signed);
        let headers = parse_headers(head);
        let (_, sig_value) = headers.iter().find(|(n, _)| n == "DKIM-Signature").unwrap();
        let b_at = sig_value.find("b=").unwrap();
        let stripped = &sig_value[..b_at + 2];
        let b: String = sig_value[b_at + 2..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let mut data = Vec::new();
        for name in ["from", "to", "subject"] {
            let (n, v) = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .unwrap();
            data.extend_from_slice(canon_header_relaxed(n, v).as_bytes());
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(canon_header_relaxed("DKIM-Signature", stripped).as_bytes());
        let pk = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            signer
                .public_key_record()
                .rsplit("p=")
                .next()
                .map(|p| base64::engine::general_purpose::STANDARD.decode(p).unwrap())
                .unwrap(),
        );
        let sig = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        pk.verify(&Sha256::digest(&data), &sig).unwrap();
        assert!(text.contains(&format!(
            "bh={};",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"body\r\n"))
        )));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            DkimSigner::from_pem("d", "s", b"nothing"),
            Err(DkimError::NoKey(_))
        ));
        let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            DkimSigner::from_pem("d", "s", junk.as_bytes()),
            Err(DkimError::Unsupported(_))
        ));
    }
}
