//! TLS for every connection corral opens (SPEC §5.1): the probe, live readings, fleet
//! coordination and the PgBouncer admin console, with libpq's `sslmode` semantics and rustls
//! (no OpenSSL: the static binary depends on it).
//!
//! Owns: turning [`TlsSettings`] into a rustls client config (roots from `sslrootcert` as PEM
//! or DER, or the system's; `sslcert`/`sslkey`; relative paths from the manifest's directory;
//! verify-ca's "chain but not the name"), the [`MakeTlsConnect`] tokio-postgres needs (with
//! SCRAM channel binding), what the handshake found ([`TlsInfo`]), and naming why it failed
//! with the fix ([`Handshake`]).
//!
//! Must not: log or return the password (nothing here sees it), or weaken what the URL asks
//! for: a mode that verifies never falls back to one that does not.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::conninfo::{RootCert, SslMode, TlsSettings};

/// Where Supabase users find the CA that signs their database's certificate.
pub const SUPABASE_CA_HINT: &str =
    "Supabase: Dashboard > Project Settings > Database > SSL Configuration > Download certificate";

/// What the handshake of a connection found, for `check --online`, `health` and `budget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3".
    pub version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The effective sslmode (`require` with sslrootcert is `verify-ca`).
    pub sslmode: SslMode,
    /// What was checked: "certificate and host name", "certificate chain", "nothing".
    pub verified: &'static str,
}

impl TlsInfo {
    /// One line: `TLSv1.3 (TLS13_AES_256_GCM_SHA384), verify-full: certificate and host name`.
    pub fn describe(&self) -> String {
        format!("{} ({}), sslmode {}: verified {}", self.version, self.cipher, self.sslmode.as_str(), self.verified)
    }
}

/// The record of one connection's TLS, filled by the handshake (None: plaintext).
pub type TlsSlot = Arc<Mutex<Option<TlsInfo>>>;

/// Why a TLS setup or handshake failed, with what to do. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; {fix}")]
pub struct Handshake {
    pub problem: String,
    pub fix: String,
}

impl Handshake {
    fn new(problem: impl Into<String>, fix: impl Into<String>) -> Handshake {
        Handshake { problem: problem.into(), fix: fix.into() }
    }
}

/// The connector for one connection attempt: the rustls config the URL asks for, and where
/// the handshake records what it negotiated.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    settings: Arc<TlsSettings>,
    /// How messages name the trust anchors ("ca.pem", "the system's trusted roots").
    roots: Arc<String>,
    slot: TlsSlot,
}

impl Connector {
    /// Reads the files the settings name (relative paths from `base_dir`, the manifest's
    /// directory) and builds the rustls config. Files are read at every connection, so a
    /// certificate fixed or rotated on disk is picked up by the next reconnect.
    pub fn new(settings: &TlsSettings, base_dir: &Path) -> Result<Connector, Handshake> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Handshake::new(format!("TLS setup failed: {e}"), "report this as a bug"))?;
        let (verifier, roots): (Arc<dyn ServerCertVerifier>, String) = match settings.mode {
            // Encrypted, nothing checked (libpq's prefer and require without a root).
            SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => {
                (Arc::new(NoVerification(provider.clone())), "nothing".into())
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let (store, named) = root_store(settings.root_cert.as_ref(), base_dir)?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| Handshake::new(format!("cannot use the root certificates in {named}: {e}"), "pass a CA certificate in sslrootcert"))?;
                let full = settings.mode == SslMode::VerifyFull;
                (Arc::new(Verifier { inner: webpki, check_name: full }), named)
            }
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                if settings.key_password {
                    return Err(Handshake::new(
                        "sslpassword is set: the client key is encrypted, which corral cannot read",
                        format!("decrypt it once (openssl pkey -in {} -out client.key) and drop sslpassword", key.display()),
                    ));
                }
                let chain = read_certs(&resolve(cert, base_dir), "sslcert")?;
                let key = read_key(&resolve(key, base_dir))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Handshake::new(format!("sslcert and sslkey do not go together: {e}"), "pass the key of the client certificate in sslkey"))?
            }
            _ => builder.with_no_client_auth(),
        };
        // PostgreSQL 17 requires ALPN "postgresql" for direct TLS; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Connector { config: Arc::new(config), settings: Arc::new(settings.clone()), roots: Arc::new(roots), slot: TlsSlot::default() })
    }

    /// What the handshake of the connection made with this connector negotiated.
    pub fn slot(&self) -> TlsSlot {
        self.slot.clone()
    }
}

fn resolve(p: &Path, base_dir: &Path) -> PathBuf {
    // `~/` as libpq's defaults are written; everything relative is from the manifest.
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_relative() {
        base_dir.join(p)
    } else {
        p.to_path_buf()
    }
}

/// The system's trusted roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` respected), or Mozilla's built-in
/// ones when the image has no CA bundle; with how messages name them. Also used by the alert
/// webhook client (`alerts::webhook`). Reads files: call it off the actor.
pub fn system_roots() -> (RootCertStore, String) {
    let mut store = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        // A distroless or scratch image has no CA bundle: Mozilla's roots, built in.
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return (store, "the built-in Mozilla roots (no system CA bundle found)".into());
    }
    (store, "the system's trusted roots".into())
}

/// The trust anchors and how messages name them.
fn root_store(root: Option<&RootCert>, base_dir: &Path) -> Result<(RootCertStore, String), Handshake> {
    let mut store = RootCertStore::empty();
    match root {
        Some(RootCert::System) => Ok(system_roots()),
        Some(RootCert::File(path)) => {
            let path = resolve(path, base_dir);
            for cert in read_certs(&path, "sslrootcert")? {
                store.add(cert).map_err(|e| {
                    Handshake::new(format!("sslrootcert {}: not a usable CA certificate: {e}", path.display()), "pass the CA certificate (PEM or DER)")
                })?;
            }
            Ok((store, path.display().to_string()))
        }
        None => {
            // libpq's default: ~/.postgresql/root.crt.
            let default = resolve(Path::new("~/.postgresql/root.crt"), base_dir);
            if !default.exists() {
                return Err(Handshake::new(
                    "sslmode verify-ca and verify-full need the CA that signed the server's certificate, and no sslrootcert is given",
                    format!("add sslrootcert=FILE to the URL ({SUPABASE_CA_HINT}), or sslrootcert=system for a public CA"),
                ));
            }
            for cert in read_certs(&default, "sslrootcert")? {
                let _ = store.add(cert);
            }
            Ok((store, default.display().to_string()))
        }
    }
}

/// Certificates from a PEM file (every CERTIFICATE block) or a DER file (one certificate).
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, Handshake> {
    let bytes = std::fs::read(path).map_err(|e| {
        Handshake::new(format!("cannot read {key} {}: {e}", path.display()), format!("fix the path in {key}= (relative paths start at the manifest's directory)"))
    })?;
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok).collect();
        if certs.is_empty() {
            return Err(Handshake::new(format!("{key} {} holds no CERTIFICATE block", path.display()), "pass a certificate in PEM or DER form"));
        }
        return Ok(certs);
    }
    // DER: an X.509 certificate is one SEQUENCE (0x30).
    if bytes.first() != Some(&0x30) {
        return Err(Handshake::new(format!("{key} {} is neither PEM nor DER", path.display()), "pass a certificate in PEM or DER form"));
    }
    Ok(vec![CertificateDer::from(bytes)])
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Handshake> {
    let bytes = std::fs::read(path).map_err(|e| {
        Handshake::new(format!("cannot read sslkey {}: {e}", path.display()), "fix the path in sslkey= (relative paths start at the manifest's directory)")
    })?;
    if let Ok(key) = PrivateKeyDer::from_pem_slice(&bytes) {
        return Ok(key);
    }
    if bytes.windows(20).any(|w| w == b"ENCRYPTED PRIVATE KE") {
        return Err(Handshake::new(format!("sslkey {} is encrypted, which corral cannot read", path.display()), "decrypt it once (openssl pkey) and drop sslpassword"));
    }
    PrivateKeyDer::try_from(bytes)
        .map_err(|_| Handshake::new(format!("sslkey {} is not a private key in PEM or DER", path.display()), "pass the client certificate's key"))
}

/// verify-ca and verify-full: the chain against the roots; the host name only for verify-full.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // webpki checks the chain before the name: a name error means the chain is good.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }))
                if !self.check_name =>
            {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// prefer and require (without sslrootcert): encrypted, the certificate not checked, as libpq.
/// The handshake signature is still verified, so the session key is bound to the certificate
/// that channel binding then pins.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = Handshake;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Handshake> {
        // A unix socket has no name; PostgreSQL refuses TLS there and the handshake never runs.
        let name = ServerName::try_from(domain.to_string()).ok();
        Ok(Connect { connector: self.clone(), name, domain: domain.to_string() })
    }
}

/// One handshake.
pub struct Connect {
    connector: Connector,
    name: Option<ServerName<'static>>,
    domain: String,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = Handshake;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, Handshake>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Connect { connector, name, domain } = self;
            let name = name.ok_or_else(|| {
                Handshake::new(format!("\"{domain}\" is not a host name TLS can check"), "connect by host name or IP address")
            })?;
            let tls = tokio_rustls::TlsConnector::from(connector.config.clone());
            let stream = tls.connect(name, stream).await.map_err(|e| explain(e, &connector, &domain))?;
            let (_, conn) = stream.get_ref();
            let info = TlsInfo {
                version: conn.protocol_version().map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1.")).unwrap_or_default(),
                cipher: conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default(),
                sslmode: connector.settings.mode,
                verified: match connector.settings.mode {
                    SslMode::VerifyFull => "certificate and host name",
                    SslMode::VerifyCa => "certificate chain",
                    _ => "nothing",
                },
            };
            let binding = conn.peer_certificates().and_then(|c| c.first()).and_then(|c| server_end_point(c.as_ref()));
            if let Ok(mut slot) = connector.slot.lock() {
                *slot = Some(info);
            }
            Ok(Stream { inner: stream, binding })
        })
    }
}

/// The handshake's error, named for what the user must change.
fn explain(e: io::Error, c: &Connector, host: &str) -> Handshake {
    let rustls_err = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned();
    let roots = c.roots.as_str();
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. })) => Handshake::new(
            format!(
                "host name mismatch: the server's certificate is for {} but the URL's host is {host}",
                if presented.is_empty() { "no host name".to_string() } else { presented.iter().map(|n| bare_name(n)).collect::<Vec<_>>().join(", ") }
            ),
            "connect to a name the certificate lists, or use sslmode=verify-ca to check the certificate chain only",
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => Handshake::new(
            format!("host name mismatch: the server's certificate is not for {host}"),
            "connect to a name the certificate lists, or use sslmode=verify-ca to check the certificate chain only",
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => Handshake::new(
            format!("certificate not trusted: the server's certificate is not signed by a CA in {roots}"),
            format!("pass the CA that signed it in sslrootcert=FILE ({SUPABASE_CA_HINT})"),
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            Handshake::new("the server's certificate has expired", "renew the server's certificate")
        }
        Some(rustls::Error::InvalidCertificate(other)) => Handshake::new(
            format!("the server's certificate was refused: {other}"),
            format!("check the certificate against the CA in {roots}"),
        ),
        Some(other) => Handshake::new(format!("TLS handshake failed: {other}"), "check that the server speaks TLS 1.2 or 1.3 on this port"),
        None => Handshake::new(format!("TLS handshake failed: {e}"), "check that the host and port are a PostgreSQL server or pooler"),
    }
}

/// rustls presents names as `DnsName("db.example.com")` or `IpAddress(10.0.0.1)`: the name alone.
fn bare_name(n: &str) -> &str {
    if let (Some(a), Some(z)) = (n.find('"'), n.rfind('"')) {
        if z > a {
            return &n[a + 1..z];
        }
    }
    match (n.find('('), n.rfind(')')) {
        (Some(a), Some(z)) if z > a => &n[a + 1..z],
        _ => n,
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate's hash with its signature's hash function
/// (SHA-256 for MD5 and SHA-1). None when the hash is undefined (e.g. Ed25519): no binding.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    const SHA384: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    ];
    const SHA512: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    ];
    const ED: &[&[u8]] = &[&[0x2b, 0x65, 0x70], &[0x2b, 0x65, 0x71]];
    let oid = signature_oid(cert)?;
    let alg = if SHA384.contains(&oid) {
        &ring::digest::SHA384
    } else if SHA512.contains(&oid) {
        &ring::digest::SHA512
    } else if ED.contains(&oid) {
        return None;
    } else {
        &ring::digest::SHA256
    };
    Some(ring::digest::digest(alg, cert).as_ref().to_vec())
}

/// The OID bytes of `Certificate.signatureAlgorithm` (SEQUENCE { tbs SEQUENCE, alg SEQUENCE
/// { OID, ... }, BIT STRING }).
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b.get(2..2 + n)?.iter().fold(0usize, |a, x| (a << 8) | *x as usize);
        Some((tag, 2 + n, len))
    }
    let (tag, h, _) = header(der)?;
    let body = der.get(h..)?;
    (tag == 0x30).then_some(())?;
    let (_, th, tlen) = header(body)?;
    let alg = body.get(th + tlen..)?;
    let (atag, ah, _) = header(alg)?;
    (atag == 0x30).then_some(())?;
    let oid = alg.get(ah..)?;
    let (otag, oh, olen) = header(oid)?;
    (otag == 0x06).then_some(())?;
    oid.get(oh..oh + olen)
}

/// A TLS connection to the server, as tokio-postgres drives it.
pub struct Stream<S> {
    inner: tokio_rustls::client::TlsStream<S>,
    binding: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.binding {
            Some(b) => ChannelBinding::tls_server_end_point(b.clone()),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> TlsSettings {
        super::super::conninfo::ConnInfo::parse(url).unwrap().tls().unwrap()
    }

    fn ca() -> (rcgen::CertifiedKey, tempfile::TempDir) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("ca.der"), ck.cert.der().as_ref()).unwrap();
        std::fs::write(dir.path().join("junk.txt"), "hello").unwrap();
        (ck, dir)
    }

    #[test]
    fn roots_load_from_pem_and_der_relative_to_the_manifest() {
        let (_, dir) = ca();
        for f in ["ca.pem", "ca.der"] {
            let s = settings(&format!("postgres://h/db?sslmode=verify-full&sslrootcert={f}"));
            let c = Connector::new(&s, dir.path()).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(c.roots.ends_with(f), "{}", c.roots);
        }
        let e = Connector::new(&settings("postgres://h/db?sslmode=verify-ca&sslrootcert=junk.txt"), dir.path()).err().unwrap();
        assert!(e.problem.contains("neither PEM nor DER"), "{e}");
        let e = Connector::new(&settings("postgres://h/db?sslmode=verify-ca&sslrootcert=missing.pem"), dir.path()).err().unwrap();
        assert!(e.problem.contains("cannot read sslrootcert") && e.problem.contains("missing.pem"), "{e}");
        // require needs no file at all.
        Connector::new(&settings("postgres://h/db?sslmode=require"), dir.path()).unwrap();
    }

    #[test]
    fn verify_without_a_root_names_where_to_get_one() {
        let home = tempfile::tempdir().unwrap();
        // Only when ~/.postgresql/root.crt does not exist (libpq's default).
        if Path::new(&format!("{}/.postgresql/root.crt", std::env::var("HOME").unwrap_or_default())).exists() {
            return;
        }
        let e = Connector::new(&settings("postgres://h/db?sslmode=verify-full"), home.path()).err().unwrap();
        assert!(e.fix.contains("sslrootcert=") && e.fix.contains("Supabase"), "{e}");
    }

    #[test]
    fn client_certificates_load_and_encrypted_keys_are_refused() {
        let (ck, dir) = ca();
        std::fs::write(dir.path().join("client.key"), ck.key_pair.serialize_pem()).unwrap();
        let s = settings("host=h sslmode=verify-ca sslrootcert=ca.pem sslcert=ca.pem sslkey=client.key");
        Connector::new(&s, dir.path()).unwrap();
        let s = settings("host=h sslmode=require sslcert=ca.pem sslkey=client.key sslpassword=x");
        assert!(Connector::new(&s, dir.path()).err().unwrap().problem.contains("encrypted"));
    }

    #[test]
    fn presented_names_are_shown_bare() {
        assert_eq!(bare_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("db.example.com"), "db.example.com");
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        let (ck, _) = ca();
        let der = ck.cert.der().as_ref().to_vec();
        // rcgen signs with ECDSA P-256 SHA-256.
        assert_eq!(signature_oid(&der), Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..]));
        assert_eq!(server_end_point(&der).unwrap().len(), 32);
        assert_eq!(signature_oid(&[0x30, 0x03, 0x02, 0x01]), None);
        assert_eq!(signature_oid(&[]), None);
    }
}
