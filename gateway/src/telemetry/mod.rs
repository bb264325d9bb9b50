//! Observability shared by every process: the gRPC request metrics
//! (go-grpc-prometheus' `grpc_server_*` families and etcd's
//! `etcd_network_client_grpc_*_bytes_total`), the process metrics
//! (`process_*`, as the Prometheus Go client exports them), the store's
//! `/metrics` and `/health`, and the log/trace setup (`--log-format`,
//! `--otlp-endpoint`).
//!
//! ```text
//!  request ─> GrpcMetricsLayer: started{service,method,type} += 1
//!                │ request body: messages and payload bytes received
//!                │ response body: messages and payload bytes sent;
//!                v grpc-status in headers (trailers-only) or trailers
//!             handled{service,method,type,code} += 1 when the body ends
//!             (a body dropped before its trailers counts as Canceled),
//!             handling_seconds observed then (--metrics=extensive)
//!  tracing ─> fmt layer (text | json) ─> stderr
//!          └> tracing-opentelemetry ─> OTLP/gRPC batch exporter (only with --otlp-endpoint)
//! ```
//!
//! Counting never blocks a request: every method etcd serves has its
//! counters preallocated (as go-grpc-prometheus initialises them, so
//! every series exists at 0 from the start), and a request adds to them
//! with relaxed atomics; only paths outside etcd's services take a short
//! mutex section.

// Each concern in its own file; `grpc` (the counters) names nothing of
// the gateway, so the shared state can hold it without a cycle.
pub(crate) mod grpc;
mod layer;
mod logs;
mod process;
mod store;

pub use grpc::{ExtraMetrics, GRPC_METHODS, GrpcMetrics, MetricsLevel};
pub use layer::{GrpcMetricsLayer, GrpcMetricsService};
pub use logs::{LogFormat, TelemetryGuard, init};
pub use process::render_process;
pub(crate) use store::{PROMETHEUS_TEXT, store_ops_router};
