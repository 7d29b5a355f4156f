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
//! - Limits (a file may hold anything, SPEC §7): defaults nest at most [`MAX_DEPTH`] deep, and
//!   one expanded value is at most [`MAX_EXPANDED_BYTES`] long. Past either, an error, never a
//!   stack overflow or a memory blow-up.

/// How deep `${A:-${B:-...}}` may nest.
pub(super) const MAX_DEPTH: usize = 10;
/// The longest value one string may expand to.
pub(super) const MAX_EXPANDED_BYTES: usize = 1 << 20;

/// Why a string could not be expanded. The caller knows where the string is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExpandError {
    /// `${NAME}` with NAME not set.
    Undefined(String),
    /// A `${` with no closing `}`; holds the text from the `${` on.
    Unterminated(String),
    /// `${...}` whose content is not `NAME` or `NAME:-default`; holds the content.
    Malformed(String),
    /// Defaults nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The value would be longer than [`MAX_EXPANDED_BYTES`].
    TooLong,
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
            ExpandError::TooDeep => (
                format!("variable defaults nest deeper than {MAX_DEPTH} levels"),
                "flatten the defaults: \"${A:-${B:-value}}\" nests two levels".into(),
            ),
            ExpandError::TooLong => (
                format!("the value expands to more than {} MiB", MAX_EXPANDED_BYTES >> 20),
                "check the variables it names: one of them is far larger than a config value".into(),
            ),
        }
    }
}

/// Expand `input` with `env` looking up variables.
pub(super) fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len().min(MAX_EXPANDED_BYTES));
    expand_into(input, env, 0, &mut out)?;
    Ok(out)
}

/// Expand `input` at nesting `depth`, appending to `out`.
fn expand_into(input: &str, env: &dyn Fn(&str) -> Option<String>, depth: usize, out: &mut String) -> Result<(), ExpandError> {
    if depth > MAX_DEPTH {
        return Err(ExpandError::TooDeep);
    }
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let end = closing_brace(body_and_tail).ok_or_else(|| ExpandError::Unterminated(rest[at..].to_string()))?;
            substitute(&body_and_tail[..end], env, depth, out)?;
            rest = &body_and_tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
        if out.len() > MAX_EXPANDED_BYTES {
            return Err(ExpandError::TooLong);
        }
    }
    out.push_str(rest);
    if out.len() > MAX_EXPANDED_BYTES {
        return Err(ExpandError::TooLong);
    }
    Ok(())
}

/// Resolve the inside of one `${...}` (found at nesting `depth`), appending to `out`.
fn substitute(body: &str, env: &dyn Fn(&str) -> Option<String>, depth: usize, out: &mut String) -> Result<(), ExpandError> {
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (name, rest) = body.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ExpandError::Malformed(body.to_string()));
    }
    if rest.is_empty() {
        let value = env(name).ok_or_else(|| ExpandError::Undefined(name.to_string()))?;
        out.push_str(&value);
        return Ok(());
    }
    match rest.strip_prefix(":-") {
        Some(default) => match env(name) {
            Some(value) if !value.is_empty() => {
                out.push_str(&value);
                Ok(())
            }
            _ => expand_into(default, env, depth + 1, out),
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
    fn nesting_is_limited() {
        let nest = |n: usize| format!("{}x{}", "${MISSING:-".repeat(n), "}".repeat(n));
        assert_eq!(ok(&nest(MAX_DEPTH)), "x");
        assert_eq!(expand(&nest(MAX_DEPTH + 1), &env), Err(ExpandError::TooDeep));
        // The case that overflowed the stack: an error, at once.
        assert_eq!(expand(&nest(70_000), &env), Err(ExpandError::TooDeep));
        assert!(ExpandError::TooDeep.describe(true).0.contains("deeper than 10"));
    }

    #[test]
    fn expanded_values_are_limited() {
        let big = |name: &str| (name == "BIG").then(|| "y".repeat(64 * 1024));
        assert_eq!(expand(&"${BIG}".repeat(16), &big).map(|s| s.len()), Ok(1 << 20));
        assert_eq!(expand(&"${BIG}".repeat(17), &big), Err(ExpandError::TooLong));
        assert_eq!(expand(&"x".repeat(MAX_EXPANDED_BYTES + 1), &big), Err(ExpandError::TooLong));
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
