//! The committed configuration fuzz corpus, replayed on stable through the invariant
//! the fuzz target checks (fuzz/invariants/config.rs, docs/fuzzing.md).

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[path = "../../../fuzz/invariants/config.rs"]
mod config;

#[test]
fn config_corpus() {
    replay::replay("config", config::check);
}
