//! `[alerts]` (SPEC §9): where alerts go (a webhook and/or a command), which events, and how
//! often. Validated like every other section: each error with line:column and the fix.
//!
//! Owns the raw mirror of the section, the typed [`AlertsConfig`] and [`WebhookUrl`] (parsed
//! once here, so delivery never meets a URL it cannot use). Must not print the webhook URL:
//! Slack's and most others' carry their secret in the path; `Debug` and [`WebhookUrl::shown`]
//! keep only scheme, host and port.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::super::raw::Str;
use super::diagnostics::{did_you_mean, quote};
use super::{Cx, Span};
use crate::alerts::EventKind;

pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 5;
pub const DEFAULT_CRASH_LOOP_RESTARTS: u32 = 5;
pub const DEFAULT_CRASH_LOOP_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAlerts {
    pub webhook: Option<Str>,
    /// An array of strings; kept loose so that a plain string gets the array form as hint.
    pub command: Option<Spanned<Value>>,
    pub events: Option<Spanned<Vec<Str>>>,
    pub min_interval: Option<Str>,
    pub timeout: Option<Str>,
    pub retries: Option<Spanned<i64>>,
    pub crash_loop: Option<RawCrashLoop>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawCrashLoop {
    pub restarts: Option<Spanned<i64>>,
    pub window: Option<Str>,
}

/// The validated `[alerts]`.
#[derive(Clone, PartialEq)]
pub struct AlertsConfig {
    /// None: no webhook (also when it expands to an empty string, e.g. `${ALERT_WEBHOOK_URL:-}`).
    pub webhook: Option<WebhookUrl>,
    /// argv of a command that gets the alert's JSON on stdin.
    pub command: Option<Vec<String>>,
    pub events: BTreeSet<EventKind>,
    /// Per (event, job): at most one alert per this, then a count of the rest.
    pub min_interval: Duration,
    /// One webhook post or command run; a command still running then is killed.
    pub timeout: Duration,
    /// Attempts after the first failed one, with backoff; then the alert is dropped (counted).
    pub retries: u32,
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
}

impl std::fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertsConfig")
            .field("webhook", &self.webhook)
            .field("command", &self.command)
            .field("events", &self.events)
            .field("min_interval", &self.min_interval)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("crash_loop_restarts", &self.crash_loop_restarts)
            .field("crash_loop_window", &self.crash_loop_window)
            .finish()
    }
}

/// An `http://` or `https://` URL, taken apart for the client.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least "/".
    pub path: String,
    /// `user:password@` in the URL, as an `Authorization: Basic` value.
    pub basic_auth: Option<String>,
}

impl WebhookUrl {
    pub fn parse(s: &str) -> Result<WebhookUrl, String> {
        let uri: hyper::Uri = s.trim().parse().map_err(|e| format!("not a URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme \"{other}\" is not supported (http or https)")),
            None => return Err("the URL has no scheme".into()),
        };
        let authority = uri.authority().ok_or("the URL has no host")?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        let basic_auth = authority.as_str().rsplit_once('@').map(|(userinfo, _)| {
            use base64::Engine;
            let decoded = percent_encoding::percent_decode_str(userinfo).decode_utf8_lossy().into_owned();
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(decoded))
        });
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.as_str().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        Ok(WebhookUrl { https, host, port, path, basic_auth })
    }

    /// Scheme, host and port only: the path is often the secret.
    pub fn shown(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}://{host}:{}/…", if self.https { "https" } else { "http" }, self.port)
    }

    /// The Host header.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

const KEYS_HINT: &str = "add webhook = \"${ALERT_WEBHOOK_URL}\" or command = [\"/usr/local/bin/page-me\"], or remove [alerts]";

impl Cx<'_> {
    pub(super) fn alerts(&mut self, raw: &RawAlerts, anchor: Option<Span>) -> Option<AlertsConfig> {
        if raw.webhook.is_none() && raw.command.is_none() {
            self.error(anchor, "[alerts] needs a \"webhook\" or a \"command\" to send alerts to", Some(KEYS_HINT.into()));
            return None;
        }
        let webhook = match &raw.webhook {
            Some(v) => {
                let s = self.string("webhook", v)?;
                if s.trim().is_empty() {
                    None
                } else {
                    match WebhookUrl::parse(&s) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            // The URL itself is not repeated: it may hold the webhook's secret.
                            let hint = "write the full URL, like \"https://hooks.slack.com/services/T000/B000/XXXX\"";
                            self.error(Some(v.span()), format!("invalid \"webhook\": {e}"), Some(hint.into()));
                            return None;
                        }
                    }
                }
            }
            None => None,
        };
        let command = raw.command.as_ref().map(|v| self.command(v)).filter(|argv| !argv.is_empty());
        if raw.command.is_some() && command.is_none() {
            return None;
        }
        let events = match &raw.events {
            None => EventKind::SELECTABLE.into_iter().collect(),
            Some(list) => {
                let names: Vec<&str> = EventKind::SELECTABLE.iter().map(|k| k.as_str()).collect();
                let mut set = BTreeSet::new();
                for v in list.get_ref() {
                    let Some(s) = self.string("events", v) else { continue };
                    match EventKind::parse(&s).filter(|k| EventKind::SELECTABLE.contains(k)) {
                        Some(k) => {
                            set.insert(k);
                        }
                        None => {
                            let recovery = match s.as_str() {
                                "database_up" => " (database_up follows database_down)",
                                "recovered" => " (recovered follows fatal)",
                                _ => "",
                            };
                            let message = match did_you_mean(&s, &names) {
                                Some(m) if recovery.is_empty() => format!("unknown event \"{}\" in \"events\" (did you mean \"{m}\"?)", quote(&s)),
                                _ => format!("unknown event \"{}\" in \"events\"{recovery}", quote(&s)),
                            };
                            let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
                            self.error(Some(v.span()), message, Some(format!("use some of {}", quoted.join(", "))));
                        }
                    }
                }
                if list.get_ref().is_empty() {
                    let hint = "list the events to send, or remove \"events\" to send all of them";
                    self.error(Some(list.span()), "\"events\" is empty: no alert would ever be sent", Some(hint.into()));
                }
                set
            }
        };
        let min_interval = self.duration("min_interval", raw.min_interval.as_ref(), DEFAULT_MIN_INTERVAL, (Duration::ZERO, Duration::from_secs(7 * 86400)));
        let timeout = self.duration("timeout", raw.timeout.as_ref(), DEFAULT_TIMEOUT, (Duration::from_millis(100), Duration::from_secs(600)));
        let retries = self.count("retries", raw.retries.as_ref(), DEFAULT_RETRIES, 100);
        let crash = raw.crash_loop.as_ref();
        let crash_loop_restarts = crash.and_then(|c| c.restarts.as_ref()).and_then(|v| self.int("crash_loop.restarts", v, 1, 1_000_000)).map_or(DEFAULT_CRASH_LOOP_RESTARTS, |n| n as u32);
        let crash_loop_window = self.duration("crash_loop.window", crash.and_then(|c| c.window.as_ref()), DEFAULT_CRASH_LOOP_WINDOW, (Duration::from_secs(1), Duration::from_secs(86400)));
        Some(AlertsConfig { webhook, command, events, min_interval, timeout, retries, crash_loop_restarts, crash_loop_window })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn defaults_and_every_key() {
        let c = ok(&format!("{JOB}[alerts]\nwebhook = \"https://hooks.slack.com/services/T0/B0/XYZ\"\n"));
        let a = c.alerts.unwrap();
        let w = a.webhook.clone().unwrap();
        assert_eq!((w.https, w.host.as_str(), w.port, w.path.as_str()), (true, "hooks.slack.com", 443, "/services/T0/B0/XYZ"));
        assert_eq!(a.events.len(), EventKind::SELECTABLE.len());
        assert_eq!((a.min_interval, a.timeout, a.retries), (DEFAULT_MIN_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_RETRIES));
        assert!(!format!("{a:?}").contains("XYZ"), "{a:?}");

        let c = ok(&format!(
            "{JOB}[alerts]\ncommand = [\"/bin/page-me\", \"--team\", \"ops\"]\nevents = [\"fatal\", \"database_down\"]\nmin_interval = \"1m\"\ntimeout = \"2s\"\nretries = 0\ncrash_loop = {{ restarts = 3, window = \"1m\" }}\n"
        ));
        let a = c.alerts.unwrap();
        assert_eq!(a.webhook, None);
        assert_eq!(a.command.as_deref(), Some(&["/bin/page-me".to_string(), "--team".into(), "ops".into()][..]));
        assert_eq!(a.events, [EventKind::Fatal, EventKind::DatabaseDown].into());
        assert_eq!((a.min_interval, a.timeout, a.retries, a.crash_loop_restarts, a.crash_loop_window), (Duration::from_secs(60), Duration::from_secs(2), 0, 3, Duration::from_secs(60)));
    }

    #[test]
    fn an_empty_webhook_means_none() {
        let a = ok(&format!("{JOB}[alerts]\nwebhook = \"${{NOPE:-}}\"\ncommand = [\"x\"]\n")).alerts.unwrap();
        assert_eq!(a.webhook, None);
    }

    #[test]
    fn needs_a_destination() {
        one(&format!("{JOB}[alerts]\nmin_interval = \"1m\"\n"), 3, 2, "[alerts] needs a \"webhook\" or a \"command\"");
    }

    #[test]
    fn bad_values_point_at_themselves() {
        one(&format!("{JOB}[alerts]\nwebhook = \"ftp://x/y\"\n"), 4, 11, "invalid \"webhook\": scheme \"ftp\" is not supported");
        one(&format!("{JOB}[alerts]\nwebhook = \"hooks.slack.com/x\"\n"), 4, 11, "invalid \"webhook\"");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\nevents = [\"fatl\"]\n"), 5, 11, "unknown event \"fatl\" in \"events\" (did you mean \"fatal\"?)");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\nevents = [\"database_up\"]\n"), 5, 11, "unknown event \"database_up\" in \"events\" (database_up follows database_down)");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\nevents = []\n"), 5, 10, "\"events\" is empty");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\nmin_interval = \"soon\"\n"), 5, 16, "invalid duration \"soon\" for \"min_interval\"");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\nretries = -1\n"), 5, 11, "\"retries\" must be at least 0");
        one(&format!("{JOB}[alerts]\ncommand = \"page-me --now\"\n"), 4, 11, "\"command\" must be an array of strings");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\nwebhok = \"x\"\n"), 5, 1, "unknown key \"webhok\" (did you mean \"webhook\"?)");
        one(&format!("{JOB}[alerts]\nwebhook = \"http://h/\"\ncrash_loop = {{ restarts = 0 }}\n"), 5, 27, "\"crash_loop.restarts\" must be at least 1");
    }

    #[test]
    fn an_invalid_url_is_not_echoed() {
        let e = errors(&format!("{JOB}[alerts]\nwebhook = \"gopher://secret-token@h/\"\n"));
        assert!(!e.iter().any(|e| e.to_string().contains("secret-token")), "{e:?}");
    }

    #[test]
    fn urls_taken_apart() {
        let u = WebhookUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port, u.path.as_str(), u.host_header()), (false, "127.0.0.1", 8080, "/", "127.0.0.1:8080".to_string()));
        let u = WebhookUrl::parse("https://[::1]/hook?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str(), u.host_header()), ("::1", 443, "/hook?x=1", "[::1]".to_string()));
        assert_eq!(u.shown(), "https://[::1]:443/…");
        let u = WebhookUrl::parse("https://am:p%40ss@alerts.example/api").unwrap();
        assert_eq!(u.host, "alerts.example");
        assert_eq!(u.basic_auth.as_deref(), Some("Basic YW06cEBzcw=="));
        assert!(!format!("{u:?}").contains("p%40ss"));
    }
}
