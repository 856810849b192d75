//! Logs and traces: the `tracing` subscriber every command runs under.
//!
//! Logs go to stderr as text or JSON lines (`--log-format`), filtered by `--log` / `RUST_LOG`.
//! With `--otlp-endpoint` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`), Rehearse's spans
//! are also exported over OTLP/gRPC, batched (the standard `OTEL_BSP_*` variables tune the
//! batches), under the service `rehearse-coordinator`, `rehearse-worker` or `rehearse`
//! (`OTEL_SERVICE_NAME` overrides). Those spans are chosen apart from the log filter: a
//! coordinator logging only warnings still exports its jobs' traces. See docs/observability.md.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::LogFormat;

/// The running exporter; [`Telemetry::shutdown`] flushes what is batched.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still batched (waits for the exporter, bounded by its timeout).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("rehearse: traces not all exported: {e}");
        }
    }
}

/// Installs the subscriber. Must run inside the Tokio runtime: the OTLP exporter's gRPC
/// channel lives on it.
pub(crate) fn init(
    log: &str,
    format: LogFormat,
    otlp: Option<&str>,
    service: &'static str,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let Some(endpoint) = otlp.filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_id_generator(rehearse_coordinator::trace::JobIds::default())
        .with_resource(
            resource
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    rehearse_coordinator::trace::install(provider.tracer("rehearse-coordinator"));
    // Rehearse's own spans, and warnings and errors as span events; nothing from dependencies.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("rehearse"))
        .with_threads(false)
        .with_location(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|meta| {
            meta.target().starts_with("rehearse")
                && (meta.is_span() || *meta.level() <= Level::WARN)
        }));
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}
