//! The committed TLSRPT record fuzz corpus, replayed on stable through the invariant the
//! fuzz target checks (fuzz/invariants/tlsrpt_txt.rs, docs/fuzzing.md).

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[path = "../../../fuzz/invariants/tlsrpt_txt.rs"]
mod tlsrpt_txt;

#[test]
fn tlsrpt_txt_corpus() {
    replay::replay("tlsrpt_txt", tlsrpt_txt::check);
}
