//! terndump: shows the tern frames in a capture file, in a live connection (as a transparent
//! proxy), or in raw or hex bytes — one line per frame, or JSON lines, with a summary.

mod output;
mod pcap;
mod stream;

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use output::{Filter, Origin, Printer};
use stream::StreamDecoder;

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
    },
    /// Decode every TCP connection in a pcap or pcapng capture (tcpdump -w, tshark -w).
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
        Cmd::Decode { files, hex, raw } => {
            decode_files(files, hex, raw, max_body, printer, summary)?
        }
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
        let origin = Origin {
            time: None,
            conn: i + 1,
            dir: "c>s",
            ports: None,
        };
        let mut d = StreamDecoder::new(false, max_body);
        let mut res = Ok(());
        d.feed(&bytes, &mut |item| {
            if res.is_ok() {
                res = p.item(&origin, item, &mut out);
            }
        });
        d.finish(&mut |item| {
            if res.is_ok() {
                res = p.item(&origin, item, &mut out);
            }
        });
        res?;
    }
    if summary {
        p.summary(&mut out)?;
    }
    out.flush()?;
    Ok(p.error_count())
}

fn decode_pcap(file: &PathBuf, max_body: u32, mut p: Printer, summary: bool) -> Result<u64> {
    let data = read_input(file)?;
    let segments = pcap::read_segments(&data[..])?;
    pcap::ensure_tcp(&segments)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut conns = pcap::Connections::default();
    let mut dirs: HashMap<(usize, bool), (pcap::Reassembler, Option<StreamDecoder>)> =
        HashMap::new();
    let mut res: std::io::Result<()> = Ok(());
    for s in &segments {
        let (conn, from_client) = conns.lookup(s);
        let origin = Origin {
            time: Some(s.time),
            conn,
            dir: if from_client { "c>s" } else { "s>c" },
            ports: Some((conns.ends[conn - 1].0.port(), conns.ends[conn - 1].1.port())),
        };
        let (re, dec) = dirs.entry((conn, from_client)).or_default();
        for delivery in re.push(s.seq, s.syn, &s.payload) {
            let d = dec.get_or_insert_with(|| StreamDecoder::new(re.midstream, max_body));
            match delivery {
                pcap::Delivery::Bytes(b) => d.feed(&b, &mut |item| {
                    if res.is_ok() {
                        res = p.item(&origin, item, &mut out);
                    }
                }),
                pcap::Delivery::Gap(n) => d.gap(n),
            }
        }
    }
    let mut keys: Vec<(usize, bool)> = dirs.keys().copied().collect();
    keys.sort_by_key(|(c, client)| (*c, !*client));
    for key in keys {
        let Some((re, dec)) = dirs.get_mut(&key) else {
            continue;
        };
        let origin = Origin {
            time: None,
            conn: key.0,
            dir: if key.1 { "c>s" } else { "s>c" },
            ports: Some((
                conns.ends[key.0 - 1].0.port(),
                conns.ends[key.0 - 1].1.port(),
            )),
        };
        for delivery in re.flush() {
            let d = dec.get_or_insert_with(|| StreamDecoder::new(true, max_body));
            match delivery {
                pcap::Delivery::Bytes(b) => d.feed(&b, &mut |item| {
                    if res.is_ok() {
                        res = p.item(&origin, item, &mut out);
                    }
                }),
                pcap::Delivery::Gap(n) => d.gap(n),
            }
        }
        if let Some(d) = dec {
            d.finish(&mut |item| {
                if res.is_ok() {
                    res = p.item(&origin, item, &mut out);
                }
            });
        }
    }
    res?;
    if !p.json {
        for (i, (c, s)) in conns.ends.iter().enumerate() {
            writeln!(out, "-- conn={} client {c} server {s}", i + 1)?;
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
        for (from, to, dir) in [
            (client.try_clone()?, server.try_clone()?, "c>s"),
            (server.try_clone()?, client.try_clone()?, "s>c"),
        ] {
            let printer = Arc::clone(&printer);
            handles.push(std::thread::spawn(move || {
                pump(from, to, conn, dir, max_body, &printer)
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
    dir: &'static str,
    max_body: u32,
    printer: &Mutex<Printer>,
) {
    let mut d = StreamDecoder::new(false, max_body);
    let mut buf = vec![0u8; 64 * 1024];
    fn print(printer: &Mutex<Printer>, origin: &Origin, item: stream::Item<'_>) {
        if let Ok(mut p) = printer.lock() {
            let mut out = std::io::stdout().lock();
            let _ = p.item(origin, item, &mut out);
            let _ = out.flush();
        }
    }
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Forward first: the dump must never delay or alter the conversation.
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let origin = Origin {
            time: output::now(),
            conn,
            dir,
            ports: None,
        };
        d.feed(&buf[..n], &mut |item| print(printer, &origin, item));
    }
    let origin = Origin {
        time: output::now(),
        conn,
        dir,
        ports: None,
    };
    d.finish(&mut |item| print(printer, &origin, item));
    let _ = to.shutdown(std::net::Shutdown::Write);
}
