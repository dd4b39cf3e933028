//! Replays the fuzz corpus (`fuzz/corpus/TARGET/*`, saved from `cargo fuzz` runs) through the
//! same invariant checks the fuzz targets use. Fast and deterministic: every `cargo test` keeps
//! what the fuzzer once found, without needing nightly or the fuzzer itself.

use std::fs;
use std::path::Path;

// Built with the `fuzzing` feature: Cargo.toml's dev-dependency on the crate itself turns it on
// for every `cargo test`, so these tests cannot silently drop out.
use oneloop::fuzzing as invariants;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} breaks an invariant",
            path.display()
        );
        replayed += 1;
    }
    assert!(replayed > 0, "{target}: the corpus is empty");
}

#[test]
fn upper_corpus() {
    replay("upper", invariants::check_upper);
}

#[test]
fn timestamp_corpus() {
    replay("timestamp", invariants::check_timestamp);
}

#[test]
fn echo_corpus() {
    replay("echo", invariants::check_echo);
}

#[test]
fn service_spec_corpus() {
    replay("service_spec", invariants::check_service_spec);
}

#[test]
fn room_corpus() {
    replay("room", invariants::check_room);
}

#[test]
fn upload_header_corpus() {
    replay("upload_header", invariants::check_upload);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", invariants::check_proxy);
}
