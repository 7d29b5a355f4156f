//! Serde mirror of the manifest's TOML (SPEC §2), before any validation.
//!
//! Every struct rejects unknown keys, and every value that `validate` checks
//! later is kept as `Spanned` so that its errors point at line:column. Scalars
//! that `validate` must interpret (durations, enum strings, signals) stay
//! strings here; values that may have several shapes (`connections`,
//! `provider_reserve`, ...) stay `toml::Value`.
//!
//! Tables are never wrapped in `Spanned`: toml gives no span to a table made
//! implicitly by dotted keys (`env.A = "x"`) and then fails to build the
//! `Spanned`. Positions of tables come from their key instead.
//!
//! Serde stops at the first error, so `validate` never deserializes the whole
//! document in one go: the text is parsed once into a [`Doc`], and [`select`]
//! deserializes one section or one job from it, so a typo in one job does not
//! hide the mistakes in another, and the work stays linear in the file.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use toml::Spanned;

/// A string value with its position.
pub(super) type Str = Spanned<String>;

/// The keys of one table, with their positions, values skipped.
pub(super) type Keys = BTreeMap<Str, IgnoredAny>;

/// Top-level keys. Checked by hand against the keys of the document (not
/// with `deny_unknown_fields`) because `validate` also needs their positions.
pub(super) const TOP_KEYS: &[&str] = &["supervisor", "database", "budget", "http", "alerts", "jobs"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervisor {
    pub socket: Option<Str>,
    pub socket_group: Option<Str>,
    pub lock_dir: Option<Str>,
    pub reap_interval: Option<Str>,
    pub stop_timeout: Option<Str>,
    pub log_format: Option<Str>,
    pub orphans: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    /// Optional here so that a missing url is reported with our own message.
    pub url: Option<Str>,
    /// `"auto"` or an integer.
    pub max_connections: Option<Spanned<toml::Value>>,
    pub preset: Option<Str>,
    /// An integer or a `"NN%"` string.
    pub provider_reserve: Option<Spanned<toml::Value>>,
    pub adhoc_reserve: Option<Spanned<i64>>,
    pub external_reserve: Option<Spanned<i64>>,
    pub health_interval: Option<Str>,
    pub health_timeout: Option<Str>,
    pub enforce: Option<Str>,
    pub pooler: Option<Str>,
    /// `"auto"` or an integer.
    pub pool_size: Option<Spanned<toml::Value>>,
    pub pooler_admin_url: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub scope: Option<Str>,
    pub service: Option<Str>,
    pub idle_after: Option<Str>,
    pub rebalance_interval: Option<Str>,
    /// A float, or an integer (`1` means 1.0).
    pub warn_at: Option<Spanned<toml::Value>>,
    pub fleet_grace: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub listen: Option<Str>,
    pub token: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    /// An array of strings; kept loose so that a plain string gets a helpful hint.
    pub command: Option<Spanned<toml::Value>>,
    pub cwd: Option<Str>,
    #[serde(default)]
    pub env: BTreeMap<Str, Str>,
    pub user: Option<Str>,
    pub autostart: Option<bool>,
    pub restart: Option<Str>,
    pub success_codes: Option<Spanned<Vec<Spanned<i64>>>>,
    pub backoff: Option<RawBackoff>,
    pub healthy_after: Option<Str>,
    pub start_retries: Option<Spanned<i64>>,
    pub stop_signal: Option<Str>,
    pub stop_timeout: Option<Str>,
    pub single_instance: Option<bool>,
    pub on_duplicate: Option<Str>,
    pub priority: Option<Spanned<i64>>,
    /// An integer, or a table `{ min, max, overflow }`.
    pub connections: Option<Spanned<toml::Value>>,
    pub quota_signal: Option<Str>,
    // A scheduled job (SPEC §2); validated in validate/schedule.rs.
    pub schedule: Option<Str>,
    pub timezone: Option<Str>,
    pub concurrency: Option<Str>,
    pub starting_deadline: Option<Str>,
    pub catch_up: Option<Spanned<bool>>,
    // The watchdog keys (config::watch).
    pub env_file: Option<Str>,
    pub instances: Option<Spanned<i64>>,
    /// An array of names, or a table name → condition.
    pub depends_on: Option<Spanned<toml::Value>>,
    pub ready: Option<RawProbe>,
    pub liveness: Option<RawProbe>,
    pub stall_after: Option<Str>,
    /// A size string (`"2GiB"`) or an integer of bytes.
    pub memory_max: Option<Spanned<toml::Value>>,
}

/// `ready` / `liveness`: exactly one check key, then its timing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub http: Option<Str>,
    pub tcp: Option<Str>,
    pub command: Option<Spanned<toml::Value>>,
    pub log: Option<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub failures: Option<Spanned<i64>>,
    pub initial_delay: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub initial: Option<Str>,
    pub max: Option<Str>,
}

/// The parsed document: parsed once, then each part is deserialized from the tree, so
/// validating a manifest is linear in its size (a parse per job made 2,000 broken jobs take
/// seconds). Spans are byte offsets into the text it was parsed from.
pub(super) struct Doc(toml_edit::ImDocument<String>);

/// Errors of deserializing a part of the document; they carry the span toml_edit attaches.
pub(super) type DeError = toml_edit::de::Error;

impl Doc {
    /// TOML syntax only (the parser limits nesting itself, so no input overflows the stack).
    pub fn parse(text: &str) -> Result<Doc, toml_edit::TomlError> {
        toml_edit::ImDocument::parse(text.to_string()).map(Doc)
    }

    /// Whether the document holds no key at all (only whitespace and comments).
    pub fn is_empty(&self) -> bool {
        self.0.as_table().is_empty()
    }
}

/// Deserialize only the value at `path` (a chain of table keys; empty for the whole
/// document). `Ok(None)` when some key of the path is absent. Costs the size of that value.
pub(super) fn select<T: DeserializeOwned>(doc: &Doc, path: &[&str]) -> Result<Option<T>, DeError> {
    use serde::de::IntoDeserializer;
    let mut item = doc.0.as_item();
    for key in path {
        match item.get(key) {
            Some(next) => item = next,
            None => return Ok(None),
        }
    }
    match item {
        // Through a document rooted at the table: converting it to an inline value would drop
        // the spans of its sub-tables (`[jobs.a.connections]`), and `Spanned` needs them.
        toml_edit::Item::Table(table) => {
            T::deserialize(toml_edit::de::Deserializer::from(toml_edit::DocumentMut::from(table.clone()))).map(Some)
        }
        toml_edit::Item::Value(value) => T::deserialize(value.clone().into_deserializer()).map(Some),
        other => match other.clone().into_value() {
            Ok(value) => T::deserialize(value.into_deserializer()).map(Some),
            Err(_) => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select<T: DeserializeOwned>(text: &str, path: &[&str]) -> Result<Option<T>, DeError> {
        super::select(&Doc::parse(text).unwrap(), path)
    }

    #[test]
    fn select_skips_other_sections_and_their_errors() {
        let text = "[supervisor]\nbogus = 1\n[jobs.a]\ncommand = [\"x\"]\n[jobs.b]\nbad = 2\n";
        let job: RawJob = select(text, &["jobs", "a"]).unwrap().unwrap();
        assert!(job.command.is_some());
        assert!(select::<RawJob>(text, &["jobs", "b"]).is_err());
        assert!(select::<RawSupervisor>(text, &["supervisor"]).is_err());
    }

    #[test]
    fn select_absent_is_none() {
        assert!(select::<RawHttp>("[supervisor]\n", &["http"]).unwrap().is_none());
        assert!(select::<RawJob>("", &["jobs", "a"]).unwrap().is_none());
    }

    #[test]
    fn unknown_field_has_key_span() {
        let text = "[jobs.a]\ncommand = [\"x\"]\nrestrat = \"always\"\n";
        let err = select::<RawJob>(text, &["jobs", "a"]).unwrap_err();
        assert!(
            err.message().starts_with("unknown field `restrat`"),
            "{}",
            err.message()
        );
        assert_eq!(err.span(), Some(25..32));
    }

    #[test]
    fn dotted_key_tables_deserialize() {
        let text = "jobs.a.command = [\"x\"]\njobs.a.env.A = \"1\"\njobs.a.backoff.max = \"5s\"\n";
        let job: RawJob = select(text, &["jobs", "a"]).unwrap().unwrap();
        assert_eq!(job.env.len(), 1);
        assert_eq!(job.backoff.unwrap().max.unwrap().into_inner(), "5s");
    }

    #[test]
    fn spans_are_offsets_in_the_whole_text() {
        // A job's values keep their positions although the job is deserialized on its own.
        let text = "[supervisor]\n\n[jobs.a]\ncommand = [\"x\"]\nrestart = \"always\"\n";
        let job: RawJob = select(text, &["jobs", "a"]).unwrap().unwrap();
        let r = job.restart.unwrap();
        assert_eq!(&text[r.span()], "\"always\"");
    }

    #[test]
    fn empty_documents() {
        assert!(Doc::parse("").unwrap().is_empty());
        assert!(Doc::parse("  # only a comment\n\n").unwrap().is_empty());
        assert!(!Doc::parse("[supervisor]\n").unwrap().is_empty());
    }

    #[test]
    fn keys_carry_spans() {
        let keys: Keys = select("[jobs.web]\n[jobs.db]\n", &["jobs"]).unwrap().unwrap();
        let spans: Vec<_> = keys.keys().map(|k| (k.get_ref().clone(), k.span())).collect();
        assert_eq!(spans, vec![("db".to_string(), 17..19), ("web".to_string(), 6..9)]);
    }
}
