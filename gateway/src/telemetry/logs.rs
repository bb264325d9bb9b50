//! Logs and traces: `--log-format` and `--otlp-endpoint`.

use std::time::Duration;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keeps the OTLP exporter alive; flushes it on drop.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber: text or JSON lines on stderr, plus
/// OTLP trace export when `otlp_endpoint` is set. Call once, inside a
/// tokio runtime when exporting (the batch exporter runs on it).
///
/// # Errors
/// The OTLP exporter could not be built (a bad endpoint URL).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard, String> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every membership step at info; operators want
        // our own lines (leader changes, snapshots) and openraft's warnings.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut guard = TelemetryGuard::default();
    let otel = match otlp_endpoint {
        Some(ep) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(ep)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| format!("--otlp-endpoint {ep:?}: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("lookout")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("lookout");
            guard.provider = Some(provider);
            // Traces keep their own level: a quiet RUST_LOG for the logs
            // must not switch off the request spans.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::EnvFilter::new(
                        "info,openraft=warn,h2=warn,hyper=warn,tonic=warn,tower=warn",
                    )),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(guard)
}
