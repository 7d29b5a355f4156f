//! The database error type. Owns turning tokio-postgres errors into messages that carry the
//! whole cause chain (tokio-postgres' own Display says only "db error") with the password
//! redacted (SPEC §10). No variant holds a foreign error: a foreign `Debug`/`Display` could echo
//! the connection string, so only redacted strings are kept, and `Debug` is as safe as `Display`.

use std::error::Error as _;
use std::time::Duration;

use super::redact::redact_text;

/// SQLSTATE 53300: the server has no free connection slot ("sorry, too many clients already").
pub const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";

/// How [`DbError::Tls`] begins when the server refused plaintext.
const REQUIRES_TLS: &str = "the server requires TLS";

/// Every failure of corral's own database connection. Display and Debug never contain the
/// password: every message went through [`redact_text`] and `target` through `redact`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse; `url` is redacted.
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// TLS could not be set up or the handshake failed, or the server wants TLS the URL does
    /// not ask for: what went wrong and the fix (SPEC §5.1).
    #[error("cannot connect to {target}: {problem}; {fix}")]
    Tls { target: String, problem: String, fix: String },

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

    /// The server refused a plaintext connection (pg_hba.conf has only `hostssl` lines, a
    /// pooler with TLS required): libpq's `allow` then retries with TLS.
    pub fn server_requires_tls(&self) -> bool {
        matches!(self, DbError::Tls { problem, .. } if problem.starts_with(REQUIRES_TLS))
    }

    pub(crate) fn connect(target: &str, err: &tokio_postgres::Error, url: &str) -> DbError {
        let mut source = err.source();
        while let Some(s) = source {
            if let Some(h) = s.downcast_ref::<super::tls::Handshake>() {
                return DbError::Tls { target: target.to_string(), problem: h.problem.clone(), fix: h.fix.clone() };
            }
            source = s.source();
        }
        let message = describe(err, url);
        // PostgreSQL: `no pg_hba.conf entry for host "...", user "...", database "...", no
        // encryption` (28000); PgBouncer: `SSL required`; Supavisor: `SSL connection is required`.
        let code = err.code().map(|c| c.code());
        if (code == Some("28000") && message.contains("no encryption")) || message.contains("SSL required") || message.contains("SSL connection is required") {
            return DbError::Tls {
                target: target.to_string(),
                problem: format!("{REQUIRES_TLS} ({})", message.rsplit(": ").next().unwrap_or(&message)),
                fix: "add sslmode=require to the URL, or sslmode=verify-full with sslrootcert=FILE to also check the server".into(),
            };
        }
        if message.contains("server does not support TLS") {
            return DbError::Tls {
                target: target.to_string(),
                problem: "the server does not accept TLS connections".into(),
                fix: "use sslmode=prefer or disable, or turn on ssl in the server (or pooler)".into(),
            };
        }
        DbError::Connect {
            target: target.to_string(),
            message,
            sqlstate: code.map(str::to_string),
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
