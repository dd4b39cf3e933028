//! Fuzz target: see `oneloop::protocol::invariants::check_proxy` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oneloop::protocol::invariants::check_proxy(data);
});
