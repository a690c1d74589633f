//! The committed fuzz corpora of the SMTP codec, replayed on stable through the same
//! invariants the fuzz targets check (fuzz/invariants/, docs/fuzzing.md): a change
//! that breaks an invariant on any input the fuzzer found fails here.

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[path = "../../../fuzz/invariants/smtp_command.rs"]
mod smtp_command;
#[path = "../../../fuzz/invariants/smtp_data.rs"]
mod smtp_data;
#[path = "../../../fuzz/invariants/smtp_reply.rs"]
mod smtp_reply;
#[path = "../../../fuzz/invariants/xtext.rs"]
mod xtext;

#[test]
fn smtp_command_corpus() {
    replay::replay("smtp_command", smtp_command::check);
}

#[test]
fn smtp_data_corpus() {
    replay::replay("smtp_data", smtp_data::check);
}

#[test]
fn smtp_reply_corpus() {
    replay::replay("smtp_reply", smtp_reply::check);
}

#[test]
fn xtext_corpus() {
    replay::replay("xtext", xtext::check);
}
