//! Password redaction for database URLs and for any text that may echo one (SPEC §10: passwords
//! never appear in logs, status, `budget` or errors).
//!
//! Owns: [`redact`] (a URL or key=value DSN made safe to print) and [`redact_text`] (an arbitrary
//! message scrubbed of a given URL's password). Pure string work: no I/O, no tokio, no
//! tokio-postgres, so every other module (config errors, status, logs) can use it.
//!
//! When in doubt this module hides too much rather than too little: a message that lost a few
//! characters is a nuisance, a leaked password is an incident.

/// What replaces a secret.
pub const MASK: &str = "***";

/// A database URL or key=value connection string with every password replaced by `***`.
///
/// - URL form: `postgres://user:pass@host/db?password=x&sslpassword=y` →
///   `postgres://user:***@host/db?password=***&sslpassword=***`.
/// - DSN form: `host=h password=secret` or `password='s e\'cret'` → `host=h password=***`.
///
/// The user name, hosts, ports, database and other parameters stay: they are what an operator
/// needs to tell which database a message is about.
pub fn redact(url: &str) -> String {
    if url_scheme_end(url).is_some() {
        redact_url(url)
    } else {
        redact_dsn(url)
    }
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
    let mut secrets = secrets_of(url);
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut out = s.to_string();
    for secret in &secrets {
        if !secret.is_empty() && secret != MASK {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    scrub_assignments(&scrub_embedded_urls(&out))
}

/// Byte index just past `scheme://` when `s` starts with a URL scheme.
fn url_scheme_end(s: &str) -> Option<usize> {
    let idx = s.find("://")?;
    let scheme = &s[..idx];
    let valid = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(idx + 3)
}

/// Where the userinfo of the URL remainder `rest` (after `scheme://`) ends, i.e. the `@` index.
///
/// tokio-postgres takes everything up to the first `@` anywhere as credentials; a password
/// written with a raw `@` goes on to the last `@`. Hosts and database names never contain `@`,
/// so the userinfo ends at the last `@` before the query that follows the first `@`.
fn userinfo_end(rest: &str) -> Option<usize> {
    let first = rest.find('@')?;
    let query = rest[first..].find('?').map_or(rest.len(), |q| first + q);
    rest[..query].rfind('@')
}

fn redact_url(url: &str) -> String {
    let Some(start) = url_scheme_end(url) else {
        return redact_dsn(url);
    };
    let rest = &url[start..];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..start]);
    let after_userinfo = match userinfo_end(rest) {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, pass)) if !pass.is_empty() => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                _ => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match after_userinfo.split_once('?') {
        None => out.push_str(after_userinfo),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, v)) if is_secret_key(&percent_decode(k)) && !v.is_empty() => {
                        format!("{k}={MASK}")
                    }
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
    }
    out
}

/// Keys whose value is a secret: libpq's `password` and `sslpassword` (the key file's
/// passphrase), in any case.
fn is_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    k == "password" || k == "sslpassword"
}

/// One `key = value` of a DSN, with byte spans into the source.
struct DsnParam {
    key: String,
    /// Span of the value as written (including quotes).
    value_span: (usize, usize),
    /// The value with quotes and backslash escapes removed.
    value: String,
}

/// Parses a libpq key=value string the way tokio-postgres does. `Err(pos)` gives the byte
/// where parsing failed (unterminated quote, missing `=`), with the parameters read so far.
fn parse_dsn(s: &str) -> (Vec<DsnParam>, Option<usize>) {
    let b = s.as_bytes();
    let mut params = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= b.len() {
            return (params, None);
        }
        let kstart = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = s[kstart..i].to_string();
        i = skip_ws(i);
        if i >= b.len() || b[i] != b'=' {
            return (params, Some(kstart));
        }
        i = skip_ws(i + 1);
        let vstart = i;
        let mut value = String::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\'' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        let c = s[i + 1..].chars().next().unwrap_or('\\');
                        value.push(c);
                        i += 1 + c.len_utf8();
                    }
                    _ => {
                        let c = s[i..].chars().next().unwrap_or('?');
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            if !closed {
                return (params, Some(kstart));
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    let c = s[i + 1..].chars().next().unwrap_or('\\');
                    value.push(c);
                    i += 1 + c.len_utf8();
                } else {
                    let c = s[i..].chars().next().unwrap_or('?');
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        params.push(DsnParam {
            key,
            value_span: (vstart, i),
            value,
        });
    }
}

fn redact_dsn(s: &str) -> String {
    let (params, failed_at) = parse_dsn(s);
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    for p in params.iter().filter(|p| is_secret_key(&p.key)) {
        let (a, z) = p.value_span;
        if a == z {
            continue;
        }
        out.push_str(&s[copied..a]);
        out.push_str(MASK);
        copied = z;
    }
    match failed_at {
        None => out.push_str(&s[copied..]),
        // The rest does not parse (e.g. an unterminated quote): its secrets cannot be located
        // exactly, so mask from any `password=` in it to the end.
        Some(pos) => {
            out.push_str(&s[copied..pos]);
            out.push_str(&mask_rest_after_password(&s[pos..]));
        }
    }
    out
}

fn mask_rest_after_password(s: &str) -> String {
    match find_assignment(s, 0) {
        Some((_, value_start)) => format!("{}{MASK}", &s[..value_start]),
        None => s.to_string(),
    }
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
            out.push_str(&redact_url(token));
        } else {
            out.push_str(token);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every written form of every secret in `url`.
fn secrets_of(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut add = |raw: &str| {
        if raw.is_empty() {
            return;
        }
        found.push(raw.to_string());
        let decoded = percent_decode(raw);
        if decoded != raw {
            found.push(decoded);
        }
    };
    if let Some(start) = url_scheme_end(url) {
        let rest = &url[start..];
        let after = match userinfo_end(rest) {
            Some(at) => {
                if let Some((_, pass)) = rest[..at].split_once(':') {
                    add(pass);
                    // What tokio-postgres itself takes as the password: up to the first `@`.
                    if let Some((_, p)) = rest[..rest.find('@').unwrap_or(at)].split_once(':') {
                        add(p);
                    }
                }
                &rest[at + 1..]
            }
            None => rest,
        };
        if let Some((_, query)) = after.split_once('?') {
            for param in query.split('&') {
                if let Some((k, v)) = param.split_once('=') {
                    if is_secret_key(&percent_decode(k)) {
                        add(v);
                    }
                }
            }
        }
    } else {
        for p in parse_dsn(url).0 {
            if is_secret_key(&p.key) {
                let (a, z) = p.value_span;
                let written = url[a..z].trim_matches('\'');
                found.push(written.to_string());
                found.push(p.value);
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// Percent-decoding as tokio-postgres applies it to URL parts (invalid UTF-8 becomes U+FFFD,
/// as it would in any message that echoes it).
fn percent_decode(s: &str) -> String {
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
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn percent_decode_edge_cases() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
