//! Reaching the controller, in one place, so every noun dials and retries the same way.

use std::time::Duration;

use overlay_proto::connect::Controllers;
use overlay_proto::tls::{Purpose, Tls, TlsArgs};
use overlay_proto::v1::overlay_client::OverlayClient;
use tonic::transport::Channel;

use crate::failure::Failure;

/// The replicas given by `--controller`, over TLS when the TLS flags say so. Dials nothing yet.
pub fn connect(controller: &str, tls: &TlsArgs) -> Result<Controllers, Failure> {
    let tls = tls
        .load_for(Purpose::Connect)
        .map_err(|e| Failure::Message(e.to_string()))?;
    let controllers = Controllers::new(
        &[controller.to_string()],
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .map_err(|e| Failure::Message(e.to_string()))?
    .with_tls(tls.as_ref().map(Tls::client_config));
    Ok(controllers)
}

/// One RPC on the first replica that answers.
pub async fn call<T, F, Fut>(controllers: &Controllers, mut f: F) -> Result<T, Failure>
where
    F: FnMut(OverlayClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let resp = controllers.call(|ch| f(OverlayClient::new(ch))).await?;
    Ok(resp.into_inner())
}
