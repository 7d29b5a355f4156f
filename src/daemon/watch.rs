//! Config file watching (SPEC §8). We watch the file's directory, not the
//! file, so editors that save by writing a temp file and renaming it over the
//! original are seen. The actor debounces the burst of events.
//!
//! A config reached through symlinks (dotfiles, Kubernetes ConfigMap volumes:
//! `supervisor.toml -> ..data/supervisor.toml`, `..data -> ..2024_01_01...`,
//! updated by renaming a new `..data` over the old) is watched along the whole
//! chain: each link's directory for the link's name, and the final file's
//! directory for its name. The chain is resolved once, at start; a swap of a
//! link in it is seen because the link's own directory is watched.
//!
//! This module only reports "the file may have changed"; it never reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};

use super::event::{Event, EventTx};

/// More links than this in a chain is a loop (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

pub fn watch(config: &Path, tx: EventTx) -> notify::Result<notify::RecommendedWatcher> {
    let set = watch_set(config);
    let names: BTreeSet<OsString> = set.values().flatten().cloned().collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        if ev.paths.iter().any(|p| p.file_name().is_some_and(|n| names.contains(n))) {
            let _ = tx.send(Event::ConfigFileChanged);
        }
    })?;
    let own_dir = dir_of(config);
    watcher.watch(&own_dir, RecursiveMode::NonRecursive)?;
    for dir in set.keys().filter(|d| **d != own_dir) {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch {} (a directory on the config's symlink chain): {e}", dir.display());
        }
    }
    Ok(watcher)
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Directory → names in it whose change may change the config's content.
fn watch_set(config: &Path) -> BTreeMap<PathBuf, BTreeSet<OsString>> {
    let mut set: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
    let mut add = |p: &Path| {
        if let Some(name) = p.file_name() {
            set.entry(dir_of(p)).or_default().insert(name.to_owned());
        }
    };
    add(config);
    let mut path = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    'resolve: for _ in 0..MAX_LINKS {
        // Find the first symlink among the path's prefixes and replace it by its target.
        let mut prefix = PathBuf::new();
        let comps: Vec<Component> = path.components().collect();
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            if !matches!(c, Component::Normal(_)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&prefix) else { break 'resolve };
            if !meta.file_type().is_symlink() {
                continue;
            }
            let Ok(target) = std::fs::read_link(&prefix) else { break 'resolve };
            add(&prefix);
            let mut next = dir_of(&prefix).join(target);
            for rest in &comps[i + 1..] {
                next.push(rest);
            }
            path = next;
            continue 'resolve;
        }
        add(&path);
        break;
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_watched_in_its_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("supervisor.toml");
        std::fs::write(&cfg, "").unwrap();
        let set = watch_set(&cfg);
        assert_eq!(set.len(), 1, "{set:?}");
        assert!(set[dir.path()].contains(std::ffi::OsStr::new("supervisor.toml")));
    }

    #[test]
    fn a_configmap_chain_watches_every_link_and_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(d.join("..2024_01")).unwrap();
        std::fs::write(d.join("..2024_01/supervisor.toml"), "").unwrap();
        std::os::unix::fs::symlink("..2024_01", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/supervisor.toml", d.join("supervisor.toml")).unwrap();
        let set = watch_set(&d.join("supervisor.toml"));
        let names = |p: &Path| set.get(p).map(|s| s.iter().map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>());
        assert_eq!(names(&d), Some(vec!["..data".to_string(), "supervisor.toml".to_string()]), "{set:?}");
        assert_eq!(names(&d.join("..2024_01")), Some(vec!["supervisor.toml".to_string()]), "{set:?}");
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink("b", d.join("a")).unwrap();
        std::os::unix::fs::symlink("a", d.join("b")).unwrap();
        let set = watch_set(&d.join("a"));
        assert_eq!(set.len(), 1);
    }
}
