//! The ONE reader of PostgreSQL connection strings (SPEC §2 `[database] url`, §3, §5.1, §10):
//! URLs (`postgres://user:pass@host:port/db?key=value`) and libpq `key=value` strings.
//!
//! Owns: tokenizing both forms into settings with their byte spans; the strict checks a URL
//! must pass before corral or any job uses it (a password with an unencoded `@`, `:`, `/`, `?`
//! or `#` is read differently by libpq, tokio-postgres, SQLAlchemy and asyncpg, so it is an
//! error that says to percent-encode it); redaction ([`ConnInfo::redacted`], and the lenient
//! [`secret_spans`] that `redact` uses on text that may not parse); `application_name`
//! injection for jobs ([`ConnInfo::with_application_name`], everything else kept as written);
//! and the driver's view ([`ConnInfo::driver_config`] for tokio-postgres, [`TlsSettings`]).
//!
//! Must not: do I/O (certificate files are read by `db::tls`), or put a password into any
//! error message. Pure: property-tested against `tokio_postgres::Config` as the oracle.

use std::path::PathBuf;

/// What replaces a secret in printed text.
pub const MASK: &str = "***";

/// A connection string that passed the strict checks.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    text: String,
    form: Form,
    settings: Vec<Setting>,
}

// Never print the text: it holds the password.
impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnInfo").field(&self.redacted()).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `query` is the byte index of the `?` that starts the query, if any.
    Url { query: Option<usize> },
    KeyValue,
}

/// One setting, in the order written. The last of a key wins, as in libpq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// Percent-decoded (URL) or unquoted and unescaped (key=value).
    pub value: String,
    /// Where it came from; its span in the text when it is a query parameter or an entry.
    origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `user` or `password` of a URL's userinfo.
    Userinfo,
    /// A host (and its port) of a URL's authority, one per comma-separated host.
    Netloc,
    /// The dbname of a URL's path.
    Path,
    /// A `key=value` of a URL's query: (start, end) of the whole parameter.
    Query(usize, usize),
    /// A `key = value` entry of a key=value string: (start, end), and the value's start.
    Entry(usize, usize, usize),
}

/// Why a connection string cannot be used. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnInfoError {
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl ConnInfoError {
    fn new(message: impl Into<String>, hint: Option<&str>) -> ConnInfoError {
        ConnInfoError { message: message.into(), hint: hint.map(str::to_string) }
    }
}

/// libpq's `sslmode` (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// The trust anchors for the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM or DER file, as written (a relative path is resolved by `db::tls`).
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted roots.
    System,
}

/// The TLS part of a connection string, as libpq reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// After libpq's implications: `require` with `sslrootcert` is `verify-ca`,
    /// `sslrootcert=system` without `sslmode` is `verify-full`.
    pub mode: SslMode,
    /// The mode as written (None: not given, libpq's default `prefer`).
    pub written: Option<SslMode>,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `sslpassword` was given: the key is encrypted, which corral cannot read (rustls).
    pub key_password: bool,
    /// `sslnegotiation=direct` (PostgreSQL 17): TLS from the first byte, no SSLRequest.
    pub direct: bool,
}

impl TlsSettings {
    /// The certificate chain is checked.
    pub fn verifies(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Keys passed to tokio-postgres as they are.
const DRIVER_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];
/// Keys `db::tls` implements.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslnegotiation"];
/// libpq keys that change nothing corral's own connection must honour (they still reach the
/// jobs, whose drivers read them): client-side defaults, Kerberos/GSS we never negotiate,
/// TLS knobs rustls already satisfies (SNI, no compression, TLS 1.2+).
const IGNORED_KEYS: &[&str] = &[
    "fallback_application_name",
    "client_encoding",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "sslcertmode",
    "passfile",
    "requiressl",
];
/// libpq keys corral cannot honour and must not silently drop.
const UNSUPPORTED_KEYS: &[(&str, &str)] = &[
    ("sslcrl", "corral does not check certificate revocation lists; remove sslcrl"),
    ("sslcrldir", "corral does not check certificate revocation lists; remove sslcrldir"),
    ("service", "corral does not read pg_service.conf; write the service's settings into the URL"),
    ("require_auth", "corral cannot restrict the authentication method; remove require_auth"),
    ("requirepeer", "corral cannot check the server process's user; remove requirepeer"),
    ("replication", "corral's connection is not a replication connection; remove replication"),
];

/// Characters that must be percent-encoded in a URL's password, with their encoding.
const PASSWORD_DELIMITERS: &[(char, &str)] = &[('@', "%40"), (':', "%3A"), ('/', "%2F"), ('?', "%3F"), ('#', "%23")];

impl ConnInfo {
    /// Tokenizes and checks `text` (a URL or a key=value string). A string that starts with a
    /// URL scheme is a URL; anything else is key=value.
    pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
        let (form, settings) = if let Some(start) = url_scheme_end(text) { parse_url(text, start)? } else { parse_kv(text)? };
        let info = ConnInfo { text: text.to_string(), form, settings };
        info.check_keys()?;
        info.tls()?;
        Ok(info)
    }

    /// The string as written (with the password: never print it).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_url(&self) -> bool {
        matches!(self.form, Form::Url { .. })
    }

    /// Every setting in the order written.
    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    /// The value of `key` that wins (the last one).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.iter().rev().find(|s| s.key == key).map(|s| s.value.as_str())
    }

    /// The hosts, in order (a URL's comma-separated hosts and `host=` settings alike).
    pub fn hosts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.settings.iter().filter(|s| s.key == "host") {
            match s.origin {
                // A URL's authority lists one host per setting; a `host=a,b` lists several,
                // except in a URL's query, where tokio-postgres takes the value as one host.
                Origin::Netloc | Origin::Query(..) => out.push(s.value.clone()),
                _ => out.extend(s.value.split(',').map(str::to_string)),
            }
        }
        out
    }

    /// The ports, in order; missing ones are 5432.
    pub fn ports(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for s in self.settings.iter().filter(|s| s.key == "port") {
            for p in s.value.split(',') {
                out.push(if p.is_empty() { 5432 } else { p.parse().unwrap_or(5432) });
            }
        }
        out
    }

    /// The first host and its port, as messages and pooler detection name the target.
    pub fn first_host_port(&self) -> (Option<String>, u16) {
        (self.hosts().into_iter().next(), self.ports().first().copied().unwrap_or(5432))
    }

    /// The string with every password replaced by `***`; everything else as written.
    pub fn redacted(&self) -> String {
        mask_spans(&self.text, &self.secret_spans())
    }

    /// Spans of the password and of `password`/`sslpassword` values, exactly as parsed.
    fn secret_spans(&self) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        if let Some(start) = url_scheme_end(&self.text) {
            let rest = &self.text[start..];
            if let Some(at) = libpq_userinfo_end(rest) {
                if let Some(colon) = rest[..at].find(':').filter(|c| c + 1 < at) {
                    spans.push((start + colon + 1, start + at));
                }
            }
        }
        for s in self.settings.iter().filter(|s| is_secret_key(&s.key)) {
            match s.origin {
                Origin::Query(a, z) => {
                    let v = self.text[a..z].find('=').map_or(z, |e| a + e + 1);
                    if v < z {
                        spans.push((v, z));
                    }
                }
                Origin::Entry(_, z, v) if v < z => spans.push((v, z)),
                _ => {}
            }
        }
        spans
    }

    /// The string with `application_name` set to `app` (SPEC §3), every other setting kept as
    /// written, in order. In a URL the value is percent-encoded except unreserved characters
    /// and `/`, which libpq, psycopg, SQLAlchemy and asyncpg all accept in a query, so the
    /// common case stays readable: `application_name=corral/scraper/layer1_5`.
    pub fn with_application_name(&self, app: &str) -> String {
        let is_app = |s: &Setting| s.key.eq_ignore_ascii_case("application_name");
        match self.form {
            Form::Url { query } => {
                let head = &self.text[..query.unwrap_or(self.text.len())];
                let mut params: Vec<&str> = self
                    .settings
                    .iter()
                    .filter(|s| !is_app(s))
                    .filter_map(|s| match s.origin {
                        Origin::Query(a, z) => Some(&self.text[a..z]),
                        _ => None,
                    })
                    .collect();
                let ours = format!("application_name={}", encode_query_value(app));
                params.push(&ours);
                format!("{head}?{}", params.join("&"))
            }
            Form::KeyValue => {
                let mut entries: Vec<String> = self
                    .settings
                    .iter()
                    .filter(|s| !is_app(s))
                    .filter_map(|s| match s.origin {
                        Origin::Entry(a, z, _) => Some(self.text[a..z].to_string()),
                        _ => None,
                    })
                    .collect();
                entries.push(format!("application_name={}", kv_quote(app)));
                entries.join(" ")
            }
        }
    }

    /// The TLS settings, with libpq's implications applied.
    pub fn tls(&self) -> Result<TlsSettings, ConnInfoError> {
        let written = match self.get("sslmode") {
            None => None,
            Some(v) => Some(SslMode::parse(v).ok_or_else(|| {
                ConnInfoError::new(
                    format!("invalid sslmode \"{v}\""),
                    Some("use one of disable, allow, prefer, require, verify-ca, verify-full"),
                )
            })?),
        };
        let root_cert = self.get("sslrootcert").filter(|v| !v.is_empty()).map(|v| {
            if v == "system" {
                RootCert::System
            } else {
                RootCert::File(PathBuf::from(v))
            }
        });
        let mode = match (written, &root_cert) {
            // libpq 16: the system's roots only make sense when the host name is checked too.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(ConnInfoError::new(
                    format!("sslmode={} may not be used with sslrootcert=system", m.as_str()),
                    Some("use sslmode=verify-full with sslrootcert=system (as libpq requires)"),
                ));
            }
            // libpq: "require" with a root certificate verifies the chain, as verify-ca.
            (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa,
            (Some(m), _) => m,
            (None, _) => SslMode::Prefer,
        };
        let direct = match self.get("sslnegotiation") {
            None | Some("postgres") => false,
            Some("direct") => true,
            Some(v) => {
                return Err(ConnInfoError::new(
                    format!("invalid sslnegotiation \"{v}\""),
                    Some("use sslnegotiation=postgres (the default) or direct"),
                ))
            }
        };
        if direct && matches!(mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer) {
            return Err(ConnInfoError::new(
                format!("sslnegotiation=direct needs TLS, but sslmode is {}", mode.as_str()),
                Some("use sslmode=require or stronger with sslnegotiation=direct"),
            ));
        }
        let path = |k: &str| self.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (cert, key) = (path("sslcert"), path("sslkey"));
        if cert.is_some() != key.is_some() {
            return Err(ConnInfoError::new(
                "sslcert and sslkey must be given together",
                Some("pass both the client certificate (sslcert=FILE) and its key (sslkey=FILE)"),
            ));
        }
        Ok(TlsSettings {
            mode,
            written,
            root_cert,
            cert,
            key,
            key_password: self.get("sslpassword").is_some_and(|v| !v.is_empty()),
            direct,
        })
    }

    /// tokio-postgres' config for this string, without its TLS mode (which `db::tls` sets):
    /// every driver setting, in order, as tokio-postgres would read it.
    pub fn driver_config(&self) -> Result<tokio_postgres::Config, ConnInfoError> {
        let mut kv = Vec::new();
        let mut password: Option<Vec<u8>> = None;
        for s in &self.settings {
            if s.key == "password" {
                password = Some(match s.origin {
                    // tokio-postgres takes a URL's password as bytes (not necessarily UTF-8).
                    Origin::Userinfo => percent_decode_bytes(self.userinfo_password_raw().unwrap_or("")),
                    _ => s.value.clone().into_bytes(),
                });
                continue;
            }
            if !DRIVER_KEYS.contains(&s.key.as_str()) {
                continue;
            }
            match (s.key.as_str(), s.origin) {
                // tokio-postgres gives each host of a URL its own port, 5432 when not written.
                ("port", Origin::Netloc) if s.value.is_empty() => kv.push("port=5432".to_string()),
                // A URL's query `host=` is one host (it may hold a comma); key=value splits.
                ("host", Origin::Query(..) | Origin::Netloc) if s.value.contains(',') => {
                    return Err(ConnInfoError::new(
                        "a host= query parameter cannot list several hosts",
                        Some("list the hosts in the URL's authority: postgres://h1:5432,h2:5432/db"),
                    ))
                }
                (k, _) => kv.push(format!("{k}={}", kv_quote(&s.value))),
            }
        }
        let mut config: tokio_postgres::Config = kv.join(" ").parse().map_err(|e: tokio_postgres::Error| {
            let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
            ConnInfoError::new(format!("invalid connection setting: {reason}"), None)
        })?;
        if let Some(p) = password {
            config.password(p);
        }
        Ok(config)
    }

    fn userinfo_password_raw(&self) -> Option<&str> {
        let start = url_scheme_end(&self.text)?;
        let rest = &self.text[start..];
        let at = libpq_userinfo_end(rest)?;
        rest[..at].split_once(':').map(|(_, p)| p)
    }

    fn check_keys(&self) -> Result<(), ConnInfoError> {
        for s in &self.settings {
            let k = s.key.as_str();
            if DRIVER_KEYS.contains(&k) || TLS_KEYS.contains(&k) || IGNORED_KEYS.contains(&k) {
                continue;
            }
            if let Some((_, fix)) = UNSUPPORTED_KEYS.iter().find(|(u, _)| *u == k) {
                return Err(ConnInfoError::new(format!("connection option \"{k}\" is not supported"), Some(fix)));
            }
            return Err(ConnInfoError::new(
                format!("unknown connection option \"{k}\""),
                Some("the URL takes libpq's connection parameters (host, port, dbname, user, password, sslmode, sslrootcert, ...)"),
            ));
        }
        for (key, bad) in [("gssencmode", "require"), ("sslcertmode", "require")] {
            if self.get(key) == Some(bad) {
                return Err(ConnInfoError::new(format!("{key}={bad} is not supported"), Some("remove it, or use prefer")));
            }
        }
        Ok(())
    }
}

/// Byte index just past `scheme://` when `s` starts with a URL scheme.
pub(crate) fn url_scheme_end(s: &str) -> Option<usize> {
    let idx = s.find("://")?;
    let scheme = &s[..idx];
    let valid = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(idx + 3)
}

/// libpq's userinfo: up to the first `@`, when it comes before any `/`.
fn libpq_userinfo_end(rest: &str) -> Option<usize> {
    let at = rest.find(['@', '/'])?;
    (rest.as_bytes()[at] == b'@').then_some(at)
}

/// The widest reading of a userinfo: from the first `@`, the last `@` before the query that
/// follows it. A password written with raw `@`s ends there (hosts and names never hold `@`).
fn greedy_userinfo_end(rest: &str) -> Option<usize> {
    let first = rest.find('@')?;
    let query = rest[first..].find('?').map_or(rest.len(), |q| first + q);
    rest[..query].rfind('@')
}

/// `start`: just past `scheme://`, as `url_scheme_end` found it.
fn parse_url(text: &str, start: usize) -> Result<(Form, Vec<Setting>), ConnInfoError> {
    let scheme = &text[..start - 3];
    let lower = scheme.to_ascii_lowercase();
    let base = lower.split('+').next().unwrap_or("");
    if base != "postgres" && base != "postgresql" {
        return Err(ConnInfoError::new(
            format!("\"{scheme}://\" is not a PostgreSQL URL"),
            Some("use postgres://user:password@host:5432/dbname, or a key=value string"),
        ));
    }
    let rest = &text[start..];
    let mut settings = Vec::new();
    let mut pos = start;
    if let Some(at) = libpq_userinfo_end(rest) {
        let userinfo = &rest[..at];
        let (user, pass) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if let Some(p) = pass {
            check_password_chars(p)?;
        }
        settings.push(Setting { key: "user".into(), value: decode(user, "user name")?, origin: Origin::Userinfo });
        if let Some(p) = pass {
            settings.push(Setting { key: "password".into(), value: percent_decode_lossy(p), origin: Origin::Userinfo });
        }
        pos = start + at + 1;
    }
    let after = &text[pos..];
    let netloc_end = after.find(['/', '?']).unwrap_or(after.len());
    let netloc = &after[..netloc_end];
    if netloc.contains('@') {
        // libpq's reading left an `@` in the host: the password holds unencoded delimiters.
        return Err(password_needs_encoding(text, start));
    }
    if !netloc.is_empty() {
        for chunk in netloc.split(',') {
            let (host, port) = split_host_port(chunk).map_err(|_| {
                if greedy_userinfo_end(rest).is_some_and(|g| rest[..g].contains(':')) {
                    password_needs_encoding(text, start)
                } else {
                    ConnInfoError::new(
                        format!("invalid host \"{chunk}\" in the URL"),
                        Some("write hosts as host, host:port or [ipv6]:port, separated by commas"),
                    )
                }
            })?;
            settings.push(Setting { key: "host".into(), value: decode(host, "host")?, origin: Origin::Netloc });
            let port = decode(port.unwrap_or(""), "port")?;
            if !port.is_empty() && port.parse::<u16>().is_err() {
                if greedy_userinfo_end(rest).is_some_and(|g| rest[..g].contains(':')) {
                    return Err(password_needs_encoding(text, start));
                }
                return Err(ConnInfoError::new(format!("invalid port \"{port}\" in the URL"), Some("a port is a number like 5432")));
            }
            settings.push(Setting { key: "port".into(), value: port, origin: Origin::Netloc });
        }
    }
    let mut p = pos + netloc_end;
    if text[p..].starts_with('/') {
        let path_end = text[p..].find('?').map_or(text.len(), |q| p + q);
        let db = &text[p + 1..path_end];
        if !db.is_empty() {
            settings.push(Setting { key: "dbname".into(), value: decode(db, "database name")?, origin: Origin::Path });
        }
        p = path_end;
    }
    let query = text[p..].starts_with('?').then_some(p);
    if let Some(q) = query {
        let mut a = q + 1;
        while a < text.len() {
            let z = text[a..].find('&').map_or(text.len(), |i| a + i);
            let param = &text[a..z];
            if !param.is_empty() {
                let Some((k, v)) = param.split_once('=') else {
                    let key = percent_decode_lossy(param);
                    return Err(ConnInfoError::new(
                        format!("URL parameter \"{}\" has no value", if is_secret_key(&key) { MASK } else { &key }),
                        Some("write parameters as ?key=value&key=value"),
                    ));
                };
                let key = decode(k, "parameter name")?;
                let value = if is_secret_key(&key) { percent_decode_lossy(v) } else { decode(v, &key)? };
                settings.push(Setting { key, value, origin: Origin::Query(a, z) });
            }
            a = z + 1;
        }
    }
    Ok((Form::Url { query }, settings))
}

/// A password that broke the URL apart: say which character to encode, never the password.
fn password_needs_encoding(text: &str, start: usize) -> ConnInfoError {
    let rest = &text[start..];
    let end = greedy_userinfo_end(rest).unwrap_or(0);
    let pass = rest[..end].split_once(':').map_or("", |(_, p)| p);
    let found: Vec<String> = PASSWORD_DELIMITERS
        .iter()
        .filter(|(c, _)| pass.contains(*c))
        .map(|(c, enc)| format!("'{c}' as {enc}"))
        .collect();
    let list = if found.is_empty() { "'@' as %40".to_string() } else { found.join(", ") };
    ConnInfoError::new(
        "the password in the URL contains characters that end the password early (drivers read it differently)",
        Some(&format!("percent-encode them in the password: {list}")),
    )
}

fn check_password_chars(p: &str) -> Result<(), ConnInfoError> {
    let found: Vec<String> =
        PASSWORD_DELIMITERS.iter().filter(|(c, _)| p.contains(*c)).map(|(c, enc)| format!("'{c}' as {enc}")).collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(ConnInfoError::new(
        "the password in the URL contains unencoded delimiters (drivers read it differently)",
        Some(&format!("percent-encode them in the password: {}", found.join(", "))),
    ))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(chunk: &str) -> Result<(&str, Option<&str>), ()> {
    if let Some(inner) = chunk.strip_prefix('[') {
        let close = inner.find(']').ok_or(())?;
        let host = &inner[..close];
        let tail = &inner[close + 1..];
        return match tail.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if tail.is_empty() => Ok((host, None)),
            None => Err(()),
        };
    }
    Ok(match chunk.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (chunk, None),
    })
}

/// Tokenizes a libpq key=value string the way libpq and tokio-postgres do: keywords, optional
/// whitespace around `=`, values bare or single-quoted, backslash escapes in both.
fn parse_kv(text: &str) -> Result<(Form, Vec<Setting>), ConnInfoError> {
    let tokens = tokenize_kv(text);
    if let Some(failed) = tokens.failed {
        let what = match failed {
            KvFailure::MissingEquals(k) => format!("\"{k}\" has no \"=\" (key=value expected)"),
            KvFailure::Unterminated => "a quoted value is not closed with '".to_string(),
            KvFailure::EmptyValue(k) => format!("\"{k}\" has no value"),
        };
        let hint = "write key=value pairs separated by spaces, quoting values with spaces: password='a b'";
        return Err(ConnInfoError::new(format!("invalid connection string: {what}"), Some(hint)));
    }
    let settings = tokens
        .entries
        .into_iter()
        .map(|e| Setting { key: e.key, value: e.value, origin: Origin::Entry(e.start, e.end, e.value_start) })
        .collect();
    Ok((Form::KeyValue, settings))
}

struct KvEntry {
    key: String,
    value: String,
    start: usize,
    end: usize,
    value_start: usize,
}

enum KvFailure {
    /// The keyword, if it is not a secret (else MASK).
    MissingEquals(String),
    Unterminated,
    EmptyValue(String),
}

struct KvTokens {
    entries: Vec<KvEntry>,
    /// Parsing stopped here: (reason); `rest_from` is where the unparsed text starts.
    failed: Option<KvFailure>,
    rest_from: usize,
}

fn tokenize_kv(s: &str) -> KvTokens {
    // Whitespace as tokio-postgres (the driver of corral's own connection) reads it.
    let ws = |i: usize| s[i..].find(|c: char| !c.is_whitespace()).map_or(s.len(), |n| i + n);
    let next = |i: usize| s[i..].chars().next();
    let mut entries = Vec::new();
    let mut i = 0;
    let stop = |entries, failed, rest_from| KvTokens { entries, failed: Some(failed), rest_from };
    loop {
        i = ws(i);
        if i >= s.len() {
            return KvTokens { entries, failed: None, rest_from: s.len() };
        }
        let start = i;
        i = s[i..].find(|c: char| c.is_whitespace() || c == '=').map_or(s.len(), |n| i + n);
        let key = s[start..i].to_string();
        let shown = if is_secret_key(&key) { MASK.to_string() } else { key.clone() };
        i = ws(i);
        if next(i) != Some('=') || key.is_empty() {
            return stop(entries, KvFailure::MissingEquals(shown), start);
        }
        i = ws(i + 1);
        let value_start = i;
        let mut value = String::new();
        if next(i) == Some('\'') {
            i += 1;
            let mut closed = false;
            while let Some(c) = next(i) {
                i += c.len_utf8();
                match c {
                    '\'' => {
                        closed = true;
                        break;
                    }
                    '\\' => {
                        if let Some(e) = next(i) {
                            value.push(e);
                            i += e.len_utf8();
                        }
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return stop(entries, KvFailure::Unterminated, start);
            }
        } else {
            while let Some(c) = next(i).filter(|c| !c.is_whitespace()) {
                i += c.len_utf8();
                if c == '\\' {
                    if let Some(e) = next(i) {
                        value.push(e);
                        i += e.len_utf8();
                    }
                } else {
                    value.push(c);
                }
            }
            if i == value_start {
                return stop(entries, KvFailure::EmptyValue(shown), start);
            }
        }
        entries.push(KvEntry { key, value, start, end: i, value_start });
    }
}

/// Keys whose value is a secret: libpq's `password` and `sslpassword` (the key's passphrase).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    k == "password" || k == "sslpassword"
}

/// Byte spans of every secret in `text`, however broken `text` is: the userinfo password (read
/// as widely as any driver might, so a raw `@` in it is hidden too) and the values of
/// `password`/`sslpassword` parameters or entries. Where a key=value string stops parsing, the
/// rest is masked from its first `password` on. What `redact` masks.
pub(crate) fn secret_spans(text: &str) -> Vec<(usize, usize)> {
    if let Ok(info) = ConnInfo::parse(text) {
        return info.secret_spans();
    }
    let mut spans = Vec::new();
    if let Some(start) = url_scheme_end(text) {
        let rest = &text[start..];
        let after = match greedy_userinfo_end(rest) {
            Some(at) => {
                if let Some(colon) = rest[..at].find(':') {
                    if colon + 1 < at {
                        spans.push((start + colon + 1, start + at));
                    }
                }
                start + at + 1
            }
            None => start,
        };
        if let Some(q) = text[after..].find('?') {
            let mut a = after + q + 1;
            while a <= text.len() {
                let z = text[a..].find('&').map_or(text.len(), |i| a + i);
                if let Some((k, v)) = text[a..z].split_once('=') {
                    if is_secret_key(&percent_decode_lossy(k)) && !v.is_empty() {
                        spans.push((z - v.len(), z));
                    }
                }
                a = z + 1;
            }
        }
        return spans;
    }
    let tokens = tokenize_kv(text);
    for e in tokens.entries.iter().filter(|e| is_secret_key(&e.key)) {
        if e.end > e.value_start {
            spans.push((e.value_start, e.end));
        }
    }
    if tokens.failed.is_some() {
        let lower = text[tokens.rest_from..].to_ascii_lowercase();
        if let Some(p) = lower.find("password") {
            let from = tokens.rest_from + p + "password".len();
            let value_start = text[from..].find('=').map_or(from, |e| from + e + 1);
            let value_start = value_start + (text[value_start..].len() - text[value_start..].trim_start().len());
            if value_start < text.len() {
                spans.push((value_start, text.len()));
            }
        }
    }
    spans
}

/// Every written form of every secret of `text` (as written, percent-decoded, unquoted), for
/// scrubbing free text that may echo one.
pub(crate) fn secrets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (a, z) in secret_spans(text) {
        let raw = &text[a..z];
        out.push(raw.to_string());
        out.push(percent_decode_lossy(raw));
        let unquoted = raw.trim_matches('\'');
        out.push(unquoted.to_string());
        out.push(unescape_kv(unquoted));
        // What tokio-postgres takes as the password of a URL with a raw `@` in it: up to the
        // first `@`.
        if let Some(first) = raw.find('@') {
            out.push(raw[..first].to_string());
            out.push(percent_decode_lossy(&raw[..first]));
        }
    }
    out.retain(|s| !s.is_empty() && s != MASK);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn unescape_kv(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(e) = it.next() {
                out.push(e);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` with each span replaced by MASK (spans sorted, non-overlapping after merging).
pub(crate) fn mask_spans(text: &str, spans: &[(usize, usize)]) -> String {
    let mut spans = spans.to_vec();
    spans.sort();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (a, z) in spans {
        if a < copied {
            continue;
        }
        out.push_str(&text[copied..a]);
        out.push_str(MASK);
        copied = z;
    }
    out.push_str(&text[copied..]);
    out
}

fn decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    String::from_utf8(percent_decode_bytes(s))
        .map_err(|_| ConnInfoError::new(format!("the {what} in the URL is not UTF-8 after percent-decoding"), None))
}

pub(crate) fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Percent-decoding; invalid UTF-8 becomes U+FFFD, as in any message that echoes it.
pub(crate) fn percent_decode_lossy(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key=value value, quoted when it must be.
fn kv_quote(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> ConnInfo {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e} ({:?})", e.hint))
    }

    fn err(s: &str) -> ConnInfoError {
        ConnInfo::parse(s).expect_err(s)
    }

    #[test]
    fn url_parts() {
        let c = ok("postgresql://app:s%40cret@db.example.com:6543/postgres?sslmode=require&connect_timeout=5");
        assert_eq!(c.get("user"), Some("app"));
        assert_eq!(c.get("password"), Some("s@cret"));
        assert_eq!(c.hosts(), ["db.example.com"]);
        assert_eq!(c.ports(), [6543]);
        assert_eq!(c.get("dbname"), Some("postgres"));
        assert_eq!(c.get("sslmode"), Some("require"));
        assert_eq!(c.first_host_port(), (Some("db.example.com".into()), 6543));
        let c = ok("postgres://[::1]:5433,h2/db");
        assert_eq!(c.hosts(), ["::1", "h2"]);
        assert_eq!(c.ports(), [5433, 5432]);
        let c = ok("postgres://%2Ftmp%2Fpg/db");
        assert_eq!(c.hosts(), ["/tmp/pg"]);
        let c = ok("postgresql+psycopg2://u@h/db");
        assert_eq!(c.get("user"), Some("u"));
    }

    #[test]
    fn kv_parts() {
        let c = ok("host=/tmp port = 5433 dbname=x password='a b\\' c' user=u\\ v");
        assert_eq!(c.get("host"), Some("/tmp"));
        assert_eq!(c.get("password"), Some("a b' c"));
        assert_eq!(c.get("user"), Some("u v"));
        assert_eq!(c.ports(), [5433]);
        let c = ok("host=a,b port=1,2");
        assert_eq!(c.hosts(), ["a", "b"]);
        assert_eq!(c.ports(), [1, 2]);
        assert!(ConnInfo::parse("").is_ok());
    }

    /// The example: redacted right, and now refused instead of rewritten wrong.
    #[test]
    fn unencoded_delimiters_in_the_password_are_an_error_naming_the_encoding() {
        for (url, enc) in [
            ("postgres://u:a/b?c@h/db", "%2F"),
            ("postgres://app:p@ss@w0rd@host:6543/postgres", "%40"),
            ("postgres://u:pa?ss@h/db", "%3F"),
            ("postgres://u:pa:ss@h/db", "%3A"),
            ("postgres://u:pa#ss@h/db", "%23"),
            ("postgres://u:pa/ss@h/db", "%2F"),
        ] {
            let e = err(url);
            let text = format!("{e} {}", e.hint.clone().unwrap_or_default());
            assert!(e.message.contains("password"), "{url}: {text}");
            assert!(text.contains("percent-encode") && text.contains(enc), "{url}: {text}");
            for secret in ["a/b?c", "p@ss", "w0rd", "pa?ss", "pa:ss", "pa#ss", "pa/ss"] {
                assert!(!text.contains(secret), "{url}: {text}");
            }
        }
        // Encoded, the same passwords are fine.
        assert_eq!(ok("postgres://u:a%2Fb%3Fc@h/db").get("password"), Some("a/b?c"));
        assert_eq!(ok("postgres://app:p%40ss%40w0rd@host:6543/postgres").get("password"), Some("p@ss@w0rd"));
        // An `@` in the query is not a password.
        let c = ok("postgres://h:5432/db?sslrootcert=/certs/a@b/ca.pem");
        assert_eq!(c.get("sslrootcert"), Some("/certs/a@b/ca.pem"));
        assert_eq!(c.get("user"), None);
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        assert!(err("mysql://u@h/db").message.contains("not a PostgreSQL URL"));
        assert!(err("postgres://h:port/db").message.contains("invalid port"));
        assert!(err("postgres://h/db?sslmode").message.contains("has no value"));
        assert!(err("postgres://h/db?sslmode=sometimes").message.contains("invalid sslmode"));
        assert!(err("postgres://h/db?foo=1").message.contains("unknown connection option \"foo\""));
        assert!(err("postgres://h/db?sslcrl=x").hint.unwrap().contains("revocation"));
        assert!(err("host=h password='abc").message.contains("not closed"));
        assert!(err("host").message.contains("no \"=\""));
        assert!(err("postgres://h/db?sslmode=require&sslrootcert=system").hint.unwrap().contains("verify-full"));
        assert!(err("postgres://h/db?sslcert=c.pem").message.contains("together"));
        // Never the password, even when it is what is wrong.
        let e = err("password hunter2");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = err("postgres://h/db?password");
        assert!(!e.to_string().contains("password\""), "{e}");
    }

    #[test]
    fn sslmode_implications_follow_libpq() {
        let t = |s: &str| ok(s).tls().unwrap();
        assert_eq!(t("postgres://h/db").mode, SslMode::Prefer);
        assert_eq!(t("postgres://h/db").written, None);
        assert_eq!(t("postgres://h/db?sslmode=require").mode, SslMode::Require);
        assert_eq!(t("postgres://h/db?sslmode=require&sslrootcert=ca.pem").mode, SslMode::VerifyCa);
        assert_eq!(t("postgres://h/db?sslrootcert=system").mode, SslMode::VerifyFull);
        assert_eq!(t("postgres://h/db?sslmode=verify-full&sslrootcert=system").root_cert, Some(RootCert::System));
        assert_eq!(t("host=h sslmode=verify-ca sslrootcert=ca.der").root_cert, Some(RootCert::File("ca.der".into())));
        let c = t("host=h sslmode=verify-full sslcert=c.pem sslkey=k.pem sslpassword=x");
        assert_eq!((c.cert.unwrap(), c.key.unwrap(), c.key_password), ("c.pem".into(), "k.pem".into(), true));
        assert!(t("postgres://h/db?sslmode=require&sslnegotiation=direct").direct);
    }

    #[test]
    fn redaction() {
        let r = |s: &str| ok(s).redacted();
        assert_eq!(r("postgres://app:s3cret@h:5432/app"), "postgres://app:***@h:5432/app");
        assert_eq!(r("postgres://h/db?user=app&password=s3cret&sslmode=require"), "postgres://h/db?user=app&password=***&sslmode=require");
        assert_eq!(r("host=h password='a b' dbname=x"), "host=h password=*** dbname=x");
        assert_eq!(r("postgres://app@h/db"), "postgres://app@h/db");
        // The lenient spans hide a password that does not parse, too.
        let s = "postgres://u:a/b?c@h/db";
        assert_eq!(mask_spans(s, &secret_spans(s)), "postgres://u:***@h/db");
        let s = "host=h password='abc def";
        assert!(!mask_spans(s, &secret_spans(s)).contains("abc"));
    }

    #[test]
    fn application_name_replaces_and_keeps_the_rest() {
        let app = "corral/s/j";
        let cases = [
            ("postgres://h/db", "postgres://h/db?application_name=corral/s/j"),
            ("postgres://h", "postgres://h?application_name=corral/s/j"),
            ("postgresql://u:p@h:6543/db?sslmode=require", "postgresql://u:p@h:6543/db?sslmode=require&application_name=corral/s/j"),
            ("postgresql://h/db?application_name=old&sslmode=require", "postgresql://h/db?sslmode=require&application_name=corral/s/j"),
            ("postgresql://h/db?", "postgresql://h/db?application_name=corral/s/j"),
            ("postgresql://h/db?sslmode=verify-full&&sslrootcert=ca%20x.pem", "postgresql://h/db?sslmode=verify-full&sslrootcert=ca%20x.pem&application_name=corral/s/j"),
            ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db?application_name=corral/s/j"),
            ("postgres://h:5432/db?sslrootcert=/a@b/ca.pem", "postgres://h:5432/db?sslrootcert=/a@b/ca.pem&application_name=corral/s/j"),
            ("host=/tmp port=5432 dbname=x", "host=/tmp port=5432 dbname=x application_name=corral/s/j"),
            ("", "application_name=corral/s/j"),
            ("host=h application_name = 'my app' dbname=x", "host=h dbname=x application_name=corral/s/j"),
            ("password='a b\\' c' host = h", "password='a b\\' c' host = h application_name=corral/s/j"),
        ];
        for (input, want) in cases {
            assert_eq!(ok(input).with_application_name(app), want, "{input}");
        }
        assert_eq!(ok("postgres://h/db").with_application_name("corral/a b/j&k"), "postgres://h/db?application_name=corral/a%20b/j%26k");
        assert_eq!(ok("host=h").with_application_name("corral/a b/j"), "host=h application_name='corral/a b/j'");
    }

    /// (user, password, dbname, hosts, ports, options, application_name).
    type Reading = (Option<String>, Option<Vec<u8>>, Option<String>, Vec<String>, Vec<u16>, Option<String>, Option<String>);

    /// What tokio-postgres reads from `s`, as comparable fields.
    fn oracle(c: &tokio_postgres::Config) -> Reading {
        let hosts = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        (
            c.get_user().map(str::to_string),
            c.get_password().map(<[u8]>::to_vec),
            c.get_dbname().map(str::to_string),
            hosts,
            c.get_ports().to_vec(),
            c.get_options().map(str::to_string),
            c.get_application_name().map(str::to_string),
        )
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.~-]{1,8}"
    }

    /// Any text, percent-encoded where a URL needs it.
    fn url_text() -> impl Strategy<Value = String> {
        "\\PC{0,10}".prop_map(|s| {
            let mut out = String::new();
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        })
    }

    prop_compose! {
        fn url()(user in proptest::option::of(url_text()), pass in proptest::option::of(url_text()),
                 hosts in proptest::collection::vec((word(), proptest::option::of(1u16..)), 0..3),
                 db in proptest::option::of(url_text()),
                 params in proptest::collection::vec((proptest::sample::select(vec!["options", "application_name", "connect_timeout", "sslmode", "user", "dbname", "keepalives"]), url_text()), 0..4),
                 scheme in proptest::sample::select(vec!["postgres", "postgresql"])) -> String {
            let mut s = format!("{scheme}://");
            if let Some(u) = &user {
                s.push_str(u);
                if let Some(p) = &pass { s.push(':'); s.push_str(p); }
                s.push('@');
            }
            let hs: Vec<String> = hosts.iter().map(|(h, p)| match p { Some(p) => format!("{h}:{p}"), None => h.clone() }).collect();
            s.push_str(&hs.join(","));
            if let Some(d) = &db { s.push('/'); s.push_str(d); }
            let qs: Vec<String> = params.iter().map(|(k, v)| {
                let v = match *k { "connect_timeout" => "5".to_string(), "sslmode" => "require".to_string(), "keepalives" => "1".to_string(), _ => v.clone() };
                format!("{k}={v}")
            }).collect();
            if !qs.is_empty() { s.push('?'); s.push_str(&qs.join("&")); }
            s
        }
    }

    fn kv_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_./-]{1,8}",
            "\\PC{0,8}".prop_map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))),
        ]
    }

    prop_compose! {
        fn kv()(entries in proptest::collection::vec((proptest::sample::select(vec!["user", "password", "dbname", "host", "port", "options", "application_name"]), kv_value(), " {0,2}", " {0,2}"), 0..6)) -> String {
            entries.iter().map(|(k, v, a, b)| {
                let v = if *k == "port" { "5433".to_string() } else if *k == "host" { v.trim_matches('\'').replace([',', '\\', '\''], "").chars().filter(|c| !c.is_whitespace()).collect::<String>() + "h" } else { v.clone() };
                format!("{k}{a}={b}{v}")
            }).collect::<Vec<_>>().join(" ")
        }
    }

    proptest! {
        /// Our reading of a URL is tokio-postgres' reading.
        #[test]
        fn url_reads_as_tokio_postgres_does(s in url()) {
            let ours = ConnInfo::parse(&s);
            let theirs: Result<tokio_postgres::Config, _> = s.parse();
            match (ours, theirs) {
                (Ok(c), Ok(t)) => prop_assert_eq!(oracle(&c.driver_config().unwrap()), oracle(&t)),
                // A password with an encoded delimiter decodes to one: fine for both.
                (Ok(c), Err(e)) => prop_assert!(false, "we accept {} ({:?}), tokio-postgres does not: {}", s, c, e),
                (Err(e), Ok(_)) => prop_assert!(false, "tokio-postgres accepts {}, we do not: {}", s, e),
                (Err(_), Err(_)) => {}
            }
        }

        /// Our reading of a key=value string is tokio-postgres' reading.
        #[test]
        fn kv_reads_as_tokio_postgres_does(s in kv()) {
            let ours = ConnInfo::parse(&s);
            let theirs: Result<tokio_postgres::Config, _> = s.parse();
            match (ours, theirs) {
                (Ok(c), Ok(t)) => prop_assert_eq!(oracle(&c.driver_config().unwrap()), oracle(&t)),
                (a, b) => prop_assert!(a.is_err() && b.is_err(), "disagree on {}: ours {:?}, theirs {:?}", s, a.err(), b.err()),
            }
        }

        /// application_name injection changes only application_name, as the driver reads it.
        #[test]
        fn application_name_injection_keeps_everything_else(s in prop_oneof![url(), kv()], svc in "[a-z0-9_-]{1,8}", job in "[a-z0-9_.-]{1,8}") {
            let Ok(c) = ConnInfo::parse(&s) else { return Ok(()) };
            let app = format!("corral/{svc}/{job}");
            let out = c.with_application_name(&app);
            let back = ConnInfo::parse(&out).unwrap();
            let t: tokio_postgres::Config = out.parse().unwrap();
            prop_assert_eq!(t.get_application_name(), Some(app.as_str()));
            let mut before = oracle(&c.driver_config().unwrap());
            let after = oracle(&back.driver_config().unwrap());
            before.6 = Some(app.clone());
            prop_assert_eq!(before, after);
            prop_assert_eq!(back.with_application_name(&app), out.clone());
            prop_assert_eq!(back.settings().iter().filter(|s| s.key == "application_name").count(), 1);
        }

        /// The redacted form never holds the password, and parses to the same target.
        #[test]
        fn redaction_hides_the_password(s in prop_oneof![url(), kv()]) {
            let Ok(c) = ConnInfo::parse(&s) else { return Ok(()) };
            let r = c.redacted();
            let rc = ConnInfo::parse(&r).unwrap();
            if c.get("password").is_some_and(|p| !p.is_empty()) {
                prop_assert_eq!(rc.get("password"), Some(MASK));
            }
            prop_assert_eq!(rc.hosts(), c.hosts());
            prop_assert_eq!(rc.get("dbname"), c.get("dbname"));
        }

        /// Nothing panics on arbitrary input, and the lenient spans are on char boundaries.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,60}", prefix in proptest::sample::select(vec!["", "postgres://", "postgresql://u:", "host="])) {
            let s = format!("{prefix}{s}");
            let _ = ConnInfo::parse(&s);
            let _ = mask_spans(&s, &secret_spans(&s));
            let _ = secrets(&s);
        }
    }
}
