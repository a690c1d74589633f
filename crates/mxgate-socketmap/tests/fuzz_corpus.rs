//! The committed netstring fuzz corpus, replayed on stable through the invariant the
//! fuzz target checks (fuzz/invariants/socketmap_netstring.rs, docs/fuzzing.md).

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[path = "../../../fuzz/invariants/socketmap_netstring.rs"]
mod socketmap_netstring;

#[test]
fn socketmap_netstring_corpus() {
    replay::replay("socketmap_netstring", socketmap_netstring::check);
}
