//! Fuzz target: see `oneloop::fuzzing::check_proxy` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oneloop::fuzzing::check_proxy(data);
});
