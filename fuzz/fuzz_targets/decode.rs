//! Arbitrary bytes into the streaming decoder.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mitto_proto::fuzzing::decode(data));
