#![no_main]

#[path = "../invariants/socketmap_netstring.rs"]
mod invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant::check(data));
