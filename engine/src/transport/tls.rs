//! TLS for the `--tls` listener (SPEC §12, "TLS"): the certificate from PEM files or, in dev
//! mode, a self-signed one made on first start; reloaded on SIGHUP; and a sans-io session
//! (rustls' `ServerConnection`) that turns wire bytes into plaintext and back.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// ALPN names: native frames, and HTTP/1.1 for WebSocket and the tunnel.
pub const ALPN_NATIVE: &[u8] = b"tern/1";
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// Sessions remembered for resumption: reconnecting clients skip the signature.
const SESSION_CACHE: usize = 32 * 1024;

/// TLS setup and session errors.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("generating the dev certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Io(#[from] io::Error),
}

/// Where the certificate chain and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of the dev certificate in a data dir.
pub fn dev_cert_files(data_dir: &Path) -> CertFiles {
    let dir = data_dir.join("tls");
    CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// Makes a self-signed certificate for `localhost`, 127.0.0.1 and ::1 unless the files exist.
/// Returns whether it made one.
pub fn ensure_dev_cert(files: &CertFiles) -> Result<bool, TlsError> {
    if files.cert.exists() && files.key.exists() {
        return Ok(false);
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)?;
    if let Some(dir) = files.cert.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_private(&files.key, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, ck.cert.pem()).map_err(|source| TlsError::Write {
        path: files.cert.clone(),
        source,
    })?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// A loaded certificate: the server config and the SHA-256 fingerprint of the leaf.
#[derive(Debug)]
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    pub fingerprint: String,
}

/// Reads the chain and key and builds the server config (TLS 1.3 and 1.2, ALPN).
pub fn load(files: &CertFiles) -> Result<Loaded, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let pem_err = |p: &Path, what: String| TlsError::Pem {
        path: p.to_owned(),
        what,
    };
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&files.cert, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(pem_err(&files.cert, "no certificate".into()));
    };
    let fingerprint = fingerprint(leaf);
    let key_pem = read(&files.key)?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_err(&files.key, e.to_string()))?;
    // AES-128-GCM/SHA-256 first, and the server's order wins: the SHA-256 key schedule is the
    // cheaper one on CPUs with SHA extensions and no fast SHA-512 (measured with ternbench on
    // ring: ~20% less handshake CPU on both sides than AES-256).
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_NATIVE.to_vec(), ALPN_HTTP.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.ignore_client_order = true;
    // One ticket is what a reconnecting client uses; each costs a key derivation.
    config.send_tls13_tickets = 1;
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint,
    })
}

/// SHA-256 of a certificate, as colon-separated uppercase hex (the form browsers show).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The current server config, swapped on reload; connections keep the config they began with.
#[derive(Debug)]
pub struct Reloadable {
    files: CertFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    pub fn new(files: CertFiles) -> Result<(Reloadable, String), TlsError> {
        let loaded = load(&files)?;
        Ok((
            Reloadable {
                files,
                current: RwLock::new(loaded.config),
            },
            loaded.fingerprint,
        ))
    }

    /// The config new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the files again; on error the old certificate stays. Returns the new fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let loaded = load(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = loaded.config,
            Err(poisoned) => *poisoned.into_inner() = loaded.config,
        }
        Ok(loaded.fingerprint)
    }
}

/// One server-side TLS session driven by bytes.
pub struct TlsLayer {
    conn: rustls::ServerConnection,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

/// What one input step found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsInput {
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

impl TlsLayer {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsLayer, TlsError> {
        Ok(TlsLayer {
            conn: rustls::ServerConnection::new(config)?,
        })
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Feeds wire bytes; appends plaintext to `app` and records bytes for the wire (handshake
    /// messages, alerts) in `out`. On error the alert for the peer is in `out`.
    pub fn input(
        &mut self,
        mut wire: &[u8],
        app: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<TlsInput, TlsError> {
        let mut status = TlsInput::default();
        while !wire.is_empty() {
            let n = self.conn.read_tls(&mut wire)?;
            let processed = self.conn.process_new_packets();
            self.pending(out)?;
            let state = processed?;
            status.peer_closed |= state.peer_has_closed();
            self.drain_plaintext(app, &mut status)?;
            if n == 0 {
                break;
            }
        }
        Ok(status)
    }

    fn drain_plaintext(&mut self, app: &mut Vec<u8>, status: &mut TlsInput) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => {
                    status.peer_closed = true;
                    return Ok(());
                }
                Ok(n) => app.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    status.peer_closed = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypts `app` into records appended to `out`.
    pub fn output(&mut self, app: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        use std::io::Write as _;
        self.conn.writer().write_all(app)?;
        self.pending(out)
    }

    /// Queues close_notify into `out`.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        let _ = self.pending(out);
    }

    fn pending(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        while self.conn.wants_write() {
            self.conn.write_tls(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn client_config(cert: &Path) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![ALPN_NATIVE.to_vec()];
        Arc::new(cfg)
    }

    /// Runs client and server against each other in memory until neither has bytes to send.
    fn pump(client: &mut rustls::ClientConnection, server: &mut TlsLayer, app: &mut Vec<u8>) {
        for _ in 0..10 {
            let mut c2s = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut c2s).unwrap();
            }
            let mut s2c = Vec::new();
            server.input(&c2s, app, &mut s2c).unwrap();
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
            let mut rd = &s2c[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
        }
    }

    #[test]
    fn dev_certificate_serves_a_handshake_and_data_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let files = dev_cert_files(dir.path());
        assert!(ensure_dev_cert(&files).unwrap());
        assert!(!ensure_dev_cert(&files).unwrap(), "kept on the next start");
        let (reloadable, fp) = Reloadable::new(files.clone()).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        let mut server = TlsLayer::new(reloadable.current()).unwrap();
        let mut client = rustls::ClientConnection::new(
            client_config(&files.cert),
            "127.0.0.1".try_into().unwrap(),
        )
        .unwrap();
        use std::io::Write as _;
        client.writer().write_all(b"\xe7\x4e hello").unwrap();
        let mut app = Vec::new();
        pump(&mut client, &mut server, &mut app);
        assert!(!server.is_handshaking());
        assert_eq!(server.alpn(), Some(ALPN_NATIVE));
        assert_eq!(app, b"\xe7\x4e hello");

        let mut out = Vec::new();
        server.output(b"welcome", &mut out).unwrap();
        let mut rd = &out[..];
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets().unwrap();
        let mut got = [0u8; 7];
        client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"welcome");

        // A reload with a new certificate changes what new sessions get.
        std::fs::remove_file(&files.cert).unwrap();
        ensure_dev_cert(&files).unwrap();
        let fp2 = reloadable.reload().unwrap();
        assert_ne!(fp, fp2);
        std::fs::write(&files.cert, b"not pem").unwrap();
        assert!(
            reloadable.reload().is_err(),
            "a broken file keeps the old one"
        );
    }

    #[test]
    fn garbage_gets_an_alert() {
        let dir = tempfile::tempdir().unwrap();
        let files = dev_cert_files(dir.path());
        ensure_dev_cert(&files).unwrap();
        let (r, _) = Reloadable::new(files).unwrap();
        let mut server = TlsLayer::new(r.current()).unwrap();
        let mut out = Vec::new();
        let mut app = Vec::new();
        let res = server.input(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", &mut app, &mut out);
        assert!(res.is_err());
        assert_eq!(out.first(), Some(&0x15), "an alert record goes back");
    }
}
