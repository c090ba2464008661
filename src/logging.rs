//! Logging: the level and format of `--log-level` / `--log-format`.

/// Sets up logging: level and text or JSON lines on stderr.
pub fn init(level: &str, format: &str) {
    let level = match level {
        "error" => tracing::Level::ERROR,
        "warning" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(false).init();
    }
}
