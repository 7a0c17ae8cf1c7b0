//! The admin endpoint: a tiny blocking HTTP/1.1 server on its own thread (never on an io core)
//! with `/healthz`, Prometheus-format `/metrics` and, in a cluster, `/cluster/members` and
//! `/cluster/owner?user=U` (JSON), `POST /cluster/drain` (hand this node's slots to the
//! others, `cluster::handoff`), and on a `--dev` cluster node the fault injection of
//! `/cluster/partition` (POST/DELETE). One request per connection, parsed with `httparse`;
//! anything else is 404.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::node::ClusterState;
use crate::metrics::METRICS;

/// Static facts shown on `/metrics`.
#[derive(Debug, Clone)]
pub struct AdminInfo {
    pub node_id: String,
    pub cores: usize,
    /// The cluster's view, when the node runs in one.
    pub cluster: Option<Arc<ClusterState>>,
}

/// The value of `key` in a query string, percent-decoded (`+` is a space); `None` when absent
/// or not valid UTF-8 after decoding.
fn query_param(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)?
        .1;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                // Two ASCII hex digits: valid UTF-8 and a valid u8.
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Status line and body of a `/cluster/...` request.
fn cluster_route(path: &str, query: &str, info: &AdminInfo) -> (&'static str, String) {
    let Some(cluster) = &info.cluster else {
        return (
            "404 Not Found",
            "this node is not in a cluster (start it with --cluster)\n".into(),
        );
    };
    match path {
        "/cluster/members" => ("200 OK", format!("{}\n", cluster.members_json())),
        "/cluster/owner" => match query_param(query, "user").filter(|u| !u.is_empty()) {
            Some(user) => ("200 OK", format!("{}\n", cluster.owner_json(&user))),
            None => ("400 Bad Request", "missing ?user=USER\n".into()),
        },
        _ => ("404 Not Found", "not found\n".into()),
    }
}

/// `POST /cluster/partition?block=ID1,ID2` / `DELETE /cluster/partition`: fault injection for
/// tests, only on a `--dev` node in a cluster (`cluster::fault`).
fn partition_route(method: &str, query: &str, info: &AdminInfo) -> (&'static str, String) {
    let Some(cluster) = info
        .cluster
        .as_ref()
        .filter(|_| crate::cluster::fault::enabled())
    else {
        return (
            "404 Not Found",
            "fault injection exists only on a --dev node in a cluster\n".into(),
        );
    };
    if method == "DELETE" {
        crate::cluster::fault::heal();
        return ("200 OK", "{\"blocked\":[]}\n".into());
    }
    let ids: Vec<String> = query_param(query, "block")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return ("400 Bad Request", "missing ?block=ID1,ID2\n".into());
    }
    let mut addrs = Vec::new();
    for id in &ids {
        match cluster.member_addr(id) {
            Some(a) => addrs.push(a),
            None => return ("400 Bad Request", format!("{id} is not a live member\n")),
        }
    }
    crate::cluster::fault::block(&ids, &addrs);
    (
        "200 OK",
        format!(
            "{}\n",
            serde_json::json!({ "blocked": crate::cluster::fault::blocked_ids() })
        ),
    )
}

/// Status line and body for a request target (path and optional query).
pub fn route(method: &str, target: &str, info: &AdminInfo) -> (&'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/healthz") => ("200 OK", "ok\n".into()),
        ("GET", "/metrics") => {
            let mut body = METRICS.render();
            body.push_str(&format!(
                "# TYPE tern_info gauge\ntern_info{{node=\"{}\",version=\"{}\"}} 1\n# TYPE tern_cores gauge\ntern_cores {}\n",
                info.node_id.replace(['"', '\\', '\n'], "_"),
                env!("CARGO_PKG_VERSION"),
                info.cores
            ));
            if let Some(links) = crate::cluster::links::installed() {
                body.push_str(&links.render_metrics());
            }
            ("200 OK", body)
        }
        ("GET", p) if p.starts_with("/cluster/") => cluster_route(p, query, info),
        ("POST" | "DELETE", "/cluster/partition") => partition_route(method, query, info),
        ("POST", "/cluster/drain") => match &info.cluster {
            Some(cluster) => {
                cluster.request_drain();
                (
                    "202 Accepted",
                    format!(
                        "{}\n",
                        serde_json::json!({ "draining": true, "node": cluster.node_id().as_str() })
                    ),
                )
            }
            None => (
                "404 Not Found",
                "this node is not in a cluster (start it with --cluster)\n".into(),
            ),
        },
        (_, "/healthz" | "/metrics" | "/cluster/members" | "/cluster/owner") => {
            ("405 Method Not Allowed", "method not allowed\n".into())
        }
        _ => ("404 Not Found", "not found\n".into()),
    }
}

fn handle(mut stream: TcpStream, info: &AdminInfo) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let (status, body) = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break route(req.method.unwrap_or(""), req.path.unwrap_or("/"), info);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => break ("400 Bad Request", "bad request\n".to_owned()),
        }
    };
    let content_type = if body.starts_with("# TYPE") {
        "text/plain; version=0.0.4"
    } else if body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Serves admin requests forever, one at a time.
pub fn serve(listener: TcpListener, info: AdminInfo) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = handle(s, &info) {
                    tracing::debug!("admin request failed: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let info = AdminInfo {
            node_id: "n".into(),
            cores: 2,
            cluster: None,
        };
        assert_eq!(route("GET", "/healthz", &info).0, "200 OK");
        let (s, body) = route("GET", "/metrics", &info);
        assert_eq!(s, "200 OK");
        assert!(body.contains("tern_cores 2"));
        assert_eq!(route("GET", "/nope", &info).0, "404 Not Found");
        assert_eq!(route("POST", "/metrics", &info).0, "405 Method Not Allowed");
        assert_eq!(route("GET", "/metrics?x=1", &info).0, "200 OK");
        assert_eq!(route("GET", "/cluster/members", &info).0, "404 Not Found");
        assert_eq!(
            query_param("a=1&user=b%C3%B6b+x", "user").as_deref(),
            Some("böb x")
        );
        assert_eq!(query_param("user=%4", "user"), None);
        assert_eq!(query_param("user=%zz", "user"), None);
        assert_eq!(query_param("a=1", "user"), None);
    }
}
