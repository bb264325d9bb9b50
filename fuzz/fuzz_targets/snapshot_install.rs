#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_consensus::fuzz::snapshot_install(data));
