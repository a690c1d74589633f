//! SMTP server that accepts mail from the local MTA
