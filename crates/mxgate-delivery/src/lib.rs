//! SMTP client: MX resolution, STARTTLS, verification, outcomes
