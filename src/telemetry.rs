//! Log output: human-readable lines or JSON lines on stderr, filtered by `RELAY_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Targets held down whatever `RELAY_LOG` says: the PostgreSQL driver logs statement parameters,
/// signing secrets among them, at DEBUG (held at INFO); the certificate verifier logs every
/// refused certificate at ERROR, which the relay already reports where it matters — as the
/// attempt's error, or as the one line a refused database connection stops the start with.
const QUIET_TARGETS: &[&str] =
    &["tokio_postgres::query=info", "tokio_postgres::prepare=info", "rustls_platform_verifier=off"];

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(filter: &str, format: LogFormat) {
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in QUIET_TARGETS {
        filter = filter.add_directive(directive.parse().expect("the directives are valid"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
