#![no_main]

#[path = "../invariants/smtp_reply.rs"]
mod invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant::check(data));
