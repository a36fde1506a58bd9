//! Frames built from arbitrary input through the API must encode and decode unchanged.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mitto_proto::fuzzing::round_trip(data));
