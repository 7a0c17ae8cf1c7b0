//! Printing: one line per frame for people or one JSON object per line for scripts, the
//! `--filter` selection, and the end-of-run summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use tern_protocol::FrameType;

use crate::stream::Item;
use crate::transport::{Note, What};

/// Where a frame was seen.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Capture time, or time received by the proxy; `None` for files without times.
    pub time: Option<Duration>,
    pub conn: usize,
    /// "c>s" (client to server) or "s>c".
    pub dir: &'static str,
    /// Client and server ports, when known (captures).
    pub ports: Option<(u16, u16)>,
    /// "native", "ws", "tunnel", "tls", or "-" before the connection is classified.
    pub transport: &'static str,
}

/// One `--filter` term; terms are ANDed.
#[derive(Debug, Clone)]
pub enum Filter {
    Types(Vec<FrameType>),
    User(String),
    Conv(String),
    Conn(usize),
    Port(u16),
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter> {
        let Some((k, v)) = s.split_once('=') else {
            bail!("filter `{s}`: expected type=SEND,PUSH | user=ID | conv=ID | conn=N | port=N");
        };
        Ok(match k {
            "type" => {
                let mut types = Vec::new();
                for t in v.split(',') {
                    match FrameType::from_name(t) {
                        Some(ft) => types.push(ft),
                        None => bail!("filter: unknown frame type `{t}`"),
                    }
                }
                Filter::Types(types)
            }
            "user" => Filter::User(v.to_owned()),
            "conv" => Filter::Conv(v.to_owned()),
            "conn" => Filter::Conn(v.parse()?),
            "port" => Filter::Port(v.parse()?),
            _ => bail!("filter: unknown key `{k}` (type, user, conv, conn, port)"),
        })
    }

    fn matches(&self, o: &Origin, ft: Option<FrameType>, body: &Value) -> bool {
        match self {
            Filter::Types(ts) => ft.is_some_and(|f| ts.contains(&f)),
            Filter::Conn(n) => o.conn == *n,
            Filter::Port(p) => o.ports.is_some_and(|(c, s)| c == *p || s == *p),
            Filter::User(u) => {
                has_value(body, &["sender", "user", "owner", "users", "members"], u)
                    || conv_ids(body).any(|(kind, id)| kind == "DIRECT" && id == u)
            }
            Filter::Conv(c) => conv_ids(body).any(|(_, id)| id == c),
        }
    }
}

fn has_value(v: &Value, keys: &[&str], want: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| {
            (keys.contains(&k.as_str()) && contains_str(x, want)) || has_value(x, keys, want)
        }),
        Value::Array(a) => a.iter().any(|x| has_value(x, keys, want)),
        _ => false,
    }
}

fn contains_str(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Array(a) => a.iter().any(|x| contains_str(x, want)),
        Value::Object(m) => m.values().any(|x| contains_str(x, want)),
        _ => false,
    }
}

/// Every conversation reference (`{kind, id}`) anywhere in a body.
fn conv_ids(v: &Value) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
    match v {
        Value::Object(m) => {
            let own = match (m.get("kind"), m.get("id"), m.len()) {
                (Some(Value::String(k)), Some(Value::String(i)), 2) => {
                    Some((k.as_str(), i.as_str()))
                }
                _ => None,
            };
            // TOPIC_SUB and TOPIC_LIST_PAGE name a topic by a plain `topic` field.
            let topic = match m.get("topic") {
                Some(Value::String(t)) => Some(("TOPIC", t.as_str())),
                _ => None,
            };
            Box::new(
                own.into_iter()
                    .chain(topic)
                    .chain(m.values().flat_map(conv_ids)),
            )
        }
        Value::Array(a) => Box::new(a.iter().flat_map(conv_ids)),
        _ => Box::new(std::iter::empty()),
    }
}

/// Prints items and keeps the counts for the summary.
#[derive(Debug)]
pub struct Printer {
    pub json: bool,
    pub filters: Vec<Filter>,
    per_type: BTreeMap<String, (u64, u64)>,
    errors: BTreeMap<String, u64>,
    resyncs: u64,
    shown: u64,
    /// Connections per transport.
    transports: BTreeMap<&'static str, u64>,
}

impl Printer {
    pub fn new(json: bool, filters: Vec<Filter>) -> Self {
        Printer {
            json,
            filters,
            per_type: BTreeMap::new(),
            errors: BTreeMap::new(),
            resyncs: 0,
            shown: 0,
            transports: BTreeMap::new(),
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Counts a finished connection for the summary.
    pub fn connection(&mut self, transport: &'static str) {
        let t = if transport == "-" {
            "unknown"
        } else {
            transport
        };
        *self.transports.entry(t).or_default() += 1;
    }

    pub fn event(
        &mut self,
        o: &Origin,
        what: What<'_>,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        match what {
            What::Item(item) => self.item(o, item, out),
            What::Note(n) => self.note(o, n, out),
        }
    }

    /// Connection-level lines (and resyncs) obey only the connection filters: with a frame
    /// filter in force, only frames are wanted.
    fn connection_line_shown(&self, o: &Origin) -> bool {
        self.filters.iter().all(|f| {
            matches!(f, Filter::Conn(_) | Filter::Port(_)) && f.matches(o, None, &Value::Null)
        })
    }

    /// A transport note: a PROXY header, an HTTP head, a WebSocket control frame, TLS, or
    /// framing that could not be read (counted as an error).
    pub fn note(&mut self, o: &Origin, n: Note, out: &mut impl Write) -> std::io::Result<()> {
        if n.error {
            *self.errors.entry("TRANSPORT".into()).or_default() += 1;
        }
        if !self.connection_line_shown(o) {
            return Ok(());
        }
        if self.json {
            let mut v = json!({"time": time_str(o.time), "conn": o.conn, "dir": o.dir,
                "transport": o.transport, "note": n.kind, "text": n.text});
            if n.error {
                v["error"] = json!("TRANSPORT");
            }
            if let (Value::Object(m), Value::Object(d)) = (&mut v, n.detail) {
                m.extend(d);
            }
            writeln!(out, "{v}")
        } else {
            writeln!(
                out,
                "{} conn={} {} {} -- {}{}",
                time_str(o.time),
                o.conn,
                o.dir,
                o.transport,
                if n.error { "ERROR TRANSPORT: " } else { "" },
                n.text
            )
        }
    }

    pub fn item(
        &mut self,
        o: &Origin,
        item: Item<'_>,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let (offset, ft, len, record) = match item {
            Item::Frame {
                offset,
                raw,
                parsed,
            } => {
                let ft = raw.header.frame_type;
                let len = raw.header.frame_len() as u64;
                match parsed {
                    Ok(f) => {
                        let body = serde_json::to_value(&f.body).unwrap_or(Value::Null);
                        (offset, Some(ft), len, Ok((f.request_id, f.flags.0, body)))
                    }
                    Err(e) => (offset, Some(ft), len, Err((e.code(), e.to_string()))),
                }
            }
            Item::Error {
                offset,
                code,
                message,
            } => (offset, None, 0, Err((code, message))),
            Item::Resync { offset, skipped } => {
                self.resyncs += 1;
                // A resync belongs to a connection, not to a frame: only connection filters apply.
                if self.connection_line_shown(o) {
                    let line = if self.json {
                        json!({"time": time_str(o.time), "conn": o.conn, "dir": o.dir,
                               "transport": o.transport, "offset": offset,
                               "resync": true, "skipped": skipped})
                        .to_string()
                    } else {
                        format!(
                            "{} conn={} {} {} @{} -- resynchronised on frame magic, skipped {} bytes",
                            time_str(o.time),
                            o.conn,
                            o.dir,
                            o.transport,
                            offset,
                            skipped
                        )
                    };
                    writeln!(out, "{line}")?;
                }
                return Ok(());
            }
        };
        match record {
            Ok((rid, flags, body)) => {
                let Some(ft) = ft else { return Ok(()) };
                let e = self.per_type.entry(ft.to_string()).or_default();
                e.0 += 1;
                e.1 += len;
                if !self.filters.iter().all(|f| f.matches(o, Some(ft), &body)) {
                    return Ok(());
                }
                self.shown += 1;
                if self.json {
                    let v = json!({"time": time_str(o.time), "conn": o.conn, "dir": o.dir,
                        "transport": o.transport, "offset": offset, "type": ft.to_string(), "request_id": rid, "flags": flags, "len": len, "body": body});
                    writeln!(out, "{v}")
                } else {
                    let mut line = format!(
                        "{} conn={} {} {} @{} {} #{}",
                        time_str(o.time),
                        o.conn,
                        o.dir,
                        o.transport,
                        offset,
                        ft,
                        rid
                    );
                    if flags != 0 {
                        line.push_str(&format!(" flags={flags:#04x}"));
                    }
                    if let Value::Object(m) = &body {
                        line.push(' ');
                        line.push_str(&fields(m));
                    }
                    writeln!(out, "{line}")
                }
            }
            Err((code, message)) => {
                *self.errors.entry(code.to_string()).or_default() += 1;
                if let Some(ft) = ft {
                    let e = self.per_type.entry(ft.to_string()).or_default();
                    e.0 += 1;
                    e.1 += len;
                }
                if !self.filters.iter().all(|f| f.matches(o, ft, &Value::Null)) {
                    return Ok(());
                }
                if self.json {
                    let v = json!({"time": time_str(o.time), "conn": o.conn, "dir": o.dir,
                        "transport": o.transport, "offset": offset, "error": code.to_string(), "code": code.0, "message": message});
                    writeln!(out, "{v}")
                } else {
                    writeln!(
                        out,
                        "{} conn={} {} {} @{} ERROR {} (code {}): {}",
                        time_str(o.time),
                        o.conn,
                        o.dir,
                        o.transport,
                        offset,
                        code,
                        code.0,
                        message
                    )
                }
            }
        }
    }

    pub fn summary(&self, out: &mut impl Write) -> std::io::Result<()> {
        if self.json {
            let types: Map<String, Value> = self
                .per_type
                .iter()
                .map(|(k, (n, b))| (k.clone(), json!({"frames": n, "bytes": b})))
                .collect();
            let v = json!({"summary": {"types": types, "errors": self.errors, "resyncs": self.resyncs,
                "shown": self.shown, "transports": self.transports}});
            return writeln!(out, "{v}");
        }
        writeln!(out, "-- summary")?;
        writeln!(out, "{:<18} {:>10} {:>12}", "type", "frames", "bytes")?;
        let (mut n, mut b) = (0, 0);
        for (t, (fr, by)) in &self.per_type {
            writeln!(out, "{t:<18} {fr:>10} {by:>12}")?;
            n += fr;
            b += by;
        }
        writeln!(out, "{:<18} {n:>10} {b:>12}", "total")?;
        if self.errors.is_empty() {
            writeln!(out, "errors: none")?;
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(c, k)| format!("{c} x{k}"))
                .collect();
            writeln!(out, "errors: {}", list.join(", "))?;
        }
        if self.resyncs > 0 {
            writeln!(out, "resynchronisations: {}", self.resyncs)?;
        }
        if !self.transports.is_empty() {
            let list: Vec<String> = self
                .transports
                .iter()
                .map(|(t, n)| match *t {
                    "tls" => format!("tls {n} (encrypted, not decoded)"),
                    _ => format!("{t} {n}"),
                })
                .collect();
            writeln!(out, "connections: {}", list.join(", "))?;
        }
        Ok(())
    }
}

fn time_str(t: Option<Duration>) -> String {
    match t {
        None => "-".into(),
        Some(d) => {
            let secs = d.as_secs();
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, dd) = civil_from_days(days as i64);
            format!(
                "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:06}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60,
                d.subsec_micros()
            )
        }
    }
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm; avoids a time crate
/// for one conversion).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Wall-clock time now, for the proxy's lines.
pub fn now() -> Option<Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

fn fields(m: &Map<String, Value>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn value(v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty()
                && !s.contains([' ', '"', '=', '{', '}', '[', ']', ','])
                && s.chars().all(|c| !c.is_control()) =>
        {
            s.clone()
        }
        Value::String(s) => format!("{s:?}"),
        Value::Object(m) => match (m.get("kind"), m.get("id"), m.len()) {
            (Some(Value::String(k)), Some(Value::String(i)), 2) => {
                format!("{}:{}", k.to_ascii_lowercase(), i)
            }
            _ if m.len() == 1 && m.contains_key("hex") => {
                format!("0x{}", m["hex"].as_str().unwrap_or(""))
            }
            _ => format!("{{{}}}", fields(m)),
        },
        Value::Array(a) => format!("[{}]", a.iter().map(value).collect::<Vec<_>>().join(", ")),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
