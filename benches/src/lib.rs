//! Criterion micro-benchmarks of berth's hot paths live in `benches/hot_paths.rs`; run them
//! with `cargo bench -p berth-benches`. This library is empty on purpose: the package exists
//! so the benchmarks depend only on public APIs of the other crates.
