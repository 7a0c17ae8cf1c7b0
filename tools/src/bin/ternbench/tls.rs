//! TLS client setup for the load clients: trust from a PEM file, ALPN per transport, an
//! optional preferred cipher suite, and session resumption through a ticket pool shared by
//! every connection of a worker.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{NamedGroup, RootCertStore, SupportedCipherSuite};
use serde::{Deserialize, Serialize};
use tern_tools::tls::{ALPN_HTTP, ALPN_TERN};

/// TLS 1.3 tickets kept per server name.
const TICKETS: usize = 4096;

/// A TLS 1.3 cipher suite to offer first. The suite decides the handshake's hash: SHA-256
/// (AES-128, ChaCha20) has CPU instructions of its own on many CPUs, SHA-384 (AES-256) not. A
/// node that prefers its own order (tern does, AES-128 first) may choose another suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Suite {
    /// TLS13_AES_128_GCM_SHA256, first in browsers' lists.
    Aes128,
    /// TLS13_AES_256_GCM_SHA384, first in rustls' list (and so the SDK's).
    Aes256,
    /// TLS13_CHACHA20_POLY1305_SHA256.
    Chacha20,
}

impl Suite {
    fn get(self) -> SupportedCipherSuite {
        match self {
            Suite::Aes128 => cipher_suite::TLS13_AES_128_GCM_SHA256,
            Suite::Aes256 => cipher_suite::TLS13_AES_256_GCM_SHA384,
            Suite::Chacha20 => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }
}

/// A client configuration trusting the certificates of the PEM file `ca`, offering ALPN
/// `tern/1` (native) or `http/1.1` (WebSocket, tunnel), with `first` moved to the front of
/// rustls' default suites, resuming sessions unless `resume` is false.
pub fn client_config(
    ca: &Path,
    native: bool,
    first: Option<Suite>,
    resume: bool,
) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        let cert = cert.with_context(|| format!("{}: bad PEM", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: bad certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate", ca.display());
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(first) = first.map(Suite::get) {
        provider
            .cipher_suites
            .retain(|s| s.suite() != first.suite());
        provider.cipher_suites.insert(0, first);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if native { ALPN_TERN } else { ALPN_HTTP }.to_vec()];
    config.resumption = if resume {
        Resumption::store(Arc::new(TicketPool::default()))
    } else {
        Resumption::disabled()
    };
    Ok(config)
}

#[derive(Debug, Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// rustls' in-memory store keeps 8 TLS 1.3 tickets per server: enough for one client, but a
/// worker opening hundreds of connections at once to the same name would find it empty after
/// the first 8 and fall back to full handshakes. A worker stands for many clients that each
/// hold the ticket of their last connection, so its pool holds thousands. Each ticket is
/// still used once (TLS 1.3 tickets are single-use on the client side).
#[derive(Debug, Default)]
struct TicketPool {
    servers: Mutex<HashMap<ServerName<'static>, Entry>>,
}

impl TicketPool {
    fn with<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.get_mut(&name.to_owned()).map(f)
    }

    fn edit(&self, name: ServerName<'static>, f: impl FnOnce(&mut Entry)) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        f(servers.entry(name).or_default());
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.edit(name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(name, |e| e.kx_hint).flatten()
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.edit(name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(name, |e| e.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(name, |e| e.tls12 = None);
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.edit(name, |e| {
            if e.tls13.len() >= TICKETS {
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(name, |e| e.tls13.pop_back()).flatten()
    }
}
