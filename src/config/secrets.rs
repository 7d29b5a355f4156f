//! Secrets from files, the `*_FILE` convention of Docker secrets and the official images
//! (postgres' `POSTGRES_PASSWORD_FILE`): when `${NAME}` is not set in the environment but
//! `NAME_FILE` is, `${NAME}` is the file's content without its trailing newlines. So
//! `url = "${DATABASE_URL}"` with `DATABASE_URL_FILE=/run/secrets/database_url` reads the URL
//! from the secret, and the URL never sits in the environment or the manifest.
//!
//! Must not: put a secret's content into any message (errors name the variable and the path),
//! or read a `*_FILE` the manifest does not ask for.

use std::cell::RefCell;

/// Looks variables up in the environment, falling back to `NAME_FILE`; remembers which
/// files could not be read, so the caller can report them.
#[derive(Default)]
pub struct Lookup {
    failures: RefCell<Vec<String>>,
}

impl Lookup {
    pub fn var(&self, name: &str) -> Option<String> {
        self.var_with(name, &|n| std::env::var(n).ok(), &|p| std::fs::read_to_string(p))
    }

    pub fn var_with(
        &self,
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Option<String> {
        if let Some(v) = env(name) {
            return Some(v);
        }
        let file_var = format!("{name}_FILE");
        let path = env(&file_var)?;
        match read(&path) {
            Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                let message = format!("cannot read {name} from {file_var}={path}: {e}");
                let mut failures = self.failures.borrow_mut();
                if !failures.contains(&message) {
                    failures.push(message);
                }
                None
            }
        }
    }

    /// Messages for the `*_FILE`s that were asked for and could not be read.
    pub fn failures(&self) -> Vec<String> {
        self.failures.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("from env".into()),
            "SET_FILE" => Some("/never/read".into()),
            "URL_FILE" => Some("/run/secrets/url".into()),
            "GONE_FILE" => Some("/run/secrets/gone".into()),
            _ => None,
        }
    }

    fn read(path: &str) -> std::io::Result<String> {
        match path {
            "/run/secrets/url" => Ok("postgres://u:s3cret@db/app\r\n\n".into()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    #[test]
    fn the_file_is_read_only_when_the_variable_is_unset() {
        let l = Lookup::default();
        assert_eq!(l.var_with("SET", &env, &read).as_deref(), Some("from env"));
        assert_eq!(l.var_with("URL", &env, &read).as_deref(), Some("postgres://u:s3cret@db/app"));
        assert_eq!(l.var_with("NOPE", &env, &read), None);
        assert!(l.failures().is_empty());
    }

    #[test]
    fn an_unreadable_file_is_reported_by_variable_and_path() {
        let l = Lookup::default();
        assert_eq!(l.var_with("GONE", &env, &read), None);
        assert_eq!(l.var_with("GONE", &env, &read), None);
        let f = l.failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("cannot read GONE from GONE_FILE=/run/secrets/gone: "), "{}", f[0]);
    }
}
