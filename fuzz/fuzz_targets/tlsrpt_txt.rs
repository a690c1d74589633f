#![no_main]

#[path = "../invariants/tlsrpt_txt.rs"]
mod invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant::check(data));
