//! `lookout-gateway`: gRPC and HTTP/JSON front ends over the cache, write
//! forwarding, and the `lookout` binary.
