#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_gateway::fuzz::grpc_request(data));
