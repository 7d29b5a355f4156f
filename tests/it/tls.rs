//! TLS to the database end to end (SPEC §5.1, §6): a real PostgreSQL with `ssl = on` and only
//! `hostssl` lines in pg_hba.conf, certificates the test generates (rcgen), the real corral
//! binary and real workers connecting over TLS as corral hands them the URL.

use std::process::Command;

use serde_json::Value;

use crate::budget::worker;
use crate::harness::{bin, poll, stderr, stdout, Corral, SEC};
use crate::pg::TestPg;

fn manifest(url: &str) -> String {
    manifest_for(url, "svc")
}

/// Corrals on one server need their own service, or their jobs' connections add up.
fn manifest_for(url: &str, service: &str) -> String {
    format!(
        "[database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 2\nhealth_interval = \"2s\"\nhealth_timeout = \"5s\"\n\n\
         [budget]\nservice = \"{service}\"\nrebalance_interval = \"500ms\"\n\n\
         [jobs.w]\ncommand = [\"{w}\"]\nconnections = 2\non_duplicate = \"ignore\"\nsingle_instance = false\n",
        w = worker()
    )
}

fn json(c: &Corral, verb: &str) -> Value {
    let out = c.ctl(&[verb, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn check_online(c: &Corral) -> (Option<i32>, String) {
    let out = Command::new(bin()).args(["check", "--online", "-c"]).arg(&c.config).current_dir(c.dir.path()).output().unwrap();
    (out.status.code(), format!("{}{}", stdout(&out), stderr(&out)))
}

#[test]
fn require_verify_ca_and_verify_full_with_pem_and_der_roots_are_healthy_and_measure_each_job() {
    let pg = TestPg::start_tls(60);
    let t = pg.tls();
    let (pem, der) = (t.ca_pem.display().to_string(), t.ca_der.display().to_string());
    let cases = [
        ("require", format!("{}?sslmode=require", pg.url()), "nothing"),
        // libpq: require with a root certificate verifies the chain, as verify-ca.
        ("require+root", format!("{}?sslmode=require&sslrootcert={pem}", pg.url()), "certificate chain"),
        ("verify-ca", format!("{}?sslmode=verify-ca&sslrootcert={pem}", pg.url()), "certificate chain"),
        ("verify-full pem", format!("{}?sslmode=verify-full&sslrootcert={pem}", pg.url_localhost()), "certificate and host name"),
        ("verify-full der", format!("{}?sslmode=verify-full&sslrootcert={der}", pg.url_localhost()), "certificate and host name"),
        // A relative sslrootcert starts at the manifest's directory (copied there below).
        ("verify-full relative", format!("{}?sslmode=verify-full&sslrootcert=certs/ca.pem", pg.url_localhost()), "certificate and host name"),
    ];
    let corrals: Vec<(&str, Corral, &str)> = cases
        .iter()
        .enumerate()
        .map(|(i, (name, url, verified))| {
            let (dir, config, socket) = crate::harness::setup(&manifest_for(url, &format!("svc{i}")));
            std::fs::create_dir_all(dir.path().join("certs")).unwrap();
            std::fs::copy(&t.ca_pem, dir.path().join("certs/ca.pem")).unwrap();
            let c = Corral::spawn_in(dir, config, socket, &[]);
            c.wait_ready();
            (*name, c, *verified)
        })
        .collect();
    for (name, c, verified) in &corrals {
        c.wait_state("w", "running", 20 * SEC);
        // The server's limit (60 - 3 superuser slots) and the job's live use, read over TLS.
        let ok = poll(20 * SEC, || {
            let b = json(c, "budget");
            b["limit"] == 57 && b["limit_source"] == "server" && b["jobs"][0]["connections"] == 2
        });
        assert!(ok, "{name}: {}", json(c, "budget"));
        let h = c.ctl(&["health", "--json"]);
        assert_eq!(h.status.code(), Some(0), "{name}: {}", stdout(&h));
        let tls = &json(c, "budget")["database"]["tls"];
        assert_eq!(tls["verified"], *verified, "{name}: {tls}");
        assert!(tls["version"].as_str().unwrap_or("").starts_with("TLSv1."), "{name}: {tls}");
        let (code, text) = check_online(c);
        assert_eq!(code, Some(0), "{name}: {text}");
        assert!(text.contains("tls     TLSv1.") && text.contains(&format!("verified {verified}")), "{name}: {text}");
        assert!(text.contains("limit              57  (server max_connections 60 - 3 reserved)"), "{name}: {text}");
        assert!(!text.contains(pg.password()) && !c.output().contains(pg.password()), "{name}: password leaked");
    }
}

/// One corral whose URL cannot connect: what health, status, budget, the job's wait and
/// `check --online` say, before any check ever succeeded.
fn refused(pg: &TestPg, url: &str, cause: &[&str]) {
    let c = Corral::start(&manifest(url));
    let want = |text: &str| cause.iter().all(|c| text.contains(c));
    assert!(
        poll(20 * SEC, || want(&stdout(&c.ctl(&["health"])))),
        "health never named {cause:?}: {}\n{}",
        stdout(&c.ctl(&["health"])),
        c.output()
    );
    let health = c.ctl(&["health"]);
    assert_eq!(health.status.code(), Some(1));
    let status = stdout(&c.ctl(&["status"]));
    assert!(want(&status) && status.contains("database UNHEALTHY"), "{status}");
    let budget = stdout(&c.ctl(&["budget"]));
    assert!(want(&budget), "{budget}");
    // No limit can be read and no preset is set: the job waits, and says why.
    let j = c.wait_state("w", "waiting", 10 * SEC);
    assert!(want(j["reason"].as_str().unwrap_or("")), "{j}");
    let (code, text) = check_online(&c);
    assert_eq!(code, Some(2), "{text}");
    assert!(want(&text), "{text}");
    for text in [stdout(&health), status, budget, text, c.output()] {
        assert!(!text.contains(pg.password()), "password leaked: {text}");
    }
}

#[test]
fn a_wrong_ca_a_host_name_mismatch_and_plaintext_each_fail_with_their_own_cause() {
    let pg = TestPg::start_tls(20);
    let t = pg.tls();
    refused(
        &pg,
        &format!("{}?sslmode=verify-full&sslrootcert={}", pg.url_localhost(), t.wrong_ca_pem.display()),
        &["certificate not trusted", "wrong-ca.pem", "sslrootcert=", "Supabase"],
    );
    refused(
        &pg,
        &format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), t.ca_pem.display()),
        &["host name mismatch: the server's certificate is for localhost but the URL's host is 127.0.0.1", "verify-ca"],
    );
    refused(&pg, &format!("{}?sslmode=disable", pg.url()), &["the server requires TLS", "sslmode=require"]);
}

#[test]
fn allow_and_prefer_fall_back_to_what_the_server_takes() {
    // Against a TLS-only server, allow retries with TLS and prefer starts with it.
    let pg = TestPg::start_tls(20);
    for mode in ["allow", "prefer"] {
        let c = Corral::start(&manifest(&format!("{}?sslmode={mode}", pg.url())));
        assert!(poll(20 * SEC, || json(&c, "budget")["database"]["healthy"] == true), "{mode}: {}", json(&c, "budget"));
        assert_eq!(json(&c, "budget")["database"]["tls"]["sslmode"], if mode == "allow" { "require" } else { "prefer" });
    }
    // Against a plaintext server, prefer falls back to plaintext; require says it cannot.
    let plain = TestPg::start_local(20);
    let c = Corral::start(&manifest(&format!("{}?sslmode=prefer", plain.url())));
    assert!(poll(20 * SEC, || json(&c, "budget")["database"]["healthy"] == true), "{}", json(&c, "budget"));
    assert_eq!(json(&c, "budget")["database"]["tls"], Value::Null);
    let c = Corral::start(&manifest(&format!("{}?sslmode=require", plain.url())));
    assert!(
        poll(20 * SEC, || stdout(&c.ctl(&["health"])).contains("the server does not accept TLS")),
        "{}",
        stdout(&c.ctl(&["health"]))
    );
}

