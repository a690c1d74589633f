//! The committed spool-record fuzz corpus, replayed on stable through the invariant the
//! fuzz target checks (fuzz/invariants/spool_records.rs, docs/fuzzing.md): recovery
//! never loses a valid record that precedes damage.

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[path = "../../../fuzz/invariants/spool_records.rs"]
mod spool_records;

#[test]
fn spool_records_corpus() {
    replay::replay("spool_records", spool_records::check);
}
