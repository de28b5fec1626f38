//! Calls to the backend: webhooks, the connect and join proxy, and RPC all POST signed JSON
//! through one keep-alive HTTP client on the server's runtime. Every call is bounded in time
//! (the whole exchange, answer included) and in the size of the answer it reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Sha256;

use crate::config::{Secret, ServerConfig};

/// The largest answer read from the backend (a connect or RPC answer); larger ones fail the
/// call, so a backend bug cannot make the server buffer without bound.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a call to the backend got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No complete answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (refused, reset, DNS).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The answer's body was larger than the bound.
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// The HTTP client every call to the backend goes through, and the secrets that sign them.
#[derive(Debug)]
pub struct Backend {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    secrets: Vec<Secret>,
}

/// Why the client for `https://` backends could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl Backend {
    /// A client signing with `webhook.secret`, for `http://` and `https://` backends. Over
    /// TLS it trusts the system's roots, or only the CAs in `webhook.ca_file` when set (a
    /// private CA, like `redis.ca_file`).
    pub fn new(config: &ServerConfig) -> Result<Self, TlsError> {
        let cfg = &config.webhook;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsError(format!("webhook.ca_file {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError(format!(
                        "webhook.ca_file {}: no certificate in it",
                        path.display()
                    )));
                }
            }
            // Reading the system's roots takes a while: only for an https:// backend. Missing
            // roots fail its calls (and say why) rather than the server's start.
            None if config
                .backend_urls()
                .any(|(_, u)| u.scheme_str() == Some("https")) =>
            {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
            None => {}
        }
        let tls = builder.with_root_certificates(roots).with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            secrets: cfg.secrets.clone(),
        })
    }

    /// POSTs `body` (JSON) to `url`, signed, and reads the answer (at most
    /// [`MAX_ANSWER_BYTES`]) within `timeout`.
    pub async fn post(
        &self,
        url: &hyper::Uri,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let t = now_ms() / 1000;
        let request = hyper::Request::post(url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("switchboard-signature", signature(&self.secrets, t, &body))
            .body(Full::new(body))
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        CallError::TooLarge
                    } else {
                        CallError::Unreachable(e.to_string())
                    }
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout(timeout)))
    }
}

/// `Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` for every
/// secret.
pub fn signature(secrets: &[Secret], t: u64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.0.as_bytes()) else {
            continue;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        header.push_str(",v1=");
        for byte in mac.finalize().into_bytes() {
            header.push_str(&format!("{byte:02x}"));
        }
    }
    header
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_signs_the_timestamp_and_the_body() {
        let secrets = [Secret("old".into()), Secret("new".into())];
        let header = signature(&secrets, 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3, "one v1= per secret");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"new").unwrap();
        mac.update(b"1700000000.{}");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(parts[2], format!("v1={expected}"));
        assert_ne!(parts[1], parts[2]);
    }
}
