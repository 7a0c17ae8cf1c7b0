//! The admin endpoint: a tiny blocking HTTP/1.1 server on its own thread (never on an io core)
//! with `/healthz` and Prometheus-format `/metrics`. One request per connection, parsed with
//! `httparse`; anything else is 404.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::metrics::METRICS;

/// Static facts shown on `/metrics`.
#[derive(Debug, Clone)]
pub struct AdminInfo {
    pub node_id: String,
    pub cores: usize,
}

/// Status line and body for a request path.
pub fn route(method: &str, path: &str, info: &AdminInfo) -> (&'static str, String) {
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
            ("200 OK", body)
        }
        (_, "/healthz" | "/metrics") => ("405 Method Not Allowed", "method not allowed\n".into()),
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
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                break route(req.method.unwrap_or(""), path, info);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => break ("400 Bad Request", "bad request\n".to_owned()),
        }
    };
    let content_type = if body.starts_with("# TYPE") {
        "text/plain; version=0.0.4"
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
        };
        assert_eq!(route("GET", "/healthz", &info).0, "200 OK");
        let (s, body) = route("GET", "/metrics", &info);
        assert_eq!(s, "200 OK");
        assert!(body.contains("tern_cores 2"));
        assert_eq!(route("GET", "/nope", &info).0, "404 Not Found");
        assert_eq!(route("POST", "/metrics", &info).0, "405 Method Not Allowed");
    }
}
