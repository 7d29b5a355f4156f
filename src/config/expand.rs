//! `${VAR}` expansion in the manifest's string values (SPEC §2).
//!
//! Runs on values after TOML parsing, so whatever a variable holds stays plain
//! text and can never inject TOML. The rules:
//!
//! - `${NAME}` is NAME's value; an undefined NAME is an error (defined but
//!   empty is fine).
//! - `${NAME:-default}` is NAME's value when defined and non-empty, else
//!   `default` (as in sh). The default is itself expanded, so defaults nest:
//!   `${A:-${B}}`.
//! - `$$` is a literal `$`, so `$${X}` keeps the text `${X}`.
//! - Any other `$` is kept as is, so `"cost $5"` or a password with a `$`
//!   needs no escaping unless the `$` is followed by `{` or `$`.
//! - NAME is `[A-Za-z_][A-Za-z0-9_]*`. A variable's value is not expanded again.

/// Why a string could not be expanded. The caller knows where the string is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExpandError {
    /// `${NAME}` with NAME not set.
    Undefined(String),
    /// A `${` with no closing `}`; holds the text from the `${` on.
    Unterminated(String),
    /// `${...}` whose content is not `NAME` or `NAME:-default`; holds the content.
    Malformed(String),
}

impl ExpandError {
    /// Message and hint. With `show_input` false the message quotes none of
    /// the string (for values that may hold a password, like the database url).
    pub fn describe(&self, show_input: bool) -> (String, String) {
        let quote = |s: &str| {
            if show_input {
                format!(" in \"{}\"", truncate(s))
            } else {
                String::new()
            }
        };
        match self {
            ExpandError::Undefined(name) => (
                format!("undefined variable \"{name}\""),
                format!("set {name} in the supervisor's environment, or give a default: \"${{{name}:-value}}\""),
            ),
            ExpandError::Unterminated(rest) => (
                format!("unterminated \"${{\"{}", quote(rest)),
                "close it with \"}\", or write \"$${\" for a literal \"${\"".into(),
            ),
            ExpandError::Malformed(body) => (
                format!("invalid variable reference{}", quote(&format!("${{{body}}}"))),
                "write \"${NAME}\" or \"${NAME:-default}\"; a name is letters, digits and \"_\", not starting with a digit"
                    .into(),
            ),
        }
    }
}

/// Expand `input` with `env` looking up variables.
pub(super) fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let end = closing_brace(body_and_tail).ok_or_else(|| ExpandError::Unterminated(rest[at..].to_string()))?;
            out.push_str(&substitute(&body_and_tail[..end], env)?);
            rest = &body_and_tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolve the inside of one `${...}`.
fn substitute(body: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (name, rest) = body.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ExpandError::Malformed(body.to_string()));
    }
    if rest.is_empty() {
        return env(name).ok_or_else(|| ExpandError::Undefined(name.to_string()));
    }
    match rest.strip_prefix(":-") {
        Some(default) => match env(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => expand(default, env),
        },
        None => Err(ExpandError::Malformed(body.to_string())),
    }
}

/// Byte index of the `}` closing a `${` whose body starts `s`, skipping nested
/// `${...}` and `$$` (so `$${` inside a default does not open anything).
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 1usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Keep quoted fragments of user text short in messages.
fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some("${HOST}\"\nx = 1".into()),
            _ => None,
        }
    }

    fn ok(s: &str) -> String {
        expand(s, &env).unwrap()
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(ok("no variables here"), "no variables here");
        assert_eq!(ok(""), "");
    }

    #[test]
    fn variables_and_defaults() {
        assert_eq!(ok("postgres://${HOST}:5432/db"), "postgres://db.example:5432/db");
        assert_eq!(ok("${MISSING:-fallback}"), "fallback");
        assert_eq!(ok("${HOST:-fallback}"), "db.example");
        assert_eq!(ok("${EMPTY}"), "");
        assert_eq!(ok("${EMPTY:-used}"), "used");
        assert_eq!(ok("${MISSING:-}"), "");
        assert_eq!(ok("${MISSING:-${HOST}}"), "db.example");
        assert_eq!(ok("${MISSING:-a${HOST}b}!"), "adb.exampleb!");
    }

    #[test]
    fn dollar_escapes() {
        assert_eq!(ok("$${HOST}"), "${HOST}");
        assert_eq!(ok("a$$b"), "a$b");
        assert_eq!(ok("cost $5 and $"), "cost $5 and $");
        assert_eq!(ok("${MISSING:-$${x}}"), "${x}");
    }

    #[test]
    fn values_are_not_expanded_again() {
        assert_eq!(ok("${TRICKY}"), "${HOST}\"\nx = 1");
    }

    #[test]
    fn undefined_is_an_error() {
        let e = expand("x${NOPE}y", &env).unwrap_err();
        assert_eq!(e, ExpandError::Undefined("NOPE".into()));
        let (message, hint) = e.describe(true);
        assert_eq!(message, "undefined variable \"NOPE\"");
        assert!(hint.contains("${NOPE:-value}"));
        assert!(expand("${MISSING:-${NOPE}}", &env).is_err());
    }

    #[test]
    fn malformed_references() {
        assert_eq!(expand("a${HOST", &env), Err(ExpandError::Unterminated("${HOST".into())));
        assert_eq!(expand("${}", &env), Err(ExpandError::Malformed(String::new())));
        assert_eq!(expand("${1A}", &env), Err(ExpandError::Malformed("1A".into())));
        assert_eq!(expand("${HOST-x}", &env), Err(ExpandError::Malformed("HOST-x".into())));
        assert!(expand("${HO ST}", &env).is_err());
    }

    #[test]
    fn messages_can_hide_the_input() {
        let e = expand("postgres://u:pa${ss@h", &env).unwrap_err();
        assert_eq!(e.describe(true).0, "unterminated \"${\" in \"${ss@h\"");
        assert_eq!(e.describe(false).0, "unterminated \"${\"");
        assert!(!ExpandError::Malformed("secret".into())
            .describe(false)
            .0
            .contains("secret"));
    }
}
