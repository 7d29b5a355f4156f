//! Config file watching (SPEC §8). We watch the file's directory, not the
//! file, so editors that save by writing a temp file and renaming it over the
//! original are seen. The actor debounces the burst of events.

use std::path::Path;

use notify::{EventKind, RecursiveMode, Watcher};

use super::supervisor::{Event, EventTx};

pub fn watch(config: &Path, tx: EventTx) -> notify::Result<notify::RecommendedWatcher> {
    let file_name = config.file_name().map(|f| f.to_owned());
    let dir = match config.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        if ev.paths.iter().any(|p| p.file_name() == file_name.as_deref()) {
            let _ = tx.send(Event::ConfigFileChanged);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
