//! Password redaction for database URLs and for any text that may echo one (SPEC §10: passwords
//! never appear in logs, status, `budget` or errors).
//!
//! Owns: [`redact`] (a URL or key=value DSN made safe to print) and [`redact_text`] (an arbitrary
//! message scrubbed of a given URL's password). Pure string work: no I/O, no tokio, no
//! tokio-postgres, so every other module (config errors, status, logs) can use it.
//!
//! When in doubt this module hides too much rather than too little: a message that lost a few
//! characters is a nuisance, a leaked password is an incident.

pub use super::conninfo::MASK;
use super::conninfo::{mask_spans, secret_spans, secrets, url_scheme_end};

/// A database URL or key=value connection string with every password replaced by `***`.
///
/// - URL form: `postgres://user:pass@host/db?password=x&sslpassword=y` →
///   `postgres://user:***@host/db?password=***&sslpassword=***`.
/// - DSN form: `host=h password=secret` or `password='s e\'cret'` → `host=h password=***`.
///
/// The user name, hosts, ports, database and other parameters stay: they are what an operator
/// needs to tell which database a message is about. The spans come from `conninfo`, the one
/// reader of connection strings; text that does not parse is masked as widely as any driver
/// might read its password.
pub fn redact(url: &str) -> String {
    mask_spans(url, &secret_spans(url))
}

/// `s` with the password(s) of `url` removed wherever they occur, plus any URL userinfo
/// password or `password=` assignment found in `s` itself.
///
/// Error texts of tokio-postgres and of the server may echo the connection string, a host
/// string containing a misplaced password, or (through `Debug` of foreign types) the password
/// alone; every form of the secret is replaced: as written in the URL, percent-decoded, and
/// unescaped from a quoted DSN value. Every occurrence is replaced however short the password,
/// because a short password is still a password.
pub fn redact_text(s: &str, url: &str) -> String {
    let mut out = s.to_string();
    for secret in secrets(url) {
        out = out.replace(secret.as_str(), MASK);
    }
    scrub_assignments(&scrub_embedded_urls(&out))
}

/// Finds the next `password` (any case, so also `sslpassword`) followed by optional spaces and
/// `=` at or after `from`; returns (start of the word, start of the value).
fn find_assignment(s: &str, from: usize) -> Option<(usize, usize)> {
    let lower = s.to_ascii_lowercase();
    let b = s.as_bytes();
    let mut search = from;
    while let Some(rel) = lower[search..].find("password") {
        let start = search + rel;
        let mut i = start + "password".len();
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            return Some((start, i));
        }
        search = start + "password".len();
    }
    None
}

/// Masks the value of every `password=value` in free text. A quoted value ends at its closing
/// quote (or the end of the text); a bare one at whitespace or a quote character, not at `&`,
/// since `&` may belong to the password (a URL's query is handled exactly by `redact_url`).
fn scrub_assignments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let b = s.as_bytes();
    let mut from = 0;
    while let Some((_, vstart)) = find_assignment(s, from) {
        let mut i = vstart;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'"' | b'\'' | b'`')
            {
                i += 1;
            }
        }
        let value = &s[vstart..i.min(s.len())];
        if !value.is_empty() && value != MASK {
            out.push_str(&s[copied..vstart]);
            out.push_str(MASK);
            copied = i.min(s.len());
        }
        from = i.max(vstart + 1).min(s.len());
        if from >= s.len() {
            break;
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// Runs [`redact_url`] over every `scheme://...` token embedded in free text (a token ends at
/// whitespace or a quote).
fn scrub_embedded_urls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(idx) = rest.find("://") {
        let start = rest[..idx]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(p, c)| p + c.len_utf8());
        let end = rest[idx..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(rest.len(), |p| idx + p);
        out.push_str(&rest[..start]);
        let token = &rest[start..end];
        if url_scheme_end(token).is_some() {
            out.push_str(&redact(token));
        } else {
            out.push_str(token);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_userinfo_password_is_masked_user_and_host_kept() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example.com:5432/app"),
            "postgres://app:***@db.example.com:5432/app"
        );
        assert_eq!(
            redact("postgresql://app:s3cret@h/db?sslmode=require"),
            "postgresql://app:***@h/db?sslmode=require"
        );
    }

    #[test]
    fn url_without_password_is_unchanged() {
        for u in [
            "postgres://app@h/db",
            "postgres://h:5432/db",
            "postgres://h/db?application_name=corral/svc/job",
            "postgres://app:@h/db",
        ] {
            assert_eq!(redact(u), u);
        }
    }

    #[test]
    fn url_query_password_params_are_masked() {
        assert_eq!(
            redact("postgres://h/db?user=app&password=s3cret&sslmode=require"),
            "postgres://h/db?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgres://u:a@h/db?PASSWORD=b&sslpassword=c"),
            "postgres://u:***@h/db?PASSWORD=***&sslpassword=***"
        );
    }

    #[test]
    fn url_password_with_raw_at_sign_is_masked_whole() {
        let r = redact("postgres://app:p@ss@w0rd@host:6543/postgres");
        assert_eq!(r, "postgres://app:***@host:6543/postgres");
        let r = redact("postgres://app:pa/ss@host/db");
        assert_eq!(r, "postgres://app:***@host/db");
    }

    #[test]
    fn supabase_pooler_url() {
        let u = "postgresql://postgres.abcdefgh:Sup3r%24ecret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres";
        let r = redact(u);
        assert!(!r.contains("Sup3r"), "{r}");
        assert!(r.contains("postgres.abcdefgh:***@aws-0-eu-central-1.pooler.supabase.com:6543"));
    }

    #[test]
    fn dsn_plain_and_quoted_passwords_are_masked() {
        assert_eq!(
            redact("host=localhost user=app password=s3cret dbname=app"),
            "host=localhost user=app password=*** dbname=app"
        );
        assert_eq!(
            redact("host=h password = 'with space \\' quote' dbname=app"),
            "host=h password = *** dbname=app"
        );
        assert_eq!(redact("host=h sslpassword=x"), "host=h sslpassword=***");
        assert_eq!(redact("host=h user=app"), "host=h user=app");
    }

    #[test]
    fn dsn_unterminated_quote_masks_the_rest() {
        let r = redact("host=h password='abc def");
        assert!(!r.contains("abc") && !r.contains("def"), "{r}");
        let r = redact("password='abc host=h");
        assert!(!r.contains("abc"), "{r}");
    }

    #[test]
    fn redact_text_removes_every_form_of_the_password() {
        let url = "postgres://app:p%40ss%20w0rd@h/db";
        let msg = "FATAL: password authentication failed; tried p@ss w0rd and p%40ss%20w0rd";
        let r = redact_text(msg, url);
        assert!(
            !r.contains("p@ss w0rd") && !r.contains("p%40ss%20w0rd"),
            "{r}"
        );
        assert!(r.contains("password authentication failed"));
    }

    #[test]
    fn redact_text_handles_dsn_secrets_and_embedded_urls() {
        let dsn = "host=h password='it''s'";
        // Not a valid DSN quote escape: whatever the parser makes of it, `it` must go.
        let r = redact_text("connect to host=h password='it''s' failed", dsn);
        assert!(!r.contains("it'"), "{r}");

        let r = redact_text(
            "error: invalid url \"postgres://x:topsecret@h/db\" (see password=other)",
            "postgres://unrelated@h/db",
        );
        assert!(!r.contains("topsecret") && !r.contains("other"), "{r}");
        assert!(r.contains("postgres://x:***@h/db"), "{r}");
    }

    #[test]
    fn redact_text_masks_the_bare_password_anywhere() {
        let url = "postgres://app:hunter2@h/db";
        let r = redact_text("Debug { password: Some([104]), raw: \"hunter2\" }", url);
        assert!(!r.contains("hunter2"), "{r}");
    }

    #[test]
    fn redact_text_keeps_normal_messages() {
        let url = "postgres://app:hunter2@h/db";
        let m = "error connecting to server: Connection refused (os error 111)";
        assert_eq!(redact_text(m, url), m);
        let m = "FATAL: password authentication failed for user \"app\"";
        assert_eq!(redact_text(m, url), m);
    }

}
