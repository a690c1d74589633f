#![no_main]

#[path = "../invariants/smtp_command.rs"]
mod invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant::check(data));
