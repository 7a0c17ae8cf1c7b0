//! `ternd`: the tern edge node. With no arguments it serves on the embedded defaults (data in
//! ./tern-data, native protocol on 127.0.0.1:14000, TLS on 127.0.0.1:14443, HTTP/WebSocket on
//! 127.0.0.1:8080, admin on 127.0.0.1:9100); `ternd token`
//! mints a token with the node's configured or dev secret.

use anyhow::{bail, Context as _};
use clap::Parser;
use tern_engine::auth::mint_hs256_tenant;
use tern_engine::config::{AuthKey, Cli, Command, Settings};
use tern_engine::server;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets the allocator's options before anything allocates (see `tern_engine::alloc`): an ELF
/// constructor with a priority runs before the unprioritised one that initialises mimalloc.
#[allow(unsafe_code)]
#[used]
#[link_section = ".init_array.00200"]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune() {
        tern_engine::alloc::tune_mimalloc();
    }
    tune
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            user,
            device,
            ttl,
            tenant,
        }) => {
            let settings = Settings::resolve(&cli.node, false)?;
            let AuthKey::Secret { secret, .. } = &settings.auth else {
                bail!("this node verifies tokens with a public key; mint them with the private key's owner");
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            if let Some(t) = &tenant {
                if !tern_storage::valid_tenant(t) {
                    bail!("--tenant {t:?}: a tenant id is 1..=32 ASCII letters, digits, '-', '_' or '.'");
                }
            }
            println!(
                "{}",
                mint_hs256_tenant(
                    secret,
                    tenant.as_deref(),
                    &user,
                    device.as_deref(),
                    ttl,
                    now
                )?
            );
            Ok(())
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let settings = Settings::resolve(&cli.node, true)?;
            let node = server::start(&settings)?;
            println!("ternd: native protocol on {}", node.native);
            if let Some(a) = node.http {
                println!("ternd: HTTP (WebSocket at /tern/ws, tunnel at /tern/) on {a}");
            }
            if let (Some(a), Some(fp)) = (node.tls, &node.tls_fingerprint) {
                println!("ternd: TLS on {a}, certificate SHA-256 {fp}");
                if settings.tls_files.is_none() {
                    println!(
                        "ternd: the certificate is self-signed ({}); clients trust that file or pin the fingerprint",
                        tern_engine::transport::tls::dev_cert_files(&settings.data_dir)
                            .cert
                            .display()
                    );
                }
            }
            println!("ternd: admin/metrics on http://{}/metrics", node.admin);
            println!(
                "ternd: data in {} ({} cores)",
                settings.data_dir.display(),
                settings.cores
            );
            if let AuthKey::Secret { dev: true, .. } = settings.auth {
                println!(
                    "ternd: dev mode (secret in {}); mint a token with:\n  ternd token --data-dir {} --user alice --device phone",
                    settings.data_dir.join(tern_engine::config::DEV_SECRET_FILE).display(),
                    settings.data_dir.display()
                );
            }
            node.wait();
            // A cluster member tells the others it leaves (sent on SIGTERM/SIGINT by the
            // gossip thread) before the process is gone; without it they would wait for
            // failure detection.
            tern_engine::cluster::node::wait_for_goodbye(std::time::Duration::from_millis(500));
            println!("ternd: drained and stopped");
            Ok(())
        }
    }
}
