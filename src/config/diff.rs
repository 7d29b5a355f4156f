//! What a reload changes (SPEC §8): the difference between the running config
//! and a newly validated one, as a plan the supervisor applies (or prints, for
//! `reload --dry-run`).

use serde::Serialize;

use super::{Config, HttpConfig};

/// The effect of replacing one config by another. Every list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReloadPlan {
    /// Jobs only in the new config: start them (if autostart).
    pub added: Vec<String>,
    /// Jobs only in the old config: stop them.
    pub removed: Vec<String>,
    /// Jobs whose process settings changed: restart them with the new config.
    pub restart: Vec<String>,
    /// Jobs with only other changes (priority, connections, restart policy,
    /// backoff, ...): take the new settings without a restart.
    pub update: Vec<String>,
    /// `[database]` or `[budget]` changed: re-read the limit and rebalance.
    pub budget_changed: bool,
    /// Settings that cannot change while running, one description each; they
    /// take effect at the next start of the supervisor.
    pub needs_restart: Vec<String>,
}

impl ReloadPlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self == &ReloadPlan::default()
    }
}

/// Compare the running config `old` with `new`.
pub fn diff(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    // BTreeMap iteration is in name order, so every list comes out sorted.
    for (name, job) in &new.jobs {
        match old.jobs.get(name) {
            None => plan.added.push(name.clone()),
            Some(before) if !before.process_settings_equal(job) => plan.restart.push(name.clone()),
            Some(before) if before != job => plan.update.push(name.clone()),
            Some(_) => {}
        }
    }
    plan.removed = old
        .jobs
        .keys()
        .filter(|name| !new.jobs.contains_key(*name))
        .cloned()
        .collect();
    plan.budget_changed = old.database != new.database || old.budget != new.budget;

    let (o, n) = (&old.supervisor, &new.supervisor);
    let listen = |http: &Option<HttpConfig>| http.as_ref().map(|h| h.listen.clone());
    let path = |p: &std::path::Path| p.display().to_string();
    changed(&mut plan, "http.listen", listen(&old.http), listen(&new.http));
    // Never shown: only that it changed.
    let token = |http: &Option<HttpConfig>| http.as_ref().and_then(|h| h.token.clone());
    if token(&old.http) != token(&new.http) {
        plan.needs_restart.push("http.token changed".into());
    }
    changed(
        &mut plan,
        "supervisor.lock_dir",
        Some(path(&o.lock_dir)),
        Some(path(&n.lock_dir)),
    );
    changed(
        &mut plan,
        "supervisor.socket",
        o.socket.as_deref().map(path),
        n.socket.as_deref().map(path),
    );
    changed(
        &mut plan,
        "supervisor.socket_group",
        o.socket_group.clone(),
        n.socket_group.clone(),
    );
    plan
}

fn changed(plan: &mut ReloadPlan, key: &str, old: Option<String>, new: Option<String>) {
    if old != new {
        let show = |v: Option<String>| v.map_or_else(|| "unset".to_string(), |v| format!("{v:?}"));
        plan.needs_restart
            .push(format!("{key} changed from {} to {}", show(old), show(new)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        let env = |name: &str| (name == "DATABASE_URL").then(|| "postgres://u:pw@h/db".to_string());
        parse(Path::new("/etc/corral/supervisor.toml"), text, &env).unwrap()
    }

    const BASE: &str = r#"
[supervisor]
socket = "/run/corral.sock"
[database]
url = "${DATABASE_URL}"
[jobs.a]
command = ["a"]
[jobs.b]
command = ["b"]
priority = 1
[jobs.c]
command = ["c"]
"#;

    #[test]
    fn identical_configs_give_an_empty_plan() {
        let plan = diff(&config(BASE), &config(BASE));
        assert!(plan.is_empty());
        assert_eq!(plan, ReloadPlan::default());
    }

    #[test]
    fn jobs_added_removed_restarted_updated() {
        let new = BASE
            .replace(
                "[jobs.c]\ncommand = [\"c\"]",
                "[jobs.d]\ncommand = [\"d\"]\n[jobs.aa]\ncommand = [\"x\"]",
            )
            .replace("command = [\"a\"]", "command = [\"a\", \"--v\"]")
            .replace("priority = 1", "priority = 2\nconnections = 3");
        let plan = diff(&config(BASE), &config(&new));
        assert_eq!(plan.added, vec!["aa", "d"]);
        assert_eq!(plan.removed, vec!["c"]);
        assert_eq!(plan.restart, vec!["a"]);
        assert_eq!(plan.update, vec!["b"]);
        assert!(!plan.budget_changed);
        assert!(plan.needs_restart.is_empty());
        assert!(!plan.is_empty());
    }

    #[test]
    fn env_change_restarts_restart_policy_change_updates() {
        let old = config("[jobs.a]\ncommand = [\"a\"]\n[jobs.b]\ncommand = [\"b\"]\n");
        let new = config(
            "[jobs.a]\ncommand = [\"a\"]\nenv = { X = \"1\" }\n[jobs.b]\ncommand = [\"b\"]\nrestart = \"always\"\n",
        );
        let plan = diff(&old, &new);
        assert_eq!(plan.restart, vec!["a"]);
        assert_eq!(plan.update, vec!["b"]);
    }

    #[test]
    fn budget_and_database_changes() {
        let plan = diff(&config(BASE), &config(&format!("{BASE}\n[budget]\nwarn_at = 0.9\n")));
        assert!(plan.budget_changed);
        let plan = diff(
            &config(BASE),
            &config(&BASE.replace("url = ", "adhoc_reserve = 2\nurl = ")),
        );
        assert!(plan.budget_changed);
        assert!(plan.restart.is_empty() && plan.update.is_empty());
    }

    #[test]
    fn settings_that_need_a_supervisor_restart() {
        let new = BASE.replace(
            "socket = \"/run/corral.sock\"",
            "socket = \"/tmp/c.sock\"\nlock_dir = \"/tmp/locks\"",
        ) + "\n[http]\nlisten = \"127.0.0.1:9464\"\n";
        let plan = diff(&config(BASE), &config(&new));
        assert_eq!(
            plan.needs_restart,
            vec![
                "http.listen changed from unset to \"127.0.0.1:9464\"",
                "supervisor.lock_dir changed from \"/run/corral/locks\" to \"/tmp/locks\"",
                "supervisor.socket changed from \"/run/corral.sock\" to \"/tmp/c.sock\"",
            ]
        );
        assert!(!plan.budget_changed);
        assert!(!plan.is_empty());

        let with = |t: &str| config(&format!("{BASE}\n[http]\nlisten = \"127.0.0.1:9464\"\ntoken = \"{t}\"\n"));
        let plan = diff(&with("old-secret"), &with("new-secret"));
        assert_eq!(plan.needs_restart, vec!["http.token changed"]);
        assert!(!format!("{plan:?}").contains("secret"), "{plan:?}");
        assert!(diff(&with("same"), &with("same")).is_empty());
    }

    #[test]
    fn serializes_as_json() {
        let plan = ReloadPlan {
            added: vec!["x".into()],
            budget_changed: true,
            ..Default::default()
        };
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"added": ["x"], "removed": [], "restart": [], "update": [],
                               "budget_changed": true, "needs_restart": []})
        );
    }
}
