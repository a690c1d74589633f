#![no_main]

#[path = "../invariants/mta_sts.rs"]
mod invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant::check(data));
