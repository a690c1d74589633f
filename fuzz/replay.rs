// Included by the owning crates' `tests/fuzz_corpus.rs`: runs every file of
// fuzz/corpus/TARGET/ through the invariant the fuzz target checks (docs/fuzzing.md).

use std::path::Path;

pub fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut replayed = 0;
    let mut failed = Vec::new();
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
        replayed += 1;
    }
    assert!(replayed > 0, "{}: empty corpus", dir.display());
    assert!(
        failed.is_empty(),
        "{target}: the invariant fails on {failed:#?}"
    );
}
