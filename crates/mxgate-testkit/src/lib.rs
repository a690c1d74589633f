//! test world: DNS with signed zones, SMTP receivers, HTTPS, MITM, certificates, Postfix
