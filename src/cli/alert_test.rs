//! `corral alert-test` (SPEC §9): one test alert to every destination of `[alerts]`, so a user
//! sees the wiring work. Runs in the client, from the config file: no daemon needed, and the
//! command is this client's own child. Exit 0 when every destination took it, 1 when one
//! failed (the reason on stderr), 2 when the config is invalid or has no `[alerts]`.

use std::path::Path;

use super::{EXIT_OK, EXIT_REFUSED, EXIT_USAGE};
use crate::alerts::{self, Origin};
use crate::config;

pub fn run(path: &Path, json: bool) -> i32 {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return EXIT_USAGE;
        }
    };
    let Some(a) = cfg.alerts.as_ref().filter(|a| a.webhook.is_some() || a.command.is_some()) else {
        eprintln!("error: {}: no [alerts] webhook or command to send a test alert to", cfg.path.display());
        eprintln!("  hint: add [alerts] with webhook = \"${{ALERT_WEBHOOK_URL}}\" or command = [\"/usr/local/bin/page-me\"]");
        return EXIT_USAGE;
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown-host".into());
    let results = alerts::test_alert(a, &Origin { service: cfg.budget.service.clone(), host });
    let ok = results.iter().all(|(_, r)| r.is_ok());
    if json {
        let rows: Vec<_> = results.iter().map(|(to, r)| serde_json::json!({"to": to, "ok": r.is_ok(), "error": r.as_ref().err()})).collect();
        println!("{}", serde_json::json!({"sent": ok, "destinations": rows}));
    } else {
        for (to, r) in &results {
            match r {
                Ok(()) => println!("test alert sent to {to}"),
                Err(e) => eprintln!("error: test alert to {to} failed: {e}"),
            }
        }
    }
    if ok {
        EXIT_OK
    } else {
        EXIT_REFUSED
    }
}
