//! The Python examples (examples/python) run as real corral jobs against a
//! real PostgreSQL: they size their pools from the env corral gives them,
//! show up in pg_stat_activity under corral/<service>/<job>, and rebuild
//! their pool when a reload changes the quota (quota file + SIGHUP).
//! Needs python3 with sqlalchemy, psycopg2 and asyncpg (.ci/run installs them).

use crate::harness::{Corral, SEC};
use crate::pg::TestPg;

fn require_python_packages() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import sqlalchemy, psycopg2, asyncpg"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "python3 with sqlalchemy, psycopg2 and asyncpg is needed: pip install sqlalchemy psycopg2-binary asyncpg");
}

fn manifest(url: &str, max: u32) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        "[database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 2\n\n\
         [budget]\nservice = \"svc\"\nrebalance_interval = \"500ms\"\n\n\
         [jobs.sqla]\ncommand = [\"python3\", \"{root}/examples/python/sqlalchemy_scraper.py\", \"{{dir}}\"]\n\
         env = {{ PYTHONUNBUFFERED = \"1\" }}\nconnections = {{ min = 1, max = {max}, overflow = 1 }}\nquota_signal = \"SIGHUP\"\n\n\
         [jobs.apg]\ncommand = [\"python3\", \"{root}/examples/python/asyncpg_scraper.py\", \"{{dir}}\"]\n\
         env = {{ PYTHONUNBUFFERED = \"1\" }}\nconnections = {{ min = 1, max = {max} }}\nquota_signal = \"SIGHUP\"\n"
    )
}

#[test]
fn python_examples_use_their_quota_and_follow_a_change() {
    require_python_packages();
    let pg = TestPg::start(30);
    let c = Corral::start(&manifest(&pg.url(), 4));
    c.wait_output("[sqla] processed item 2", 30 * SEC);
    c.wait_output("[apg] processed item 2", 30 * SEC);
    for app in ["corral/svc/sqla", "corral/svc/apg"] {
        let n: u32 = pg
            .admin_sql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"))
            .trim()
            .parse()
            .unwrap();
        assert!((1..=4).contains(&n), "{app} has {n} connections\n{}", c.output());
    }
    // A reload that lowers max only rebalances: same pids, new pool size via SIGHUP.
    let before = c.status();
    c.write_config(&manifest(&pg.url(), 2));
    c.wait_output("quota changed job=apg quota=2", 20 * SEC);
    c.wait_output("pool_size=1 max_overflow=1", 20 * SEC);
    let after = c.status();
    for i in 0..2 {
        assert_eq!(after["jobs"][i]["pid"], before["jobs"][i]["pid"], "a quota change restarted a job");
    }
}
