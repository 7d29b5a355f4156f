//! What a check finds: [`Diagnostic`]s (file, line, column, message and the fix), collected with
//! byte offsets and located in one pass at the end; and the translation of toml's and serde's
//! messages into ours.

use std::path::{Path, PathBuf};

use super::{Cx, Span};
use crate::config::raw::Str;

/// Errors reported from one file; past this, a count of the rest (a status line stays small).
pub(super) const MAX_ERRORS: usize = 50;
/// User text quoted in a message is cut to this many characters.
const QUOTE_MAX: usize = 64;

/// How bad a finding is: an error refuses the config (a reload keeps the running one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a manifest, located in its file: file, line, column, message and the
/// fix. The one type for every finding, from reading the file to the last cross-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (missing file).
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The fix: what to do about it, when we know.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error about the whole file (no position).
    pub fn error(file: &Path, message: impl Into<String>, hint: Option<String>) -> Self {
        Diagnostic { severity: Severity::Error, file: file.to_path_buf(), line: 0, column: 0, message: message.into(), hint }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)?;
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every finding in one file (we report all of them, not just the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // The same long hint fifty times over (an unknown key in every job lists the valid
            // keys) would make the message too long to read or to show in `status`.
            let repeated = i > 0 && e.hint.is_some() && self.0[i - 1].hint == e.hint;
            if repeated {
                let short = Diagnostic { hint: Some("as above".into()), ..e.clone() };
                write!(f, "{}: {short}", e.severity)?;
            } else {
                write!(f, "{}: {e}", e.severity)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The findings of one build, each with the byte offset it points at; line:col are computed
/// once, at the end, in one pass over the text (per finding it would be quadratic in a big file).
pub(super) struct Diagnostics {
    file: PathBuf,
    found: Vec<(Option<usize>, Diagnostic)>,
}

impl Diagnostics {
    pub(super) fn new(file: &Path) -> Self {
        Diagnostics { file: file.to_path_buf(), found: Vec::new() }
    }

    pub(super) fn file(&self) -> &Path {
        &self.file
    }

    pub(super) fn push(&mut self, severity: Severity, at: Option<usize>, message: String, hint: Option<String>) {
        let d = Diagnostic { severity, file: self.file.clone(), line: 0, column: 0, message, hint };
        self.found.push((at, d));
    }

    /// How many were found so far (a check can tell whether its callee reported).
    pub(super) fn len(&self) -> usize {
        self.found.len()
    }

    pub(super) fn has_errors(&self) -> bool {
        self.found.iter().any(|(_, d)| d.severity == Severity::Error)
    }

    /// Located, in file order (which is how a reader goes through them), at most [`MAX_ERRORS`].
    pub(super) fn finish(self, text: &str) -> ConfigErrors {
        let mut found = locate(text, self.found);
        found.dedup();
        if found.len() > MAX_ERRORS {
            let more = found.len() - MAX_ERRORS;
            found.truncate(MAX_ERRORS);
            let message = format!("... and {more} more error(s) not shown");
            found.push(Diagnostic::error(&self.file, message, Some("fix the errors above first".into())));
        }
        ConfigErrors(found)
    }
}

impl Cx<'_> {
    pub(super) fn error(&mut self, span: Option<Span>, message: impl Into<String>, hint: Option<String>) {
        self.diagnostics.push(Severity::Error, span.map(|s| s.start), message.into(), hint);
    }

    pub(super) fn unknown_key(&mut self, key: &Str, known: &[&str], context: &str) {
        let (message, hint) = unknown_key_message(key.get_ref(), known, context);
        self.error(Some(key.span()), message, Some(hint));
    }

    /// Turn toml's and serde's messages into ours.
    pub(super) fn toml_error(&mut self, text: &str, span: Option<Span>, anchor: Option<Span>) {
        let span = span.or(anchor);
        let quoted: Vec<&str> = text.split('`').skip(1).step_by(2).collect();
        let (message, hint) = if text.starts_with("unknown field `") {
            // "unknown field `x`, expected one of `a`, `b`": the rest are the valid keys.
            let known = quoted.get(1..).unwrap_or_default();
            unknown_key_message(quoted.first().copied().unwrap_or_default(), known, "remove it")
        } else if text.starts_with("missing field `") {
            let key = quoted.first().copied().unwrap_or_default();
            (format!("missing key \"{key}\""), format!("add {key} = ..."))
        } else if let Some(rest) = text.strip_prefix("invalid type: ") {
            self.type_message(rest, span.as_ref())
        } else if let Some(line) = text.lines().find(|l| l.starts_with("duplicate key `")) {
            let key = quoted.first().copied().unwrap_or_default();
            if line.ends_with("in table `jobs`") {
                let hint = format!("[jobs.{key}] appears twice: merge the two tables or rename one");
                (format!("duplicate job \"{key}\""), hint)
            } else {
                (
                    format!("duplicate key \"{key}\""),
                    "a key may be set only once in a table: remove one of them".into(),
                )
            }
        } else {
            let message = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            (
                format!("invalid TOML: {message}"),
                "fix the TOML syntax at this position".into(),
            )
        };
        self.error(span, message, Some(hint));
    }

    /// From serde's "FOUND, expected WANTED" to a sentence naming the key.
    pub(super) fn type_message(&self, rest: &str, span: Option<&Span>) -> (String, String) {
        let (found, wanted) = rest.split_once(", expected ").unwrap_or((rest, "another type"));
        if wanted == "a borrowed string" {
            // toml cannot give a position to a table made of dotted keys, so
            // `Spanned` values fail this way when the user wrote `key.sub = ...`.
            let message = "expected a value here, found a table written with dotted keys".to_string();
            return (
                message,
                "write the value inline, e.g. key = \"value\" or key = { sub = 1 }".into(),
            );
        }
        let wanted = match wanted {
            "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer",
            "a sequence" => "an array",
            "a boolean" => "true or false",
            w if w.starts_with("struct ") || w == "a map" => "a table",
            w => w,
        };
        let found = match found.replace('`', "") {
            f if f == "map" => "a table".to_string(),
            f if f == "sequence" => "an array".to_string(),
            f => f,
        };
        let message = match span.and_then(|s| key_before(self.text, s.start)) {
            Some(key) => format!("\"{key}\" must be {wanted}, found {found}"),
            None => format!("wrong type: expected {wanted}, found {found}"),
        };
        (message, format!("change the value to {wanted}"))
    }
}

pub(super) fn unknown_key_message(key: &str, known: &[&str], otherwise: &str) -> (String, String) {
    let key = &quote(key);
    match did_you_mean(key, known) {
        Some(s) => (
            format!("unknown key \"{key}\" (did you mean \"{s}\"?)"),
            format!("rename it to \"{s}\""),
        ),
        None if known.is_empty() => (format!("unknown key \"{key}\""), otherwise.to_string()),
        None => (
            format!("unknown key \"{key}\""),
            format!("{otherwise}; valid keys here: {}", known.join(", ")),
        ),
    }
}

/// The closest candidate, if close enough to be a typo.
pub(super) fn did_you_mean<'c>(input: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let len = input.chars().count();
    // Far longer than every candidate: no typo, and the distance would cost len x candidates.
    if len > 3 * candidates.iter().map(|c| c.len()).max().unwrap_or(0) {
        return None;
    }
    let limit = (len / 3).max(1);
    // Optimal string alignment: a swap of two neighbours is one edit ("restrat").
    let input = input.to_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::osa_distance(&input, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Give each error its 1-based line and column (in characters), in one pass over the text,
/// and return them in file order (errors without a position first).
fn locate(text: &str, mut errors: Vec<(Option<usize>, Diagnostic)>) -> Vec<Diagnostic> {
    errors.sort_by_key(|(offset, _)| *offset);
    let (mut at, mut line, mut column) = (0usize, 1usize, 1usize);
    for (offset, e) in errors.iter_mut() {
        let Some(mut offset) = *offset else { continue };
        offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        for c in text[at..offset].chars() {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        at = offset;
        (e.line, e.column) = (line, column);
    }
    errors.into_iter().map(|(_, e)| e).collect()
}

/// User text in a message, cut to [`QUOTE_MAX`] characters (a 65,536-character name must not
/// make a 65,536-character error line, nor 2,000 of them).
pub(super) fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// The key of `key = value` whose value starts at `offset`, if it reads so.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?.trim_end().strip_suffix('=')?.trim_end();
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .last()
        .map(|(i, _)| i)?;
    Some(before[start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn toml_syntax_error() {
        let e = one("[supervisor]\nsocket = \n", 2, 10, "invalid TOML: ");
        assert!(e.hint.is_some());
    }

    #[test]
    fn duplicate_job() {
        let e = one(
            &format!("{JOB}[jobs.db]\ncommand = [\"d\"]\n{JOB}"),
            5,
            1,
            "duplicate job \"web\"",
        );
        assert!(e.hint.unwrap().contains("[jobs.web] appears twice"));
    }

    #[test]
    fn duplicate_key() {
        one(
            &format!("{JOB}priority = 1\npriority = 2\n"),
            4,
            1,
            "duplicate key \"priority\"",
        );
    }

    #[test]
    fn unknown_key_with_suggestion() {
        let e = one(
            &format!("{JOB}restrat = \"always\"\n"),
            3,
            1,
            "unknown key \"restrat\" (did you mean \"restart\"?)",
        );
        assert_eq!(e.hint.as_deref(), Some("rename it to \"restart\""));
    }

    #[test]
    fn unknown_key_without_suggestion_lists_the_valid_ones() {
        let e = one(
            "[http]\nlisten = \"127.0.0.1:1\"\nzzzzzz = 1\n",
            3,
            1,
            "unknown key \"zzzzzz\"",
        );
        assert_eq!(e.message, "unknown key \"zzzzzz\"");
        assert!(e.hint.unwrap().contains("valid keys here: listen"));
    }

    #[test]
    fn unknown_key_in_nested_tables() {
        one(
            &format!("{JOB}backoff = {{ intial = \"1s\" }}\n"),
            3,
            13,
            "unknown key \"intial\" (did you mean \"initial\"?)",
        );
        one(
            &format!("{DB}{JOB}connections = {{ max = 2, overflw = 1 }}\n"),
            5,
            15,
            "unknown key \"overflw\" (did you mean \"overflow\"?)",
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = one(
            &format!("{JOB}start_retries = \"3\"\n"),
            3,
            17,
            "\"start_retries\" must be an integer, found string \"3\"",
        );
        assert!(e.hint.is_some());
        one(
            &format!("{JOB}autostart = \"yes\"\n"),
            3,
            13,
            "\"autostart\" must be true or false",
        );
        one(
            &format!("{JOB}success_codes = [0, \"1\"]\n"),
            3,
            21,
            "wrong type: expected an integer, found string \"1\"",
        );
        one(
            "supervisor = 5\n",
            1,
            14,
            "\"supervisor\" must be a table, found integer 5",
        );
        one("jobs = []\n", 1, 8, "\"jobs\" must be a table, found an array");
    }

    #[test]
    fn dotted_table_where_a_value_belongs() {
        one(
            &format!("{JOB}restart.x = 1\n"),
            3,
            9,
            "expected a value here, found a table",
        );
    }

    #[test]
    fn display_reads_like_cargo() {
        let e = one(&format!("{JOB}restrat = \"always\"\n"), 3, 1, "unknown key");
        assert_eq!(
            e.to_string(),
            "/etc/corral/supervisor.toml:3:1: unknown key \"restrat\" (did you mean \"restart\"?)\n  hint: rename it to \"restart\""
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(did_you_mean("restrat", &["restart", "priority"]), Some("restart"));
        assert_eq!(did_you_mean("xyz", &["restart", "priority"]), None);
        let err = |at| (Some(at), Diagnostic::error(Path::new(FILE), "", None));
        let at: Vec<(usize, usize)> = locate("ab\ncd\né=x", vec![err(9), err(0), err(4)]).iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(locate("", vec![err(0)])[0].line, 1);
        assert_eq!(quote(&"x".repeat(100)).len(), 67);
        assert_eq!(key_before("a.b_c = 5", 8).as_deref(), Some("b_c"));
        assert_eq!(key_before("[1, 5]", 4), None);
        assert_eq!(did_you_mean(&"restart".repeat(10), &["restart"]), None);
    }
}
