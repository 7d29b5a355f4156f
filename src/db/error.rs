//! The database error type. Owns turning tokio-postgres errors into messages that carry the
//! whole cause chain (tokio-postgres' own Display says only "db error") with the password
//! redacted (SPEC §10). No variant holds a foreign error: a foreign `Debug`/`Display` could echo
//! the connection string, so only redacted strings are kept, and `Debug` is as safe as `Display`.

use std::error::Error as _;
use std::time::Duration;

use super::redact::redact_text;

/// SQLSTATE 53300: the server has no free connection slot ("sorry, too many clients already").
pub const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";

/// Every failure of corral's own database connection. Display and Debug never contain the
/// password: every message went through [`redact_text`] and `target` through `redact`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse; `url` is redacted.
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The URL asks for TLS (`sslmode=require`), which this build cannot do yet.
    #[error(
        "cannot connect to {target}: the URL requires TLS (sslmode=require), which corral does \
         not support yet; use sslmode=prefer or disable for now"
    )]
    TlsUnsupported { target: String },

    /// Connecting (TCP, TLS negotiation, authentication, startup) failed.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        target: String,
        message: String,
        /// SQLSTATE when the server refused (e.g. 53300 too many connections, 28P01 password).
        sqlstate: Option<String>,
    },

    /// A statement failed or the connection broke during it.
    #[error("{what} failed: {message}")]
    Query {
        what: &'static str,
        message: String,
        sqlstate: Option<String>,
    },

    /// The operation (connect and query together) did not finish within its timeout.
    #[error("{what} timed out after {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },

    /// The server answered something we cannot interpret.
    #[error("{what}: unexpected answer from the server: {message}")]
    Unexpected { what: &'static str, message: String },
}

impl DbError {
    /// The server's SQLSTATE, when the server itself refused.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Connect { sqlstate, .. } | DbError::Query { sqlstate, .. } => {
                sqlstate.as_deref()
            }
            _ => None,
        }
    }

    /// The server was full: the situation corral's own kept connection exists to survive (§5).
    pub fn is_too_many_connections(&self) -> bool {
        self.sqlstate() == Some(SQLSTATE_TOO_MANY_CONNECTIONS)
    }

    pub(crate) fn connect(target: &str, err: &tokio_postgres::Error, url: &str) -> DbError {
        DbError::Connect {
            target: target.to_string(),
            message: describe(err, url),
            sqlstate: err.code().map(|c| c.code().to_string()),
        }
    }

    pub(crate) fn query(what: &'static str, err: &tokio_postgres::Error, url: &str) -> DbError {
        DbError::Query {
            what,
            message: describe(err, url),
            sqlstate: err.code().map(|c| c.code().to_string()),
        }
    }
}

/// The error and its sources joined by ": " (tokio-postgres puts the useful part, e.g. the
/// server's "FATAL: password authentication failed", in the source), password redacted.
pub(crate) fn describe(err: &tokio_postgres::Error, url: &str) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    redact_text(&msg.replace('\n', " "), url)
}
