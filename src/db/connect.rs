//! How corral's own connections (the probe, and in fleet scope the coordination connection)
//! are configured and opened. One place, so both get the same attribution, the same TLS
//! refusal and the same record of why a connection died.
//!
//! Must not: log or return the password (messages go through `describe`/`redact`).

use std::sync::{Arc, Mutex};

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

use super::error::{describe, DbError};
use crate::lookup::postgres::Failure;
use super::redact::redact;
use super::usage::Attribution;

/// Why a connection's task ended, once it did (redacted).
pub type Death = Arc<Mutex<Option<String>>>;

/// Parses `url` (URL or key=value form) into the config of one of corral's own connections,
/// named `corral/<service>/_corral`. Returns it with the redacted target for messages.
pub fn own_config(url: &str, service: &str) -> Result<(Config, String), DbError> {
    let target = redact(url);
    let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| DbError::InvalidUrl {
        url: target.clone(),
        reason: describe(&e, url),
    })?;
    // TODO(tls): Supabase hands out URLs with sslmode=require (direct and pooler alike).
    // Add a TLS connector (tokio-postgres-rustls, honouring sslmode and sslrootcert) in place
    // of NoTls; until then fail clearly instead of with tokio-postgres' "no TLS implementation
    // configured". `prefer` falls back to plaintext with NoTls.
    if config.get_ssl_mode() == SslMode::Require {
        return Err(DbError::TlsUnsupported { target });
    }
    // Overrides any application_name in the URL: our connections must be attributed to us.
    config.application_name(Attribution::corral_application_name(service));
    Ok((config, target))
}

/// Opens a connection and drives it on a task. The connection task's error, the best
/// explanation of a broken connection, lands in the returned [`Death`].
pub async fn open(config: &Config, target: &str, url: &str) -> Result<(Client, Death), DbError> {
    // Host names resolve without NSS (the binary is static): see `lookup::postgres`.
    let connected = crate::lookup::postgres::connect_each(config, |c| async move { c.connect(NoTls).await }).await;
    let (client, connection) = connected.map_err(|e| match e {
        Failure::Connect(e) => DbError::connect(target, &e, url),
        Failure::Resolve(message) => DbError::Connect { target: target.to_string(), message, sqlstate: None },
    })?;
    let died: Death = Arc::new(Mutex::new(None));
    let (slot, url) = (died.clone(), url.to_string());
    // It ends when the Client is dropped or the server goes away.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            if let Ok(mut d) = slot.lock() {
                *d = Some(describe(&e, &url));
            }
        }
    });
    Ok((client, died))
}
