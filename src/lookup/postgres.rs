//! Name resolution for corral's own PostgreSQL connections: tokio-postgres would resolve host
//! names with `getaddrinfo` (NSS, see [`super::hosts`]); instead each TCP host is resolved here
//! and pinned with `hostaddr`, while `host` stays as given, so TLS still verifies the name.
//!
//! A config is turned into the attempts to make, in order: one per resolved address (the n-th
//! attempt takes each host's n-th address), like tokio-postgres trying every address itself.

use std::future::Future;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::hosts;

/// Why no attempt connected.
#[derive(Debug)]
pub enum Failure<E> {
    /// A host name did not resolve: the message names it.
    Resolve(String),
    /// The last attempt's error.
    Connect(E),
}

/// Run `connect` on each attempt until one succeeds.
pub async fn connect_each<T, E, F, Fut>(config: &Config, mut connect: F) -> Result<T, Failure<E>>
where
    F: FnMut(Config) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = None;
    for attempt in attempts(config).await.map_err(Failure::Resolve)? {
        match connect(attempt).await {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| Failure::Resolve("no address to connect to".into()), Failure::Connect))
}

/// The configs to try: `config` itself when there is nothing to resolve (IP literals, Unix
/// sockets, `hostaddr` already given), else one per address with `hostaddr` pinned.
pub async fn attempts(config: &Config) -> Result<Vec<Config>, String> {
    let hosts = config.get_hosts();
    let names: Vec<&str> = hosts
        .iter()
        .filter_map(|h| match h {
            Host::Tcp(name) => Some(name.as_str()),
            Host::Unix(_) => None,
        })
        .collect();
    let needs_lookup = names.iter().any(|n| hosts::ip_literal(n).is_none());
    // A Unix socket cannot take a hostaddr, and given hostaddrs are the user's choice.
    if !needs_lookup || names.len() != hosts.len() || !config.get_hostaddrs().is_empty() {
        return Ok(vec![config.clone()]);
    }
    let ports = config.get_ports();
    let mut per_host = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let addrs = hosts::resolve(name, port).await?;
        per_host.push(addrs.into_iter().map(|a| a.ip()).collect::<Vec<_>>());
    }
    Ok(pin(config, &per_host))
}

/// One config per round: round n pins host i to its n-th address (its last when it has fewer).
pub fn pin(config: &Config, per_host: &[Vec<std::net::IpAddr>]) -> Vec<Config> {
    let rounds = per_host.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .map(|n| {
            let mut c = config.clone();
            for addrs in per_host {
                if let Some(ip) = addrs.get(n).or(addrs.last()) {
                    c.hostaddr(*ip);
                }
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_sockets_are_left_alone() {
        for url in ["postgres://u@10.0.0.1:5432/db", "host=/run/postgresql user=u", "host=db hostaddr=10.0.0.2 user=u", "host=/tmp,localhost user=u"] {
            let c: Config = url.parse().unwrap();
            let a = attempts(&c).await.unwrap();
            assert_eq!(a.len(), 1, "{url}");
            assert_eq!(a[0].get_hostaddrs(), c.get_hostaddrs(), "{url}");
        }
    }

    #[tokio::test]
    async fn localhost_is_pinned_but_keeps_its_name() {
        let c: Config = "postgres://u:secret@localhost:6543/db?sslmode=disable".parse().unwrap();
        let a = attempts(&c).await.unwrap();
        assert!(!a.is_empty());
        for attempt in &a {
            assert_eq!(attempt.get_hosts(), c.get_hosts());
            assert_eq!(attempt.get_hostaddrs().len(), 1);
            assert!(attempt.get_hostaddrs()[0].is_loopback());
            assert_eq!(attempt.get_ports(), [6543]);
        }
    }

    #[test]
    fn rounds_take_each_hosts_next_address() {
        let c: Config = "host=a,b user=u".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let rounds = pin(&c, &[vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")], vec![ip("10.1.0.1")]]);
        let got: Vec<Vec<String>> = rounds.iter().map(|r| r.get_hostaddrs().iter().map(|a| a.to_string()).collect()).collect();
        assert_eq!(got, [["10.0.0.1", "10.1.0.1"], ["10.0.0.2", "10.1.0.1"], ["10.0.0.3", "10.1.0.1"]]);
        assert!(pin(&c, &[]).is_empty());
    }
}
