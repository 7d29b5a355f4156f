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
//! document in one go: [`select`] deserializes one section or one job and skips
//! the rest, so a typo in one job does not hide the mistakes in another.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A string value with its position.
pub(super) type Str = Spanned<String>;

/// The keys of one table, with their positions, values skipped.
pub(super) type Keys = BTreeMap<Str, IgnoredAny>;

/// Top-level keys. Checked by hand against the keys of the document (not
/// with `deny_unknown_fields`) because `validate` also needs their positions.
pub(super) const TOP_KEYS: &[&str] = &["supervisor", "database", "budget", "http", "jobs"];

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub initial: Option<Str>,
    pub max: Option<Str>,
}

/// Deserialize only the value at `path` (a chain of table keys; empty for the
/// whole document). `Ok(None)` when some key of the path is absent. Errors
/// carry the span that toml attaches (the offending key or value).
pub(super) fn select<T: DeserializeOwned>(text: &str, path: &[&str]) -> Result<Option<T>, toml::de::Error> {
    Select::<T> {
        path,
        marker: PhantomData,
    }
    .deserialize(toml::Deserializer::new(text))
}

struct Select<'p, T> {
    path: &'p [&'p str],
    marker: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Select<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        match self.path.split_first() {
            None => T::deserialize(deserializer).map(Some),
            Some((head, rest)) => deserializer.deserialize_map(SelectVisitor::<T> {
                head,
                rest,
                marker: PhantomData,
            }),
        }
    }
}

struct SelectVisitor<'p, T> {
    head: &'p str,
    rest: &'p [&'p str],
    marker: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for SelectVisitor<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.head {
                found = map.next_value_seed(Select::<T> {
                    path: self.rest,
                    marker: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn keys_carry_spans() {
        let keys: Keys = select("[jobs.web]\n[jobs.db]\n", &["jobs"]).unwrap().unwrap();
        let spans: Vec<_> = keys.keys().map(|k| (k.get_ref().clone(), k.span())).collect();
        assert_eq!(spans, vec![("db".to_string(), 17..19), ("web".to_string(), 6..9)]);
    }
}
