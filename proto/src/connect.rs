//! Reaching "any replica": clients are given several controller addresses and fail over
//! between them by themselves.
//!
//! Only transport failures move on to the next address. A status the controller produced
//! (tagged with [`SERVER_ERROR_KEY`]) is the answer, even `Unavailable` for a lost quorum:
//! asking another replica the same question would not change it, and retrying a write that
//! may have been applied is not this layer's call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::names::SERVER_ERROR_KEY;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no controller address given")]
    NoAddress,
    #[error("invalid controller address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
}

/// A set of controller replicas with one cached channel each.
pub struct Controllers {
    addrs: Vec<String>,
    channels: Vec<Mutex<Option<Channel>>>,
    /// Index of the replica that answered last; tried first next time.
    preferred: AtomicUsize,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Mutual TLS toward every replica, when configured (see [`crate::tls`]).
    tls: Option<ClientTlsConfig>,
}

impl Controllers {
    /// `addrs` are `host:port` (or `http://host:port`), as given to `--controller`.
    pub fn new(
        addrs: &[String],
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let addrs: Vec<String> = addrs
            .iter()
            .flat_map(|a| a.split(','))
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| {
                if a.contains("://") {
                    a.to_string()
                } else {
                    format!("http://{a}")
                }
            })
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress);
        }
        for addr in &addrs {
            Endpoint::from_shared(addr.clone()).map_err(|e| ConnectError::BadAddress {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        }
        let channels = addrs.iter().map(|_| Mutex::new(None)).collect();
        Ok(Self {
            addrs,
            channels,
            preferred: AtomicUsize::new(0),
            connect_timeout,
            request_timeout,
            tls: None,
        })
    }

    /// Speaks mutual TLS to every replica. Every address is reached over `https://`,
    /// whatever scheme it was given with (tonic only does TLS for exactly `https`, so a
    /// `HTTP://` left alone would go in plaintext): with TLS configured nothing does.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        if tls.is_some() {
            for addr in &mut self.addrs {
                let rest = addr.split_once("://").map_or(addr.as_str(), |(_, rest)| rest);
                *addr = format!("https://{rest}");
            }
        }
        self.tls = tls;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    async fn channel(&self, i: usize) -> Result<Channel, tonic::transport::Error> {
        if let Some(ch) = self.channels[i].lock().ok().and_then(|g| g.clone()) {
            return Ok(ch);
        }
        let endpoint = Endpoint::from_shared(self.addrs[i].clone())
            .expect("validated in new")
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true);
        let endpoint = match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        };
        let ch = endpoint.connect().await?;
        if let Ok(mut slot) = self.channels[i].lock() {
            *slot = Some(ch.clone());
        }
        Ok(ch)
    }

    fn forget(&self, i: usize) {
        if let Ok(mut slot) = self.channels[i].lock() {
            *slot = None;
        }
    }

    /// A plaintext request that reached a TLS server fails as an HTTP/2 protocol error
    /// (the server answered with TLS bytes): add what the operator probably forgot.
    fn explain(&self, status: tonic::Status) -> tonic::Status {
        let untagged = status.metadata().get(SERVER_ERROR_KEY).is_none();
        if self.tls.is_none() && untagged && status.message().contains("h2 protocol error") {
            return tonic::Status::new(status.code(), format!("{}{TLS_HINT}", status.message()));
        }
        status
    }

    /// Runs `call` against one replica after another until one answers. Returns the last
    /// transport error, worded for a person, when none does.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.addrs.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let ch = match self.channel(i).await {
                Ok(ch) => ch,
                Err(e) => {
                    failures.push(format!("{}: {}", self.addrs[i], describe_transport(&e)));
                    continue;
                }
            };
            match call(ch).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(status) if is_transport_failure(&status) => {
                    self.forget(i);
                    failures.push(format!("{}: {}", self.addrs[i], status.message()));
                }
                Err(status) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Err(self.explain(status));
                }
            }
        }
        // A plaintext client talking to a TLS server sees its connection dropped with no
        // more than "transport error": say what is probably missing.
        let hint = if self.tls.is_none() && failures.iter().any(|f| f.ends_with("transport error")) {
            TLS_HINT
        } else {
            ""
        };
        Err(tonic::Status::unavailable(format!(
            "no controller reachable ({}){hint}",
            failures.join("; ")
        )))
    }
}

const TLS_HINT: &str = "; if the controllers run mutual TLS, give --tls-ca, --tls-cert and --tls-key";

/// A status the server did not produce itself: the connection or the call's transport failed.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    if status.metadata().get(SERVER_ERROR_KEY).is_some() {
        return false;
    }
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

fn describe_transport(e: &tonic::transport::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_tls_nothing_is_dialled_in_plaintext() -> Result<(), ConnectError> {
        let given = [
            "ctl1:7400".to_string(),
            "http://192.0.2.11:7400".to_string(),
            "HTTP://192.0.2.12:7400".to_string(),
        ];
        let t = Duration::from_secs(1);
        let plain = Controllers::new(&given, t, t)?;
        assert_eq!(plain.addrs()[..2], ["http://ctl1:7400", "http://192.0.2.11:7400"]);
        let tls = Controllers::new(&given, t, t)?.with_tls(Some(ClientTlsConfig::new()));
        assert_eq!(
            tls.addrs(),
            [
                "https://ctl1:7400",
                "https://192.0.2.11:7400",
                "https://192.0.2.12:7400"
            ]
        );
        Ok(())
    }
}
