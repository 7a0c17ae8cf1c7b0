//! Node settings: embedded defaults, overridden by a TOML file (`--config`), overridden by
//! environment variables (`TERN_*`) and command-line flags (clap reads both, flags first).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::conn::Timers;
use crate::rooms::RoomConfig;
use crate::transport::proxy::{parse_trusted, Cidr};
use crate::transport::tls::CertFiles;

/// `ternd`: the tern edge node.
#[derive(Debug, Parser)]
#[command(name = "ternd", version, about = "tern instant-messaging edge node")]
pub struct Cli {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags shared by the node and its subcommands.
#[derive(Debug, Args, Default, Clone)]
pub struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, env = "TERN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (database, dev secret, ports.json). Default ./tern-data.
    #[arg(long, env = "TERN_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Native protocol listen address (port 0 picks a free port). Default 127.0.0.1:14000.
    #[arg(long, env = "TERN_NATIVE", global = true)]
    pub native: Option<SocketAddr>,
    /// Admin/metrics HTTP listen address. Default 127.0.0.1:9100.
    #[arg(long, env = "TERN_ADMIN", global = true)]
    pub admin: Option<SocketAddr>,
    /// TLS listen address (native, WebSocket and tunnel inside TLS), or `off`.
    /// Default 127.0.0.1:14443.
    #[arg(long, env = "TERN_TLS", global = true)]
    pub tls: Option<Listen>,
    /// Plain HTTP listen address (WebSocket and tunnel; native frames too), or `off`.
    /// Default 127.0.0.1:8080.
    #[arg(long, env = "TERN_HTTP", global = true)]
    pub http: Option<Listen>,
    /// PEM certificate chain for TLS (with --tls-key). Without it the node makes a self-signed
    /// certificate in DATA_DIR/tls on first start.
    #[arg(long, env = "TERN_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TERN_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Sources allowed to put a PROXY protocol header in front of a connection:
    /// comma-separated ADDR or ADDR/PREFIX. Default: none.
    #[arg(long, env = "TERN_PROXY_TRUSTED", global = true)]
    pub proxy_trusted: Option<String>,
    /// io cores (one monoio runtime each). Default: all CPUs.
    #[arg(long, env = "TERN_CORES", global = true)]
    pub cores: Option<usize>,
    /// Development mode: a random HS256 secret is created in the data dir and tokens can be
    /// minted with `ternd token`.
    #[arg(long, env = "TERN_DEV", global = true)]
    pub dev: bool,
    /// HS256 secret for tokens.
    #[arg(long, env = "TERN_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with the public key verifying tokens (with --jwt-algorithm EdDSA or RS256).
    #[arg(long, env = "TERN_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<PathBuf>,
    /// Token algorithm: HS256 (default), EdDSA or RS256.
    #[arg(long, env = "TERN_JWT_ALGORITHM", global = true)]
    pub jwt_algorithm: Option<String>,
    /// Node identity, recorded in the database on first start.
    #[arg(long, env = "TERN_NODE_ID", global = true)]
    pub node_id: Option<String>,
    /// io driver: auto (io_uring, falling back to epoll), io_uring, or legacy (epoll).
    #[arg(long, env = "TERN_IO_DRIVER", global = true)]
    pub io_driver: Option<IoDriver>,
    /// Join a cluster: UDP address for gossip (port 0 picks a free port; the bound address is
    /// in ports.json as "cluster"). Without it the node serves every user itself.
    #[arg(long, env = "TERN_CLUSTER", global = true)]
    pub cluster: Option<SocketAddr>,
    /// Cluster addresses of other nodes to join through, comma-separated (HOST:PORT).
    #[arg(long, env = "TERN_JOIN", global = true)]
    pub join: Option<String>,
    /// File holding the cluster's shared secret (at least 16 bytes, e.g. `openssl rand -hex
    /// 32`). Required with --cluster unless --dev (which uses a public, insecure dev secret).
    #[arg(long, env = "TERN_CLUSTER_SECRET_FILE", global = true)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Configured number of nodes in the cluster (its majority is the quorum). Default: the
    /// --join list plus this node.
    #[arg(long, env = "TERN_CLUSTER_SIZE", global = true)]
    pub cluster_size: Option<usize>,
    /// Offline push: http:// URL the node POSTs notifications to (JSON, signed with
    /// --push-secret) for messages that reach a user with no device online.
    #[arg(long, env = "TERN_PUSH_WEBHOOK", global = true)]
    pub push_webhook: Option<String>,
    /// HMAC-SHA256 key of the webhook's X-Tern-Signature header (at least 16 bytes).
    #[arg(long, env = "TERN_PUSH_SECRET", global = true, hide_env_values = true)]
    pub push_secret: Option<String>,
    /// Content filter: file of words, one per line, reloaded on SIGHUP.
    #[arg(long, env = "TERN_FILTER_WORDS", global = true)]
    pub filter_words: Option<PathBuf>,
    /// What a filtered word does to a message: reject (CONTENT_REJECTED, the default) or mask.
    #[arg(long, env = "TERN_FILTER_MODE", global = true)]
    pub filter_mode: Option<crate::filter::FilterMode>,
}

/// A listen address, or `off` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        s.parse()
            .map(|a| Listen(Some(a)))
            .map_err(|e| format!("{s:?}: {e} (expected ADDR:PORT or off)"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;
    fn try_from(s: String) -> Result<Listen, String> {
        s.parse()
    }
}

/// Which monoio driver the cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or fail.
    #[value(name = "io_uring", alias = "iouring")]
    #[serde(rename = "io_uring")]
    IoUring,
    /// epoll.
    Legacy,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint an HS256 token with the node's configured (or dev) secret.
    Token {
        /// User id (`sub`).
        #[arg(long)]
        user: String,
        /// Device id the token is bound to (`dev` claim); omitted: any device.
        #[arg(long)]
        device: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Tenant the user belongs to (`tenant` claim); omitted: the default tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// The TOML file. Every field optional; unknown fields are an error so typos do not pass.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub native: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub tls: Option<Listen>,
    pub http: Option<Listen>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub proxy_trusted: Option<Vec<String>>,
    pub cores: Option<usize>,
    pub dev: Option<bool>,
    pub node_id: Option<String>,
    pub io_driver: Option<IoDriver>,
    /// Offline push webhook (`--push-webhook`) and its signing secret (`--push-secret`).
    pub push_webhook: Option<String>,
    pub push_secret: Option<String>,
    /// Content filter word list (`--filter-words`) and mode (`--filter-mode`).
    pub filter_words: Option<PathBuf>,
    pub filter_mode: Option<crate::filter::FilterMode>,
    #[serde(default)]
    pub cluster: ClusterFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub timers: TimersFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub rooms: RoomsFile,
    #[serde(default)]
    pub topics: TopicsFile,
    #[serde(default)]
    pub storage: StorageFile,
    /// `[tenants.<id>]`: limits of one tenant.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, TenantFile>,
}

/// `[tenants.<id>]`: one tenant's limits on this node (see `crate::tenant`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// Authenticated connections of the tenant's users.
    pub max_connections: Option<u32>,
    /// SENDs per second from the tenant's users, and the burst on top (default: the rate).
    pub max_send_rate: Option<u32>,
    pub send_burst: Option<u32>,
    /// Most members a group of the tenant may have (capped by `[limits] group_max_members`).
    pub group_max_members: Option<u32>,
}

/// `[topics]`: publish/subscribe topics (SPEC.md, Topics).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Most subscribers a topic may have; default 100,000.
    pub max_subscribers: Option<u32>,
    /// Most topics one user may subscribe to; default 1,000.
    pub max_per_user: Option<u32>,
    /// Messages one user may publish per second (default 10), and the burst on top
    /// (default 20).
    pub posts_per_sec: Option<u32>,
    pub post_burst: Option<u32>,
    /// Reserved topic id prefixes and the only users who may publish under each, e.g.
    /// `"news/" = ["newsroom"]`; topics under no reserved prefix accept anyone.
    #[serde(default)]
    pub publishers: std::collections::BTreeMap<String, Vec<String>>,
}

/// `[storage]`: RocksDB tuning (README, "Tuning storage").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// Memtable size per column family, MiB (default 32).
    pub memtable_mb: Option<usize>,
    /// Shared block cache, MiB (default 256).
    pub block_cache_mb: Option<usize>,
    /// Background flush and compaction threads (default 2).
    pub background_jobs: Option<i32>,
    /// Compactions run at the lowest CPU priority, so that the cores and the commit thread are
    /// not kept waiting behind them (default false; flushes keep normal priority).
    pub low_priority_compaction: Option<bool>,
}

/// `[rooms]`: chat rooms.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsFile {
    /// Messages a room keeps for joiners.
    pub window: Option<usize>,
    /// Recent messages a join gets when it asks for 0.
    pub recent: Option<u16>,
    /// Connections one room holds.
    pub member_cap: Option<u32>,
    /// Messages per second a member may send, and the burst on top.
    pub rate_per_sec: Option<u32>,
    pub burst: Option<u32>,
}

/// `[cluster]`: the same settings as the `--cluster*` and `--join` flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub bind: Option<SocketAddr>,
    pub join: Option<Vec<String>>,
    pub secret_file: Option<PathBuf>,
    pub size: Option<usize>,
}

/// A node's cluster settings (present when it runs in a cluster).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// UDP gossip address.
    pub bind: SocketAddr,
    /// Cluster addresses of other nodes.
    pub join: Vec<SocketAddr>,
    pub secret: crate::cluster::ClusterSecret,
    /// Configured cluster size (quorum = its majority).
    pub size: usize,
    /// The node id asked for with --node-id or `node_id` (none: the persisted or a random one).
    pub node_id: Option<String>,
}

/// Resolves `HOST:PORT` items (comma- or whitespace-separated) to socket addresses.
fn parse_join<'a>(items: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    let mut out = Vec::new();
    for item in items
        .into_iter()
        .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
    {
        let addr = item
            .to_socket_addrs()
            .with_context(|| format!("--join {item:?}: expected HOST:PORT"))?
            .next()
            .with_context(|| format!("--join {item:?}: no address"))?;
        out.push(addr);
    }
    Ok(out)
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub algorithm: Option<String>,
}

/// `[timers]`, in seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersFile {
    pub handshake_secs: Option<u64>,
    pub heartbeat_secs: Option<u64>,
    pub idle_secs: Option<u64>,
    /// Milliseconds without traffic after which an idle native connection parks (gives up
    /// its task until its socket or a delivery wakes it); 0 never parks. Default 100.
    pub park_ms: Option<u64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Frames queued to one connection before it is closed as a slow consumer.
    pub outbound_queue: Option<usize>,
    /// Largest frame body the node accepts (advertised in WELCOME).
    pub max_frame: Option<u32>,
    /// Storage write requests waiting before SENDs get OVERLOADED.
    pub storage_write_queue: Option<usize>,
    /// Storage read requests waiting before reads get OVERLOADED.
    pub storage_read_queue: Option<usize>,
    /// How old (seconds) a message may be and still be recalled; default 120.
    pub recall_window_secs: Option<u64>,
    /// Groups with at most this many members get an inbox entry per member for each message
    /// (write diffusion); larger groups store a message once (read diffusion). Default 200.
    pub group_write_diffusion_max: Option<u32>,
    /// Most members a group may have; default 10,000.
    pub group_max_members: Option<u32>,
    /// TYPING frames one connection may send per second (default 5), and the burst on top
    /// (default 10); more are dropped.
    pub typing_per_sec: Option<u32>,
    pub typing_burst: Option<u32>,
}

/// How tokens are verified.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthKey {
    /// HS256 secret; `dev` when it is the generated dev secret.
    Secret { secret: Vec<u8>, dev: bool },
    /// Public key file for EdDSA or RS256.
    PublicKey { algorithm: String, pem: Vec<u8> },
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthKey::Secret { dev, .. } => write!(f, "Secret {{ dev: {dev}, .. }}"),
            AuthKey::PublicKey { algorithm, .. } => write!(f, "PublicKey {{ {algorithm} }}"),
        }
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub native: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The TLS certificate; `None`: the dev certificate in the data dir.
    pub tls_files: Option<CertFiles>,
    pub proxy_trusted: Vec<Cidr>,
    pub cores: usize,
    pub dev: bool,
    pub node_id: String,
    pub auth: AuthKey,
    pub timers: Timers,
    pub outbound_queue: usize,
    /// Recall window, ms.
    pub recall_window_ms: u64,
    /// Group sizes: where write diffusion ends and the member limit.
    pub groups: tern_storage::GroupLimits,
    /// TYPING frames per second and burst, per connection.
    pub typing_per_sec: u32,
    pub typing_burst: u32,
    pub max_frame: u32,
    pub io_driver: IoDriver,
    pub storage_write_queue: usize,
    pub storage_read_queue: usize,
    /// RocksDB tuning (`[storage]`).
    pub rocks: tern_storage::RocksConfig,
    pub rooms: RoomConfig,
    /// Topic caps, publish rate and reserved publishers.
    pub topics: crate::topics::TopicConfig,
    /// Cluster membership; `None`: a single node serving every user.
    pub cluster: Option<ClusterSettings>,
    /// The offline push webhook, when configured.
    pub push: Option<PushSettings>,
    /// The content filter, when configured.
    pub filter: Option<FilterSettings>,
    /// Tenants with limits of their own (`[tenants.<id>]`).
    pub tenants: crate::tenant::TenantConfig,
}

/// Where offline notifications go.
#[derive(Clone)]
pub struct PushSettings {
    pub webhook: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for PushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PushSettings {{ webhook: {:?}, .. }}", self.webhook)
    }
}

/// The content filter's word list and mode.
#[derive(Debug, Clone)]
pub struct FilterSettings {
    pub words: PathBuf,
    pub mode: crate::filter::FilterMode,
}

/// The RocksDB tuning of `[storage]`, defaults from [`tern_storage::RocksConfig`].
fn rocks_config(file: &StorageFile) -> anyhow::Result<tern_storage::RocksConfig> {
    let mut c = tern_storage::RocksConfig::default();
    if let Some(mb) = file.memtable_mb {
        if !(1..=1024).contains(&mb) {
            bail!("[storage] memtable_mb = {mb}: use 1 to 1024");
        }
        c.write_buffer_size = mb << 20;
    }
    if let Some(mb) = file.block_cache_mb {
        if !(1..=1 << 20).contains(&mb) {
            bail!("[storage] block_cache_mb = {mb}: use 1 to 1048576");
        }
        c.block_cache_bytes = mb << 20;
    }
    if let Some(jobs) = file.background_jobs {
        if !(1..=64).contains(&jobs) {
            bail!("[storage] background_jobs = {jobs}: use 1 to 64");
        }
        c.background_jobs = jobs;
    }
    if let Some(low) = file.low_priority_compaction {
        c.low_priority_compaction = low;
    }
    Ok(c)
}

/// Name of the generated dev secret in the data dir.
pub const DEV_SECRET_FILE: &str = "dev-secret";

/// Reads (or creates, when `create`) the dev secret of a data dir: 32 random bytes, hex.
pub fn dev_secret(data_dir: &Path, create: bool) -> anyhow::Result<Option<Vec<u8>>> {
    let path = data_dir.join(DEV_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().as_bytes().to_vec())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating data dir {}", data_dir.display()))?;
            let bytes: [u8; 32] = rand::random();
            let secret = hex::encode(bytes);
            std::fs::write(&path, &secret)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(Some(secret.into_bytes()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl Settings {
    /// Resolves settings: flags/env over the TOML file over defaults. `create_dev_secret`
    /// allows generating the dev secret (the node does; `ternd token` only reads it).
    pub fn resolve(args: &NodeArgs, create_dev_secret: bool) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./tern-data"));
        let native = args
            .native
            .or(file.native)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 14000)));
        let admin = args
            .admin
            .or(file.admin)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9100)));
        let tls = args
            .tls
            .or(file.tls)
            .unwrap_or(Listen(Some(SocketAddr::from(([127, 0, 0, 1], 14443)))))
            .0;
        let http = args
            .http
            .or(file.http)
            .unwrap_or(Listen(Some(SocketAddr::from(([127, 0, 0, 1], 8080)))))
            .0;
        let tls_files = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(CertFiles { cert, key }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let mut proxy_trusted = Vec::new();
        if let Some(list) = &args.proxy_trusted {
            proxy_trusted = parse_trusted(list).context("--proxy-trusted")?;
        } else if let Some(list) = &file.proxy_trusted {
            for item in list {
                proxy_trusted.extend(parse_trusted(item).context("proxy_trusted")?);
            }
        }
        let cores = args
            .cores
            .or(file.cores)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if cores == 0 || cores > 1024 {
            bail!("cores must be between 1 and 1024, got {cores}");
        }
        let dev = args.dev || file.dev.unwrap_or(false);
        let asked_node_id = args.node_id.clone().or(file.node_id);
        let node_id = asked_node_id.clone().unwrap_or_else(|| "tern-1".to_owned());
        let cluster = match args.cluster.or(file.cluster.bind) {
            None => None,
            Some(bind) => {
                let join = match &args.join {
                    Some(list) => parse_join([list.as_str()])?,
                    None => parse_join(file.cluster.join.iter().flatten().map(String::as_str))?,
                };
                let secret = match args
                    .cluster_secret_file
                    .clone()
                    .or(file.cluster.secret_file)
                {
                    Some(path) => {
                        let bytes = std::fs::read(&path).with_context(|| {
                            format!("reading cluster secret {}", path.display())
                        })?;
                        crate::cluster::ClusterSecret::from_file_contents(&bytes)
                            .with_context(|| format!("cluster secret {}", path.display()))?
                    }
                    None if dev => crate::cluster::ClusterSecret::dev(),
                    None => bail!("--cluster needs --cluster-secret-file (or --dev for the insecure dev secret)"),
                };
                let mut others: Vec<SocketAddr> =
                    join.iter().copied().filter(|a| *a != bind).collect();
                others.sort_unstable();
                others.dedup();
                let size = args
                    .cluster_size
                    .or(file.cluster.size)
                    .unwrap_or(others.len() + 1);
                if size == 0 {
                    bail!("--cluster-size must be at least 1");
                }
                Some(ClusterSettings {
                    bind,
                    join,
                    secret,
                    size,
                    node_id: asked_node_id,
                })
            }
        };

        let algorithm = args
            .jwt_algorithm
            .clone()
            .or(file.auth.algorithm)
            .unwrap_or_else(|| "HS256".into());
        let secret = args.jwt_secret.clone().or(file.auth.secret);
        let public_key = args.jwt_public_key.clone().or(file.auth.public_key_file);
        let auth = match (secret, public_key) {
            (Some(_), Some(_)) => bail!("configure either a JWT secret or a public key file, not both"),
            (Some(s), None) => {
                if s.len() < 16 {
                    bail!("the JWT secret must be at least 16 bytes");
                }
                AuthKey::Secret { secret: s.into_bytes(), dev: false }
            }
            (None, Some(path)) => {
                let pem = std::fs::read(&path)
                    .with_context(|| format!("reading JWT public key {}", path.display()))?;
                AuthKey::PublicKey { algorithm, pem }
            }
            // No key configured: dev mode behaviour, so that `ternd` with no arguments starts.
            (None, None) => match dev_secret(&data_dir, create_dev_secret)? {
                Some(secret) => AuthKey::Secret { secret, dev: true },
                None => bail!(
                    "no JWT key configured and no {} in {}: start the node once (or pass --dev), or set --jwt-secret",
                    DEV_SECRET_FILE,
                    data_dir.display()
                ),
            },
        };

        let push = match (
            args.push_webhook.clone().or(file.push_webhook),
            args.push_secret.clone().or(file.push_secret),
        ) {
            (None, _) => None,
            (Some(_), None) => bail!("--push-webhook needs --push-secret (the signing key)"),
            (Some(_), Some(s)) if s.len() < 16 => {
                bail!("the push secret must be at least 16 bytes")
            }
            (Some(webhook), Some(secret)) => {
                crate::webhook::WebhookUrl::parse(&webhook)?;
                Some(PushSettings {
                    webhook,
                    secret: secret.into_bytes(),
                })
            }
        };
        let filter = args
            .filter_words
            .clone()
            .or(file.filter_words)
            .map(|words| FilterSettings {
                words,
                mode: args.filter_mode.or(file.filter_mode).unwrap_or_default(),
            });

        let d = Timers::default();
        let timers = Timers {
            handshake_ms: file
                .timers
                .handshake_secs
                .map_or(d.handshake_ms, |s| s * 1000),
            heartbeat_ms: file
                .timers
                .heartbeat_secs
                .map_or(d.heartbeat_ms, |s| s * 1000),
            idle_ms: file.timers.idle_secs.map_or(d.idle_ms, |s| s * 1000),
            park_ms: file.timers.park_ms.unwrap_or(d.park_ms),
        };
        if timers.heartbeat_ms == 0 || timers.idle_ms <= timers.heartbeat_ms {
            bail!("timers: idle_secs must be greater than heartbeat_secs (> 0)");
        }
        let max_frame = file
            .limits
            .max_frame
            .unwrap_or(tern_protocol::DEFAULT_MAX_BODY);
        if !(tern_protocol::MIN_MAX_BODY..=tern_protocol::ABS_MAX_BODY).contains(&max_frame) {
            bail!("limits.max_frame must be within 4096..=16777215");
        }
        let mut tenants = crate::tenant::TenantConfig::new();
        for (name, t) in &file.tenants {
            if !tern_storage::valid_tenant(name) {
                bail!("[tenants.{name}]: a tenant id is 1..=32 ASCII letters, digits, '-', '_' or '.'");
            }
            if t.max_send_rate == Some(0) || t.max_connections == Some(0) {
                bail!("[tenants.{name}]: limits must be at least 1 (leave one out for no limit)");
            }
            tenants.insert(
                name.clone(),
                crate::tenant::TenantLimits {
                    max_connections: t.max_connections,
                    max_send_rate: t.max_send_rate,
                    send_burst: t.send_burst.map(|b| b.max(1)),
                    group_max_members: t.group_max_members.map(|m| m.max(1)),
                },
            );
        }
        Ok(Settings {
            tenants,
            data_dir,
            native,
            admin,
            tls,
            http,
            tls_files,
            proxy_trusted,
            cores,
            dev,
            node_id,
            auth,
            timers,
            outbound_queue: file.limits.outbound_queue.unwrap_or(1024).max(1),
            recall_window_ms: file
                .limits
                .recall_window_secs
                .map_or(crate::session::DEFAULT_RECALL_WINDOW_MS, |s| {
                    s.saturating_mul(1000)
                }),
            typing_per_sec: file
                .limits
                .typing_per_sec
                .unwrap_or(crate::session::DEFAULT_TYPING_PER_SEC),
            typing_burst: file
                .limits
                .typing_burst
                .unwrap_or(crate::session::DEFAULT_TYPING_BURST)
                .max(1),
            max_frame,
            io_driver: args.io_driver.or(file.io_driver).unwrap_or_default(),
            storage_write_queue: file.limits.storage_write_queue.unwrap_or(65_536).max(1),
            storage_read_queue: file.limits.storage_read_queue.unwrap_or(4_096).max(1),
            rocks: rocks_config(&file.storage)?,
            groups: {
                let d = tern_storage::GroupLimits::default();
                tern_storage::GroupLimits {
                    write_diffusion_max: file
                        .limits
                        .group_write_diffusion_max
                        .unwrap_or(d.write_diffusion_max),
                    max_members: file
                        .limits
                        .group_max_members
                        .unwrap_or(d.max_members)
                        .max(1),
                }
            },
            rooms: {
                let d = RoomConfig::default();
                let r = &file.rooms;
                RoomConfig {
                    window: r.window.unwrap_or(d.window).max(1),
                    default_recent: r.recent.unwrap_or(d.default_recent),
                    member_cap: r.member_cap.unwrap_or(d.member_cap).max(1),
                    rate_per_sec: r.rate_per_sec.unwrap_or(d.rate_per_sec),
                    burst: r.burst.unwrap_or(d.burst).max(1),
                }
            },
            topics: {
                let d = crate::topics::TopicConfig::default();
                let t = &file.topics;
                crate::topics::TopicConfig {
                    max_subscribers: t.max_subscribers.unwrap_or(d.max_subscribers).max(1),
                    max_per_user: t.max_per_user.unwrap_or(d.max_per_user).max(1),
                    posts_per_sec: t.posts_per_sec.unwrap_or(d.posts_per_sec),
                    post_burst: t.post_burst.unwrap_or(d.post_burst).max(1),
                    publishers: Vec::new(),
                }
                .with_publishers(
                    t.publishers
                        .iter()
                        .map(|(p, users)| (p.clone(), users.clone()))
                        .collect(),
                )
            },
            cluster,
            push,
            filter,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_then_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let args = NodeArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, true).unwrap();
        assert_eq!(s.native.port(), 14000);
        assert_eq!(s.admin.port(), 9100);
        assert_eq!(s.tls.map(|a| a.port()), Some(14443));
        assert_eq!(s.http.map(|a| a.port()), Some(8080));
        assert!(s.tls_files.is_none() && s.proxy_trusted.is_empty());
        assert!(matches!(s.auth, AuthKey::Secret { dev: true, .. }));
        assert!(dir.path().join(DEV_SECRET_FILE).exists());
        // The same dev secret is read back by `ternd token`.
        let again = Settings::resolve(&args, false).unwrap();
        assert_eq!(again.auth, s.auth);

        let cfg = dir.path().join("tern.toml");
        std::fs::write(
            &cfg,
            "native = \"127.0.0.1:0\"\ntls = \"off\"\nproxy_trusted = [\"10.0.0.0/8\", \"127.0.0.1\"]\ncores = 3\n[auth]\nsecret = \"0123456789abcdef0123\"\n[timers]\nheartbeat_secs = 5\nidle_secs = 15\n[limits]\ntyping_per_sec = 2\ntyping_burst = 3\n",
        )
        .unwrap();
        let args = NodeArgs {
            config: Some(cfg.clone()),
            data_dir: Some(dir.path().into()),
            cores: Some(2),
            ..Default::default()
        };
        let s = Settings::resolve(&args, false).unwrap();
        assert_eq!(s.native.port(), 0);
        assert_eq!(s.tls, None);
        assert_eq!(s.proxy_trusted.len(), 2);
        assert_eq!(s.cores, 2);
        assert_eq!(s.timers.heartbeat_ms, 5000);
        assert_eq!((s.typing_per_sec, s.typing_burst), (2, 3));
        assert!(s.push.is_none() && s.filter.is_none());
        assert!(matches!(s.auth, AuthKey::Secret { dev: false, .. }));

        assert!(s.cluster.is_none());

        // Cluster: the dev secret only in dev mode; the size defaults to the join list + 1.
        let mut args = NodeArgs {
            data_dir: Some(dir.path().into()),
            cluster: Some("127.0.0.1:7946".parse().unwrap()),
            join: Some("127.0.0.1:7946, 127.0.0.1:7947,127.0.0.1:7948".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&args, false).is_err(), "no secret");
        args.dev = true;
        let c = Settings::resolve(&args, false).unwrap().cluster.unwrap();
        assert!(c.secret.is_dev());
        assert_eq!((c.join.len(), c.size, c.node_id), (3, 3, None));
        let secret = dir.path().join("cluster-secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        args.cluster_secret_file = Some(secret.clone());
        args.cluster_size = Some(5);
        let c = Settings::resolve(&args, false).unwrap().cluster.unwrap();
        assert!(!c.secret.is_dev());
        assert_eq!(c.size, 5);
        std::fs::write(&secret, "short").unwrap();
        assert!(Settings::resolve(&args, false).is_err(), "secret too short");

        std::fs::write(&cfg, "natve = \"127.0.0.1:0\"\n").unwrap();
        assert!(Settings::resolve(
            &NodeArgs {
                config: Some(cfg),
                ..Default::default()
            },
            false
        )
        .is_err());
    }

    #[test]
    fn push_and_filter_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tern.toml");
        std::fs::write(
            &cfg,
            "push_webhook = \"http://127.0.0.1:9/hook\"\npush_secret = \"0123456789abcdef\"\nfilter_words = \"/etc/tern/words\"\nfilter_mode = \"mask\"\n",
        )
        .unwrap();
        let mut args = NodeArgs {
            config: Some(cfg),
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, true).unwrap();
        let push = s.push.unwrap();
        assert_eq!(push.webhook, "http://127.0.0.1:9/hook");
        assert_eq!(push.secret, b"0123456789abcdef");
        let f = s.filter.unwrap();
        assert_eq!(f.words, PathBuf::from("/etc/tern/words"));
        assert_eq!(f.mode, crate::filter::FilterMode::Mask);
        args.filter_mode = Some(crate::filter::FilterMode::Reject);
        args.push_webhook = Some("http://gw:8000/x".into());
        let s = Settings::resolve(&args, true).unwrap();
        assert_eq!(s.filter.unwrap().mode, crate::filter::FilterMode::Reject);
        assert_eq!(s.push.unwrap().webhook, "http://gw:8000/x");
        args.push_secret = Some("short".into());
        assert!(Settings::resolve(&args, true).is_err(), "short secret");
        args.push_secret = None;
        args.push_webhook = Some("https://gw/x".into());
        assert!(Settings::resolve(&args, true).is_err(), "https");
    }

    #[test]
    fn storage_tuning_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let args = NodeArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let d = Settings::resolve(&args, true).unwrap().rocks;
        assert_eq!(d.write_buffer_size, 32 << 20);
        assert!(!d.low_priority_compaction);

        let cfg = dir.path().join("tern.toml");
        let with = |text: &str| {
            std::fs::write(&cfg, text).unwrap();
            Settings::resolve(
                &NodeArgs {
                    config: Some(cfg.clone()),
                    data_dir: Some(dir.path().into()),
                    ..Default::default()
                },
                true,
            )
        };
        let r = with("[storage]\nmemtable_mb = 8\nblock_cache_mb = 64\nbackground_jobs = 4\nlow_priority_compaction = true\n")
            .unwrap()
            .rocks;
        assert_eq!(r.write_buffer_size, 8 << 20);
        assert_eq!(r.block_cache_bytes, 64 << 20);
        assert_eq!(r.background_jobs, 4);
        assert!(r.low_priority_compaction);
        assert!(with("[storage]\nmemtable_mb = 0\n").is_err());
        assert!(with("[storage]\nbackground_jobs = 0\n").is_err());
        assert!(with("[storage]\nmemtable = 8\n").is_err(), "unknown key");
    }
}
