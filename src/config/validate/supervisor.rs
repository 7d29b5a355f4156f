//! `[supervisor]`: the daemon's own settings.

use std::time::Duration;

use super::durations::{DAY, HOUR, SEC};
use super::Cx;
use crate::config::raw::RawSupervisor;
use crate::config::{LogFormat, OrphanPolicy, SupervisorConfig};

// Defaults. The README documents these; keep the two in step.
const DEFAULT_LOCK_DIR: &str = "/run/corral/locks";
const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(120);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
const DEFAULT_ORPHANS: OrphanPolicy = OrphanPolicy::Kill;

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const ORPHAN_POLICIES: &[(&str, OrphanPolicy)] = &[("kill", OrphanPolicy::Kill), ("keep", OrphanPolicy::Keep)];

const REAP_INTERVAL_RANGE: (Duration, Duration) = (SEC, DAY);
pub(super) const STOP_TIMEOUT_RANGE: (Duration, Duration) = (Duration::ZERO, HOUR);

impl Cx<'_> {
    pub(super) fn supervisor(&mut self, raw: &RawSupervisor) -> SupervisorConfig {
        SupervisorConfig {
            socket: raw.socket.as_ref().and_then(|v| self.path("socket", v)),
            socket_group: raw.socket_group.as_ref().and_then(|v| self.nonempty("socket_group", v)),
            lock_dir: raw
                .lock_dir
                .as_ref()
                .and_then(|v| self.path("lock_dir", v))
                .unwrap_or_else(|| DEFAULT_LOCK_DIR.into()),
            reap_interval: self.duration("reap_interval", raw.reap_interval.as_ref(), DEFAULT_REAP_INTERVAL, REAP_INTERVAL_RANGE),
            stop_timeout: self.duration("stop_timeout", raw.stop_timeout.as_ref(), DEFAULT_STOP_TIMEOUT, STOP_TIMEOUT_RANGE),
            log_format: self.choice("log_format", raw.log_format.as_ref(), LOG_FORMATS, DEFAULT_LOG_FORMAT),
            orphans: self.choice("orphans", raw.orphans.as_ref(), ORPHAN_POLICIES, DEFAULT_ORPHANS),
        }
    }
}
