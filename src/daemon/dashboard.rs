//! The dashboard page (SPEC §9), `GET /` on `[http]`: one HTML document with its style and
//! script inlined, all three embedded in the binary (no CDN, no build step). The script
//! polls `/status`, `/budget` and `/history` with the page's `?token=` as a bearer token.
//!
//! The Content-Security-Policy allows exactly the embedded style and script (by hash) and
//! requests to this origin, so nothing a job name or reason contains can run.

use std::sync::OnceLock;

use base64::Engine;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use hyper::StatusCode;
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

struct Page {
    html: bytes::Bytes,
    csp: HeaderValue,
}

fn hash(text: &str) -> String {
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes())))
}

fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let html = TEMPLATE.replacen("/*STYLE*/", STYLE, 1).replacen("/*SCRIPT*/", SCRIPT, 1);
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        Page { html: html.into(), csp: HeaderValue::from_str(&csp).expect("the policy is ASCII") }
    })
}

pub fn response() -> super::http::HttpResponse {
    let p = page();
    let mut r = super::http::reply(StatusCode::OK, "text/html; charset=utf-8", p.html.clone());
    let h = r.headers_mut();
    let set: [(HeaderName, HeaderValue); 5] = [
        (CONTENT_SECURITY_POLICY, p.csp.clone()),
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    for (k, v) in set {
        h.insert(k, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_style_and_script_allowed_by_their_hashes() {
        let p = page();
        let html = std::str::from_utf8(&p.html).unwrap();
        assert!(!html.contains("/*STYLE*/") && !html.contains("/*SCRIPT*/"));
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        let csp = p.csp.to_str().unwrap();
        assert!(csp.contains(&hash(SCRIPT)) && csp.contains(&hash(STYLE)), "{csp}");
        // Nothing from elsewhere: no CDN, no external fonts or scripts.
        for needle in ["http://", "https://", "//cdn", "src=\""] {
            let outside = html.match_indices(needle).any(|(i, _)| !html[i..].starts_with("http://www.w3.org/2000/svg"));
            assert!(!outside, "{needle} in the page");
        }
        // Data only reaches the page as text.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("eval("));
    }
}
