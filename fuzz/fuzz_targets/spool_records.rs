#![no_main]

#[path = "../invariants/spool_records.rs"]
mod invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant::check(data));
