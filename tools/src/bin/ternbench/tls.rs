//! TLS client setup for the load clients: the trust and ALPN of the SDK's configurations, and
//! session resumption through a ticket pool shared by every connection of a worker.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use tern_tools::tls::{TlsConfigs, Trust};

/// TLS 1.3 tickets kept per server name.
const TICKETS: usize = 4096;

/// A client configuration trusting the certificates of `ca`, offering ALPN `tern/1` (native)
/// or `http/1.1` (WebSocket, tunnel), resuming sessions unless `resume` is false.
pub fn client_config(ca: &Path, native: bool, resume: bool) -> Result<rustls::ClientConfig> {
    let configs = TlsConfigs::new(&Trust::CaFile(ca.to_owned()))?;
    let mut config = if native {
        (*configs.native).clone()
    } else {
        (*configs.http).clone()
    };
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
