//! The committed MTA-STS fuzz corpus, replayed on stable through the invariant the
//! fuzz target checks (fuzz/invariants/mta_sts.rs, docs/fuzzing.md).

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[path = "../../../fuzz/invariants/mta_sts.rs"]
mod mta_sts;

#[test]
fn mta_sts_corpus() {
    replay::replay("mta_sts", mta_sts::check);
}
