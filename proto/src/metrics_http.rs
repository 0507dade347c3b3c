//! The `--metrics-listen` endpoint of the controller and the agent: the Prometheus/OpenMetrics
//! text format at `GET /metrics`. Gauges that mirror state are refreshed at each scrape, so a
//! scrape always shows the state of that moment and nothing is computed between scrapes.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// Produces the page: sets the gauges that mirror current state, then encodes the registry.
pub type Render = Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync>;

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` in the text format.
pub fn encode_registry(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    Ok(text)
}

/// Serves the page that `render` produces on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, render: Render) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match render() {
                    Ok(text) => ([(CONTENT_TYPE, CONTENT)], text).into_response(),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics: {e}"),
                    )
                        .into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app).await
}

/// Binds `addr` for [`serve`], with an error that names the flag.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))
}
