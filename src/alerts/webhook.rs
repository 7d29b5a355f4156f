//! One webhook POST (SPEC §9): HTTP/1.1 over TCP, or over TLS with rustls and the system's
//! roots (`db::tls::system_roots`: `SSL_CERT_FILE` works, Mozilla's roots without a bundle).
//! Host names are resolved without NSS (`lookup::hosts`), as for the database.
//!
//! Owns only the request: the caller bounds it with its timeout and decides about retries
//! from [`PostError::retryable`]. Must not put the URL in an error (its path is the secret).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::WebhookUrl;

/// A response body is read up to this much, then dropped (receivers answer "ok").
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostError {
    pub message: String,
    /// Worth another attempt: the network, a timeout, 5xx, 429, 408. A 4xx is not.
    pub retryable: bool,
}

impl PostError {
    fn retry(message: impl Into<String>) -> PostError {
        PostError { message: message.into(), retryable: true }
    }
}

/// The TLS config for webhooks, built once per delivery task (reading the CA bundle is file
/// I/O: done on a blocking thread, never on the actor's).
pub async fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = tokio::task::spawn_blocking(|| crate::db::tls::system_roots().0).await.unwrap_or_else(|_| {
        let mut s = rustls::RootCertStore::empty();
        s.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        s
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // ring supports the default versions; this arm only keeps expect() out of runtime paths.
        Err(_) => rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth(),
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// POST `body` (JSON) to `url`. Ok: the status was 2xx.
pub async fn post(url: &WebhookUrl, body: Bytes, tls: &Arc<rustls::ClientConfig>) -> Result<u16, PostError> {
    let addrs = crate::lookup::hosts::resolve(&url.host, url.port).await.map_err(PostError::retry)?;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    let Some(tcp) = stream else {
        return Err(PostError::retry(last.unwrap_or_else(|| format!("no address for {}", url.host))));
    };
    let _ = tcp.set_nodelay(true);
    if url.https {
        let name = ServerName::try_from(url.host.clone()).map_err(|e| PostError { message: format!("invalid TLS server name {:?}: {e}", url.host), retryable: false })?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| {
            let retryable = !matches!(e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()), Some(rustls::Error::InvalidCertificate(_)));
            let hint = if retryable { "" } else { " (set SSL_CERT_FILE to the CA that signed it, for a private CA)" };
            PostError { message: format!("TLS handshake with {} failed: {e}{hint}", url.host), retryable }
        })?;
        exchange(tls, url, body).await
    } else {
        exchange(tcp, url, body).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, url: &WebhookUrl, body: Bytes) -> Result<u16, PostError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| PostError::retry(format!("HTTP handshake with {} failed: {e}", url.host)))?;
    // The connection is driven by a task of its own, aborted with the request (when it is
    // answered, fails, or the caller's timeout drops it), so a hanging receiver holds nothing.
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let len = body.len();
    let mut req = hyper::Request::post(url.path.as_str())
        .header(HOST, url.host_header())
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, len)
        .header(USER_AGENT, concat!("corral/", env!("CARGO_PKG_VERSION")));
    if let Some(auth) = &url.basic_auth {
        req = req.header(AUTHORIZATION, auth.as_str());
    }
    let req = req.body(Full::new(body)).map_err(|e| PostError { message: format!("cannot build the request: {e}"), retryable: false })?;
    {
        let resp = sender.send_request(req).await.map_err(|e| PostError::retry(format!("POST to {} failed: {e}", url.host)))?;
        let status = resp.status();
        // Read (a bounded part of) the body so the receiver sees a clean close.
        let mut body = resp.into_body();
        let mut read = 0usize;
        let mut text = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(chunk) = frame.data_ref() {
                read += chunk.len();
                if text.len() < 200 {
                    text.extend_from_slice(&chunk[..chunk.len().min(200 - text.len())]);
                }
                if read > MAX_BODY {
                    break;
                }
            }
        }
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let snippet = String::from_utf8_lossy(&text).trim().to_string();
        let retryable = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
        Err(PostError { message: format!("{} answered {status}{}", url.host, if snippet.is_empty() { String::new() } else { format!(": {snippet}") }), retryable })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
