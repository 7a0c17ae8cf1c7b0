//! terndump: shows the tern frames in a capture file, in a live connection (as a transparent
//! proxy), or in raw or hex bytes — one line per frame, or JSON lines, with a summary. Frames are
//! found inside every transport of SPEC.md §12: native, WebSocket, the HTTP tunnel, after a PROXY
//! header; TLS is recognised and left alone.

mod detect;
mod http;
mod output;
mod pcap;
mod stream;
mod transport;
mod ws;

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use output::{Filter, Origin, Printer};
use transport::{ConnDecoder, Event};

#[derive(Parser, Debug)]
#[command(
    name = "terndump",
    version,
    about = "Decode tern protocol frames from captures, live connections or bytes"
)]
struct Cli {
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Show only matching frames: type=SEND,PUSH | user=ID | conv=ID | conn=N | port=N (repeatable; all must match).
    #[arg(long, global = true, value_parser = Filter::parse)]
    filter: Vec<Filter>,
    /// Largest body accepted before a HELLO or WELCOME announces another limit (the spec's
    /// initial limit is 65536).
    #[arg(long, global = true, default_value_t = tern_protocol::DEFAULT_MAX_BODY)]
    max_body: u32,
    /// Do not print the summary at the end.
    #[arg(long, global = true)]
    no_summary: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Decode raw bytes or hex (with `#` comments, like protocol-spec/vectors/*.hex) from files or stdin.
    Decode {
        /// Files to read; `-` or none reads stdin. Each file is one stream.
        files: Vec<PathBuf>,
        /// Treat input as hex even if it does not look like it.
        #[arg(long, conflicts_with = "raw")]
        hex: bool,
        /// Treat input as raw bytes.
        #[arg(long)]
        raw: bool,
        /// Detect the transport from the first bytes, as in captures: a PROXY header, a
        /// WebSocket or tunnel conversation (one direction per file; a file starting with
        /// `HTTP/` is the server's), TLS. Without it the bytes are tern frames.
        #[arg(long)]
        detect: bool,
    },
    /// Decode every TCP connection in a pcap or pcapng capture (tcpdump -w, tshark -w): native,
    /// WebSocket and HTTP tunnel connections, after a PROXY header or not; TLS is noted.
    /// Offsets of WebSocket and tunnel frames count bytes of the frame stream they carry.
    Pcap {
        /// The capture file, or `-` for stdin.
        file: PathBuf,
    },
    /// Forward connections to a node unchanged and print every frame in both directions.
    Proxy {
        /// Where clients connect (loopback addresses recommended).
        #[arg(long)]
        listen: SocketAddr,
        /// The node to forward to.
        #[arg(long)]
        upstream: SocketAddr,
        /// Stop after this many connections have finished (default: run until killed).
        #[arg(long)]
        max_conns: Option<usize>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let printer = Printer::new(cli.json, cli.filter);
    let max_body = cli.max_body.min(tern_protocol::ABS_MAX_BODY);
    let summary = !cli.no_summary;
    let errors = match cli.cmd {
        Cmd::Decode {
            files,
            hex,
            raw,
            detect,
        } => decode_files(files, hex, raw, detect, max_body, printer, summary)?,
        Cmd::Pcap { file } => decode_pcap(&file, max_body, printer, summary)?,
        Cmd::Proxy {
            listen,
            upstream,
            max_conns,
        } => proxy(listen, upstream, max_conns, max_body, printer, summary)?,
    };
    // Exit status 1 when anything failed to decode, so scripts can check captures.
    std::process::exit(if errors > 0 { 1 } else { 0 });
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading stdin")?;
    } else {
        data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(data)
}

fn looks_like_hex(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    text.lines().all(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.chars()
            .all(|c| c.is_ascii_hexdigit() || c.is_whitespace())
    })
}

fn decode_files(
    files: Vec<PathBuf>,
    hex: bool,
    raw: bool,
    detect: bool,
    max_body: u32,
    mut p: Printer,
    summary: bool,
) -> Result<u64> {
    let files = if files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        files
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (i, path) in files.iter().enumerate() {
        let data = read_input(path)?;
        let bytes = if hex || (!raw && looks_like_hex(&data)) {
            let text = String::from_utf8(data).context("hex input is not text")?;
            tern_protocol::vectors::parse_hex(&text)
                .with_context(|| format!("{}", path.display()))?
        } else {
            data
        };
        // A file is one direction of one connection: the client's, unless it starts with an
        // HTTP response (the server's side of a tunnel or WebSocket connection).
        let server_side = detect && bytes.starts_with(b"HTTP/");
        let mut d = if !detect {
            ConnDecoder::native(max_body)
        } else if server_side {
            ConnDecoder::responses_only(max_body)
        } else {
            ConnDecoder::new(max_body)
        };
        let mut res = Ok(());
        {
            let mut sink = |ev: Event<'_>| {
                if res.is_ok() {
                    let origin = Origin {
                        time: None,
                        conn: i + 1,
                        dir: dir(ev.from_client),
                        ports: None,
                        transport: ev.transport.as_str(),
                    };
                    res = p.event(&origin, ev.what, &mut out);
                }
            };
            d.feed(!server_side, &bytes, &mut sink);
            d.finish(&mut sink);
        }
        p.connection(d.transport().as_str());
        res?;
    }
    if summary {
        p.summary(&mut out)?;
    }
    out.flush()?;
    Ok(p.error_count())
}

fn dir(from_client: bool) -> &'static str {
    if from_client {
        "c>s"
    } else {
        "s>c"
    }
}

fn decode_pcap(file: &PathBuf, max_body: u32, mut p: Printer, summary: bool) -> Result<u64> {
    let data = read_input(file)?;
    let segments = pcap::read_segments(&data[..])?;
    pcap::ensure_tcp(&segments)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut conns = pcap::Connections::default();
    let mut dirs: HashMap<(usize, bool), pcap::Reassembler> = HashMap::new();
    let mut decoders: HashMap<usize, ConnDecoder> = HashMap::new();
    let mut res: std::io::Result<()> = Ok(());
    let mut deliver = |d: &mut ConnDecoder,
                       from_client: bool,
                       deliveries: Vec<pcap::Delivery>,
                       time: Option<std::time::Duration>,
                       conn: usize,
                       ports: (u16, u16),
                       p: &mut Printer| {
        let mut sink = |ev: Event<'_>| {
            if res.is_ok() {
                let origin = Origin {
                    time,
                    conn,
                    dir: dir(ev.from_client),
                    ports: Some(ports),
                    transport: ev.transport.as_str(),
                };
                res = p.event(&origin, ev.what, &mut out);
            }
        };
        for delivery in deliveries {
            match delivery {
                pcap::Delivery::Bytes(b) => d.feed(from_client, &b, &mut sink),
                pcap::Delivery::Gap(n) => d.gap(from_client, n, &mut sink),
            }
        }
    };
    for s in &segments {
        let (conn, from_client) = conns.lookup(s);
        let ports = (conns.ends[conn - 1].0.port(), conns.ends[conn - 1].1.port());
        let re = dirs.entry((conn, from_client)).or_default();
        let deliveries = re.push(s.seq, s.syn, &s.payload);
        let d = decoders
            .entry(conn)
            .or_insert_with(|| ConnDecoder::new(max_body));
        if re.midstream {
            d.mark_midstream(from_client);
        }
        deliver(
            d,
            from_client,
            deliveries,
            Some(s.time),
            conn,
            ports,
            &mut p,
        );
    }
    let mut keys: Vec<(usize, bool)> = dirs.keys().copied().collect();
    keys.sort_by_key(|(c, client)| (*c, !*client));
    for (conn, from_client) in keys {
        let Some(re) = dirs.get_mut(&(conn, from_client)) else {
            continue;
        };
        let ports = (conns.ends[conn - 1].0.port(), conns.ends[conn - 1].1.port());
        let d = decoders
            .entry(conn)
            .or_insert_with(|| ConnDecoder::new(max_body));
        deliver(d, from_client, re.flush(), None, conn, ports, &mut p);
    }
    let mut conn_ids: Vec<usize> = decoders.keys().copied().collect();
    conn_ids.sort_unstable();
    for conn in conn_ids {
        let Some(d) = decoders.get_mut(&conn) else {
            continue;
        };
        let ports = (conns.ends[conn - 1].0.port(), conns.ends[conn - 1].1.port());
        let mut sink = |ev: Event<'_>| {
            if res.is_ok() {
                let origin = Origin {
                    time: None,
                    conn,
                    dir: dir(ev.from_client),
                    ports: Some(ports),
                    transport: ev.transport.as_str(),
                };
                res = p.event(&origin, ev.what, &mut out);
            }
        };
        d.finish(&mut sink);
        p.connection(d.transport().as_str());
    }
    res?;
    if !p.json {
        for (i, (c, s)) in conns.ends.iter().enumerate() {
            let (transport, proxied) = decoders.get(&(i + 1)).map_or(("-", None), |d| {
                (d.transport().as_str(), d.proxied_client())
            });
            write!(out, "-- conn={} {transport} client {c} server {s}", i + 1)?;
            match proxied {
                Some(real) => writeln!(out, " (PROXY: real client {real})")?,
                None => writeln!(out)?,
            }
        }
    }
    if summary {
        p.summary(&mut out)?;
    }
    out.flush()?;
    Ok(p.error_count())
}

fn proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
    max_conns: Option<usize>,
    max_body: u32,
    p: Printer,
    summary: bool,
) -> Result<u64> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    eprintln!(
        "terndump: proxying {} -> {upstream}",
        listener.local_addr()?
    );
    let printer = Arc::new(Mutex::new(p));
    let mut handles = Vec::new();
    for (n, client) in listener.incoming().enumerate() {
        let client = client.context("accepting")?;
        let server =
            TcpStream::connect(upstream).with_context(|| format!("connecting to {upstream}"))?;
        let conn = n + 1;
        // Both directions share one decoder: the client's first bytes decide how the server's
        // are read.
        let decoder = Arc::new(Mutex::new(ConnDecoder::new(max_body)));
        for (from, to, from_client) in [
            (client.try_clone()?, server.try_clone()?, true),
            (server.try_clone()?, client.try_clone()?, false),
        ] {
            let printer = Arc::clone(&printer);
            let decoder = Arc::clone(&decoder);
            handles.push(std::thread::spawn(move || {
                pump(from, to, conn, from_client, &decoder, &printer)
            }));
        }
        if max_conns.is_some_and(|m| conn >= m) {
            break;
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let p = printer
        .lock()
        .map_err(|_| anyhow::anyhow!("printer poisoned"))?;
    let mut out = std::io::stdout().lock();
    if summary {
        p.summary(&mut out)?;
    }
    Ok(p.error_count())
}

/// Copies one direction byte for byte, decoding a copy of what passes.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    conn: usize,
    from_client: bool,
    decoder: &Mutex<ConnDecoder>,
    printer: &Mutex<Printer>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // Locks are taken decoder first, printer second, in both directions.
    let mut print = |ev: Event<'_>| {
        if let Ok(mut p) = printer.lock() {
            let origin = Origin {
                time: output::now(),
                conn,
                dir: dir(ev.from_client),
                ports: None,
                transport: ev.transport.as_str(),
            };
            let mut out = std::io::stdout().lock();
            let _ = p.event(&origin, ev.what, &mut out);
            let _ = out.flush();
        }
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Forward first: the dump must never delay or alter the conversation.
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Ok(mut d) = decoder.lock() {
            d.feed(from_client, &buf[..n], &mut print);
        }
    }
    if let Ok(mut d) = decoder.lock() {
        d.finish_side(from_client, &mut print);
        if from_client {
            if let Ok(mut p) = printer.lock() {
                p.connection(d.transport().as_str());
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
