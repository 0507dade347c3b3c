//! Every accepted connection has [`PREFACE_TIMEOUT`] to show that it speaks HTTP/2; one that
//! does not is closed. Without this bound, hyper waits for the client preface forever, and
//! 250 silent sockets hold 250 tasks and descriptors for as long as their owner likes.
//!
//! How a connection proves itself depends on what the replica can see of it:
//! - plaintext: the 24 bytes of the HTTP/2 client preface, checked as they arrive (anything
//!   else is refused at once);
//! - TLS: below the TLS layer the bytes are ciphertext, so the proof is the first request
//!   that reaches the services ([`ProveLayer`] reports it by the connection's addresses).
//!   tonic's own TLS handshake timeout falls inside the same 10 s.
//!
//! A proven connection is left alone; HTTP/2 keepalive (see `server.rs`) then drops it if
//! its peer dies.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// How long a new connection may take to send the HTTP/2 client preface (TLS handshake
/// included).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's local and remote address: unique among the open connections of a listener.
type ConnKey = (SocketAddr, SocketAddr);

/// Connections accepted but not yet proven, by their addresses.
#[derive(Clone)]
pub struct Unproven {
    waiting: Arc<Mutex<HashMap<ConnKey, Arc<AtomicBool>>>>,
    timeout: Duration,
}

impl Default for Unproven {
    fn default() -> Self {
        Self::with_timeout(PREFACE_TIMEOUT)
    }
}

impl Unproven {
    /// Connections get `timeout` (instead of [`PREFACE_TIMEOUT`]) to prove themselves.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            waiting: Arc::default(),
            timeout,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ConnKey, Arc<AtomicBool>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request arrived on the connection `key`: it speaks HTTP/2.
    fn prove(&self, key: ConnKey) {
        if let Some(flag) = self.map().remove(&key) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Connections still waiting to prove themselves (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wraps an accepted connection; `tls` says whether its bytes will be ciphertext.
    pub fn guard(&self, stream: TcpStream, tls: bool) -> Guarded {
        let proven = Arc::new(AtomicBool::new(false));
        let key = stream.local_addr().ok().zip(stream.peer_addr().ok());
        if let Some(key) = key {
            self.map().insert(key, proven.clone());
        }
        Guarded {
            inner: stream,
            deadline: Some(Box::pin(tokio::time::sleep(self.timeout))),
            timeout: self.timeout,
            preface_matched: (!tls).then_some(0),
            proven,
            key,
            registry: self.clone(),
        }
    }
}

/// An accepted TCP connection that is closed (reads fail) unless it proves within
/// [`PREFACE_TIMEOUT`] that it speaks HTTP/2.
pub struct Guarded {
    inner: TcpStream,
    /// Armed until the connection has proven itself.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    /// Plaintext only: how many bytes of the preface have arrived so far.
    preface_matched: Option<usize>,
    /// Set by [`Unproven::prove`] when a request arrives.
    proven: Arc<AtomicBool>,
    key: Option<ConnKey>,
    registry: Unproven,
}

impl Guarded {
    fn disarm(&mut self) {
        self.deadline = None;
        self.preface_matched = None;
        if let Some(key) = self.key.take() {
            self.registry.map().remove(&key);
        }
    }

    /// Checks bytes just read against the rest of the preface.
    fn check_preface(&mut self, new: &[u8]) -> io::Result<()> {
        let Some(matched) = self.preface_matched else {
            return Ok(());
        };
        let want = &PREFACE[matched..];
        let n = new.len().min(want.len());
        if new[..n] != want[..n] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP/2 client: wrong connection preface",
            ));
        }
        if matched + n == PREFACE.len() {
            self.disarm();
        } else {
            self.preface_matched = Some(matched + n);
        }
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.registry.map().remove(&key);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.proven.load(Ordering::Acquire) {
            this.disarm();
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The read below stays pending, so this wakes the connection's task when the
            // time is up: the error closes the connection.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no HTTP/2 preface within {:?}", this.timeout),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.preface_matched.is_some() {
            this.check_preface(&buf.filled()[before..])?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    // The plain TCP info, so `remote_addr()` and the TLS peer certificates read as before.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Marks a connection proven when a request arrives on it.
#[derive(Clone)]
pub struct ProveLayer(pub Unproven);

impl<S> tower::Layer<S> for ProveLayer {
    type Service = Prove<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Prove {
            inner,
            unproven: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Prove<S> {
    inner: S,
    unproven: Unproven,
}

impl<S, B> tower::Service<http::Request<B>> for Prove<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ext = req.extensions();
        let info = ext
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
            .or_else(|| ext.get::<TcpConnectInfo>());
        if let Some(key) = info.and_then(|i| i.local_addr().zip(i.remote_addr())) {
            self.unproven.prove(key);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair(unproven: &Unproven, tls: bool) -> (Guarded, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (unproven.guard(server, tls), client)
    }

    #[tokio::test]
    async fn the_preface_in_pieces_proves_a_plaintext_connection() {
        let unproven = Unproven::default();
        let (mut server, mut client) = pair(&unproven, false).await;
        assert_eq!(unproven.len(), 1);
        let mut buf = [0u8; 64];
        for piece in PREFACE.chunks(5) {
            client.write_all(piece).await.unwrap();
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], piece);
        }
        assert!(server.deadline.is_none() && unproven.is_empty());
        // Afterwards anything goes: it is HTTP/2 framing now.
        client.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap();
        assert!(server.read(&mut buf).await.is_ok());
    }

    #[tokio::test]
    async fn anything_else_is_refused_at_once() {
        let unproven = Unproven::default();
        let (mut server, mut client) = pair(&unproven, false).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let err = server.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(server);
        assert!(unproven.is_empty(), "a dropped connection leaves no entry");
    }

    #[tokio::test]
    async fn silence_times_out_and_a_request_proves_a_tls_connection() {
        let unproven = Unproven::with_timeout(Duration::from_millis(200));
        let (mut silent, _c1) = pair(&unproven, false).await;
        let err = silent.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut tls, mut c2) = pair(&unproven, true).await;
        // Ciphertext is not checked against the preface.
        c2.write_all(b"\x16\x03\x01 handshake bytes").await.unwrap();
        assert!(tls.read(&mut [0u8; 64]).await.is_ok());
        let key = (tls.inner.local_addr().unwrap(), tls.inner.peer_addr().unwrap());
        unproven.prove(key);
        tokio::time::sleep(Duration::from_millis(400)).await;
        c2.write_all(b"more").await.unwrap();
        assert!(
            tls.read(&mut [0u8; 64]).await.is_ok(),
            "proven: no deadline any more"
        );
        assert!(tls.deadline.is_none());
    }
}
