//! End-to-end tests live in tests/*.rs (run the built mxgate binary).
