//! Host names to addresses without NSS: IP literals, `/etc/hosts`, `localhost`, then DNS with
//! the servers, `search` domains and `ndots` of `/etc/resolv.conf` (resolv.conf(5)).
//!
//! Why not `getaddrinfo`: in a static binary it may load NSS modules named by an image's
//! `/etc/nsswitch.conf` (mdns, systemd, ...), which an image without glibc lacks and which, from
//! another glibc version, can crash corral (SPEC §9). The order is glibc's default (`files dns`),
//! with one addition: `localhost` and `*.localhost` are loopback even without `/etc/hosts`
//! (RFC 6761), as in an empty chroot or a `FROM scratch` image run without Docker's files.
//!
//! DNS is a stub: A and AAAA queries over UDP (TCP when the answer is truncated) to each
//! nameserver in turn; IPv4 addresses come first. The parsers and the query encoding are pure;
//! [`resolve`] does the I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HOSTS: &str = "/etc/hosts";
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The addresses of `host`, each with `port`. The error says what was tried.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    resolve_with(host, port, Path::new(HOSTS), Path::new(RESOLV_CONF)).await
}

pub async fn resolve_with(host: &str, port: u16, hosts: &Path, resolv_conf: &Path) -> Result<Vec<SocketAddr>, String> {
    let with_port = |ips: Vec<IpAddr>| ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if let Some(ip) = ip_literal(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let from_file = std::fs::read_to_string(hosts).map(|t| in_hosts(&t, host)).unwrap_or_default();
    if !from_file.is_empty() {
        return Ok(with_port(from_file));
    }
    if is_localhost(host) {
        return Ok(with_port(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]));
    }
    let conf = std::fs::read_to_string(resolv_conf).map(|t| ResolvConf::parse(&t)).unwrap_or_default();
    let mut last_error = None;
    for name in conf.candidates(host) {
        match lookup(&conf, &name).await {
            Ok(ips) if !ips.is_empty() => return Ok(with_port(ips)),
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => format!("cannot resolve host {host:?}: {e}"),
        None => format!("cannot resolve host {host:?}: not in {} and no DNS record ({} nameserver(s) from {})", hosts.display(), conf.nameservers.len(), resolv_conf.display()),
    })
}

/// `10.0.0.1`, `::1` or `[::1]`.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

pub fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The addresses `/etc/hosts` (its text) gives `name`, in file order; names match case-insensitively.
pub fn in_hosts(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok()) else { continue };
        if fields.any(|n| n.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// What corral uses of `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: u32,
}

impl Default for ResolvConf {
    /// resolv.conf(5)'s defaults: the local server, no search list, ndots 1, 5 s, 2 attempts.
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf { nameservers: Vec::new(), ..ResolvConf::default() };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => {
                    if let Some(ip) = f.next().and_then(|a| a.split('%').next()?.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                // The last `search` or `domain` line wins.
                Some("search") => conf.search = f.map(|d| d.trim_end_matches('.').to_string()).filter(|d| !d.is_empty()).collect(),
                Some("domain") => conf.search = f.next().map(|d| vec![d.trim_end_matches('.').to_string()]).unwrap_or_default(),
                Some("options") => {
                    for opt in f {
                        let (key, value) = opt.split_once(':').unwrap_or((opt, ""));
                        match (key, value.parse::<u64>()) {
                            ("ndots", Ok(n)) => conf.ndots = n.min(15) as usize,
                            ("timeout", Ok(n)) => conf.timeout = Duration::from_secs(n.clamp(1, 30)),
                            ("attempts", Ok(n)) => conf.attempts = n.clamp(1, 5) as u32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers = ResolvConf::default().nameservers;
        }
        conf
    }

    /// The names to query, in order: a name with a trailing dot as is; one with at least
    /// `ndots` dots first as is, then with each search domain; a shorter one the other way round.
    pub fn candidates(&self, host: &str) -> Vec<String> {
        if let Some(absolute) = host.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{host}.{d}"));
        if host.matches('.').count() >= self.ndots {
            std::iter::once(host.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(host.to_string())).collect()
        }
    }
}

/// A and AAAA of `name`, from the first nameserver that answers. `Ok(empty)`: the name has no
/// address (NXDOMAIN or no records), so the next search candidate is tried.
async fn lookup(conf: &ResolvConf, name: &str) -> Result<Vec<IpAddr>, String> {
    let mut last = String::from("no nameserver answered");
    for _ in 0..conf.attempts {
        for ns in &conf.nameservers {
            let server = SocketAddr::new(*ns, 53);
            let (a, aaaa) = tokio::join!(query(server, name, TYPE::A, conf.timeout), query(server, name, TYPE::AAAA, conf.timeout));
            match (a, aaaa) {
                (Ok(mut v4), Ok(v6)) => {
                    v4.extend(v6);
                    return Ok(v4);
                }
                // One family answered: good enough (some servers drop AAAA queries).
                (Ok(ips), Err(_)) | (Err(_), Ok(ips)) if !ips.is_empty() => return Ok(ips),
                (Err(e), _) | (_, Err(e)) => last = format!("nameserver {ns}: {e}"),
            }
        }
    }
    Err(last)
}

async fn query(server: SocketAddr, name: &str, qtype: TYPE, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    let id = fastrand::u16(..);
    let request = encode_query(id, name, qtype)?;
    let exchange = async {
        let local: SocketAddr = if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let sock = tokio::net::UdpSocket::bind(local).await?;
        sock.connect(server).await?;
        sock.send(&request).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).await?;
            // Anything not answering our question (a late reply, a spoof) is ignored.
            match decode_answer(id, name, &buf[..n]) {
                Err(Garbled) => continue,
                Ok(Answer::Truncated) => return query_tcp(server, &request, id, name).await,
                Ok(a) => return Ok(a),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Answer::Addresses(ips))) => Ok(ips),
        Ok(Ok(Answer::NoSuchName)) => Ok(Vec::new()),
        Ok(Ok(Answer::Failed(code))) => Err(format!("server answered {code}")),
        Ok(Ok(Answer::Truncated)) => Err("truncated answer over TCP".into()),
    }
}

async fn query_tcp(server: SocketAddr, request: &[u8], id: u16, name: &str) -> std::io::Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(server).await?;
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    s.write_all(&framed).await?;
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    decode_answer(id, name, &buf).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "garbled DNS answer over TCP"))
}

/// The outcome of one query.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Addresses(Vec<IpAddr>),
    NoSuchName,
    Truncated,
    /// SERVFAIL, REFUSED, ...: try the next server.
    Failed(String),
}

/// Not an answer to our question.
#[derive(Debug, PartialEq)]
pub struct Garbled;

pub fn encode_query(id: u16, name: &str, qtype: TYPE) -> Result<Vec<u8>, String> {
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    let qname = Name::new(name).map_err(|e| format!("invalid host name {name:?}: {e}"))?;
    packet.questions.push(Question::new(qname, QTYPE::TYPE(qtype), QCLASS::CLASS(CLASS::IN), false));
    packet.build_bytes_vec().map_err(|e| format!("invalid host name {name:?}: {e}"))
}

/// Parse a reply to query `id` for `name`. Addresses are every A/AAAA record in the answer
/// section (a CNAME chain ends in them).
pub fn decode_answer(id: u16, name: &str, bytes: &[u8]) -> Result<Answer, Garbled> {
    let packet = Packet::parse(bytes).map_err(|_| Garbled)?;
    let ours = packet.id() == id
        && packet.questions.len() == 1
        && packet.questions[0].qname.to_string().trim_end_matches('.').eq_ignore_ascii_case(name.trim_end_matches('.'));
    if !ours {
        return Err(Garbled);
    }
    if packet.has_flags(PacketFlag::TRUNCATION) {
        return Ok(Answer::Truncated);
    }
    match packet.rcode() {
        RCODE::NoError => {}
        RCODE::NameError => return Ok(Answer::NoSuchName),
        other => return Ok(Answer::Failed(format!("{other:?}"))),
    }
    let ips = packet
        .answers
        .iter()
        .filter(|r| r.class == CLASS::IN)
        .filter_map(|r| match &r.rdata {
            RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
            RData::AAAA(a) => Some(IpAddr::V6(Ipv6Addr::from(a.address))),
            _ => None,
        })
        .collect();
    Ok(Answer::Addresses(ips))
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, AAAA, CNAME};
    use simple_dns::ResourceRecord;

    #[test]
    fn ip_literals_and_localhost_need_no_files() {
        assert_eq!(ip_literal("10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("db.example.com"), None);
        for h in ["localhost", "LocalHost.", "db.localhost"] {
            assert!(is_localhost(h), "{h}");
        }
        for h in ["localhost.example.com", "mylocalhost", "local"] {
            assert!(!is_localhost(h), "{h}");
        }
    }

    #[test]
    fn hosts_file_lines_with_aliases_and_comments() {
        let text = "127.0.0.1 localhost\n# 10.9.9.9 db\n10.0.0.5  db.internal db # primary\n::1 localhost ip6-localhost\nfe80::1%eth0 linklocal\n10.0.0.6 DB\nnot-an-ip db\n";
        assert_eq!(in_hosts(text, "db"), vec!["10.0.0.5".parse::<IpAddr>().unwrap(), "10.0.0.6".parse().unwrap()]);
        assert_eq!(in_hosts(text, "db.internal."), vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(in_hosts(text, "localhost"), vec!["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(in_hosts(text, "linklocal"), vec!["fe80::1".parse::<IpAddr>().unwrap()]);
        assert!(in_hosts(text, "primary").is_empty());
    }

    #[test]
    fn resolv_conf_as_docker_and_kubernetes_write_it() {
        let k8s = "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:3\n";
        let c = ResolvConf::parse(k8s);
        assert_eq!(c.nameservers, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.ndots, 5);
        assert_eq!((c.timeout, c.attempts), (Duration::from_secs(2), 3));
        assert_eq!(
            c.candidates("postgres"),
            ["postgres.ns.svc.cluster.local", "postgres.svc.cluster.local", "postgres.cluster.local", "postgres"]
        );
        assert_eq!(c.candidates("db.example.com.")[..], ["db.example.com"]);
        let docker = ResolvConf::parse("# Generated by Docker\nnameserver 127.0.0.11\noptions ndots:0\n");
        assert_eq!(docker.candidates("postgres"), ["postgres"]);
        let plain = ResolvConf::parse("domain corp.example\nnameserver fe80::1%eth0\n");
        assert_eq!(plain.candidates("db"), ["db.corp.example", "db"]);
        assert_eq!(plain.candidates("db.eu"), ["db.eu", "db.eu.corp.example"]);
        assert_eq!(plain.nameservers, vec!["fe80::1".parse::<IpAddr>().unwrap()]);
        // No nameserver line (or no file): the local server, as glibc does.
        assert_eq!(ResolvConf::parse("search x\n").nameservers, ResolvConf::default().nameservers);
    }

    fn reply(id: u16, name: &str, f: impl FnOnce(&mut Packet<'static>)) -> Vec<u8> {
        let mut p = Packet::new_reply(id);
        let qname = Name::new_unchecked(name).into_owned();
        p.questions.push(Question::new(qname, QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        f(&mut p);
        p.build_bytes_vec().unwrap()
    }

    #[test]
    fn answers_follow_cname_chains_and_check_the_question() {
        let bytes = reply(7, "db.example.com", |p| {
            let owner = Name::new_unchecked("db.example.com").into_owned();
            let target = Name::new_unchecked("pool.example.net").into_owned();
            p.answers.push(ResourceRecord::new(owner, CLASS::IN, 60, RData::CNAME(CNAME(target.clone()))));
            p.answers.push(ResourceRecord::new(target.clone(), CLASS::IN, 60, RData::A(A { address: u32::from(Ipv4Addr::new(10, 1, 2, 3)) })));
            p.answers.push(ResourceRecord::new(target, CLASS::IN, 60, RData::AAAA(AAAA { address: u128::from(Ipv6Addr::LOCALHOST) })));
        });
        assert_eq!(
            decode_answer(7, "DB.example.com.", &bytes),
            Ok(Answer::Addresses(vec!["10.1.2.3".parse().unwrap(), "::1".parse().unwrap()]))
        );
        assert_eq!(decode_answer(8, "db.example.com", &bytes), Err(Garbled));
        assert_eq!(decode_answer(7, "other.example.com", &bytes), Err(Garbled));
        assert_eq!(decode_answer(7, "db.example.com", &bytes[..bytes.len() / 2]), Err(Garbled));
        assert_eq!(decode_answer(7, "db.example.com", b""), Err(Garbled));
    }

    #[test]
    fn error_codes_and_truncation() {
        let nx = reply(1, "nope.example", |p| *p.rcode_mut() = RCODE::NameError);
        assert_eq!(decode_answer(1, "nope.example", &nx), Ok(Answer::NoSuchName));
        let servfail = reply(1, "x.example", |p| *p.rcode_mut() = RCODE::ServerFailure);
        assert!(matches!(decode_answer(1, "x.example", &servfail), Ok(Answer::Failed(_))));
        let tc = reply(1, "big.example", |p| p.set_flags(PacketFlag::TRUNCATION));
        assert_eq!(decode_answer(1, "big.example", &tc), Ok(Answer::Truncated));
    }

    #[test]
    fn queries_round_trip_and_bad_names_are_errors() {
        let q = encode_query(42, "db.example.com", TYPE::AAAA).unwrap();
        let p = Packet::parse(&q).unwrap();
        assert_eq!(p.id(), 42);
        assert!(p.has_flags(PacketFlag::RECURSION_DESIRED));
        assert_eq!(p.questions[0].qname.to_string(), "db.example.com");
        assert_eq!(p.questions[0].qtype, QTYPE::TYPE(TYPE::AAAA));
        assert!(encode_query(1, &"a".repeat(70), TYPE::A).is_err());
    }

    #[tokio::test]
    async fn resolve_prefers_literals_then_hosts_then_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.0.0.7 db\n127.0.0.2 localhost\n").unwrap();
        let none = dir.path().join("missing");
        let ips = |v: Vec<SocketAddr>| v.into_iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(ips(resolve_with("10.9.8.7", 5432, &none, &none).await.unwrap()), ["10.9.8.7:5432"]);
        assert_eq!(ips(resolve_with("db", 6543, &hosts, &none).await.unwrap()), ["10.0.0.7:6543"]);
        // The file wins for localhost too; without a file, loopback.
        assert_eq!(ips(resolve_with("localhost", 1, &hosts, &none).await.unwrap()), ["127.0.0.2:1"]);
        assert_eq!(ips(resolve_with("localhost", 1, &none, &none).await.unwrap()), ["127.0.0.1:1", "[::1]:1"]);
    }
}
