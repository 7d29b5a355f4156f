//! `[http]`: the metrics and dashboard endpoint.

use super::diagnostics::quote;
use super::{Cx, Span};
use crate::config::raw::RawHttp;
use crate::config::HttpConfig;

impl Cx<'_> {
    pub(super) fn http(&mut self, raw: &RawHttp, anchor: Option<Span>) -> Option<HttpConfig> {
        let Some(v) = &raw.listen else {
            let hint = "add listen = \"127.0.0.1:9464\", or remove [http] to turn the HTTP endpoint off";
            self.error(anchor, "missing key \"listen\" in [http]", Some(hint.into()));
            return None;
        };
        let listen = self.nonempty("listen", v)?;
        if !is_host_port(&listen) {
            let hint = "write host:port, like \"127.0.0.1:9464\" or \"[::1]:9464\"";
            self.error(
                Some(v.span()),
                format!("invalid listen address \"{}\"", quote(&listen)),
                Some(hint.into()),
            );
            return None;
        }
        let token = match &raw.token {
            Some(v) => Some(self.nonempty("token", v)?),
            None => None,
        };
        Some(HttpConfig { listen, token })
    }
}

fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    matches!(s.rsplit_once(':'), Some((host, port)) if !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn http_needs_a_valid_listen() {
        one("[http]\n", 1, 2, "missing key \"listen\" in [http]");
        one("[http]\nlisten = \"9464\"\n", 2, 10, "invalid listen address \"9464\"");
        ok("[http]\nlisten = \"localhost:9464\"\n");
        ok("[http]\nlisten = \"[::1]:9464\"\n");
        one("[http]\nlisten = \"127.0.0.1:9464\"\ntoken = \"\"\n", 3, 9, "\"token\" is empty");
        let c = ok("[http]\nlisten = \"127.0.0.1:9464\"\ntoken = \"s3cret\"\n");
        assert_eq!(c.http.as_ref().and_then(|h| h.token.as_deref()), Some("s3cret"));
        assert!(!format!("{:?}", c.http).contains("s3cret"));
    }
}
