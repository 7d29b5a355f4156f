//! How corral's own connections (its one database connection, and the PgBouncer admin
//! console) are configured and opened. One place, so each gets the same attribution, the same
//! TLS (SPEC §5.1: libpq's `sslmode`) and the same record of why a connection died.
//!
//! Must not: log or return the password (messages go through `describe`/`redact`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_postgres::config::{SslMode as DriverSslMode, SslNegotiation};
use tokio_postgres::{Client, Config, NoTls};

use super::conninfo::{ConnInfo, SslMode, TlsSettings};
use super::error::{describe, DbError};
use super::tls::{Connector, TlsInfo};
use crate::lookup::postgres::{connect_each, Failure};

/// Why a connection's task ended, once it did (redacted).
pub type Death = Arc<Mutex<Option<String>>>;

/// Where one of corral's own connections goes, parsed once.
#[derive(Clone)]
pub struct Target {
    /// The URL as configured: only ever used as the key for `redact_text`, never printed.
    url: String,
    /// `redact(url)`: how messages name the database.
    redacted: String,
    config: Config,
    tls: TlsSettings,
    /// Relative certificate paths start here (the manifest's directory).
    base_dir: PathBuf,
    unix_socket: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("target", &self.redacted).field("sslmode", &self.tls.mode).finish_non_exhaustive()
    }
}

/// A freshly opened connection.
pub struct Opened {
    pub client: Client,
    pub died: Death,
    /// None: plaintext.
    pub tls: Option<TlsInfo>,
}

impl Target {
    /// Parses `url` (URL or key=value form) for a connection named `application_name`
    /// (which overrides any in the URL: our connections must be attributed to us).
    pub fn new(url: &str, application_name: &str, base_dir: &Path) -> Result<Target, DbError> {
        let redacted = super::redact(url);
        let invalid = |e: super::conninfo::ConnInfoError| DbError::InvalidUrl {
            url: redacted.clone(),
            reason: match &e.hint {
                Some(h) => format!("{}; {h}", e.message),
                None => e.message.clone(),
            },
        };
        let info = ConnInfo::parse(url).map_err(invalid)?;
        let tls = info.tls().map_err(invalid)?;
        let mut config = info.driver_config().map_err(invalid)?;
        config.application_name(application_name);
        let unix_socket = info.hosts().first().is_some_and(|h| h.starts_with('/'));
        Ok(Target { url: url.to_string(), redacted, config, tls, base_dir: base_dir.to_path_buf(), unix_socket })
    }

    /// The database as messages name it (password redacted).
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn tls_settings(&self) -> &TlsSettings {
        &self.tls
    }

    /// Opens a connection and drives it on a task. The connection task's error, the best
    /// explanation of a broken connection, lands in the returned [`Death`].
    pub async fn open(&self) -> Result<Opened, DbError> {
        // libpq never uses TLS on a unix socket (PostgreSQL refuses it there).
        let mode = if self.unix_socket { SslMode::Disable } else { self.tls.mode };
        match mode {
            SslMode::Disable => self.plain().await,
            // libpq's allow: plaintext first, TLS when the server refuses plaintext.
            SslMode::Allow => match self.plain().await {
                Err(e) if e.server_requires_tls() => self.encrypted(DriverSslMode::Require, &TlsSettings { mode: SslMode::Require, ..self.tls.clone() }).await,
                other => other,
            },
            SslMode::Prefer => self.encrypted(DriverSslMode::Prefer, &self.tls).await,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => self.encrypted(DriverSslMode::Require, &self.tls).await,
        }
    }

    async fn plain(&self) -> Result<Opened, DbError> {
        let mut config = self.config.clone();
        config.ssl_mode(DriverSslMode::Disable);
        // Host names resolve without NSS (the binary is static): see `lookup::postgres`.
        let connected = connect_each(&config, |c| async move { c.connect(NoTls).await }).await;
        let (client, connection) = connected.map_err(|e| self.failure(e))?;
        Ok(Opened { client, died: drive(connection, &self.url), tls: None })
    }

    async fn encrypted(&self, mode: DriverSslMode, settings: &TlsSettings) -> Result<Opened, DbError> {
        let connector = Connector::new(settings, &self.base_dir)
            .map_err(|h| DbError::Tls { target: self.redacted.clone(), problem: h.problem, fix: h.fix })?;
        let slot = connector.slot();
        let mut config = self.config.clone();
        config.ssl_mode(mode);
        if settings.direct {
            config.ssl_negotiation(SslNegotiation::Direct);
        }
        let connected = connect_each(&config, |c| {
            let connector = connector.clone();
            async move { c.connect(connector).await }
        })
        .await;
        let (client, connection) = connected.map_err(|e| self.failure(e))?;
        let tls = slot.lock().ok().and_then(|s| s.clone());
        Ok(Opened { client, died: drive(connection, &self.url), tls })
    }

    fn failure(&self, e: Failure<tokio_postgres::Error>) -> DbError {
        match e {
            Failure::Connect(e) => DbError::connect(&self.redacted, &e, &self.url),
            Failure::Resolve(message) => DbError::Connect { target: self.redacted.clone(), message, sqlstate: None },
        }
    }
}

fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, url: &str) -> Death
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static + Send,
{
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
    died
}
