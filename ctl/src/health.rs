//! `slimctl health`: one HTTP GET of a node's or controller's `/healthz`
//! (or any plain-HTTP URL), exit status 0 only on `200`. The container
//! images carry no HTTP client and no shell, so their HEALTHCHECK runs this.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    /// What to GET: `http://HOST:PORT/PATH` (plain HTTP, as the metrics
    /// listener serves it). The default is a node's liveness endpoint on its
    /// default metrics port.
    #[arg(default_value = "http://127.0.0.1:9464/healthz")]
    url: String,
    /// Give up after this long (connect, send and read each).
    #[arg(long, default_value = "3s", value_parser = crate::args::parse_duration)]
    timeout: Duration,
}

/// `(host:port, path)` of a plain-HTTP URL.
fn split_url(url: &str) -> Result<(&str, &str)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url:?}: only http:// URLs (the metrics listener has no TLS)");
    };
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

pub(crate) fn health(a: HealthArgs) -> Result<()> {
    let (authority, path) = split_url(&a.url)?;
    let addrs: Vec<_> = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, a.timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let Some(mut s) = stream else {
        match last {
            Some((addr, e)) => bail!("cannot connect to {authority} ({addr}): {e}"),
            None => bail!("{authority} resolved to no address"),
        }
    };
    s.set_read_timeout(Some(a.timeout))?;
    s.set_write_timeout(Some(a.timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("cannot send the request to {authority}"))?;
    // The endpoints answer with a few bytes; cap what we read anyway.
    let mut resp = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut resp)
        .with_context(|| format!("no answer from {authority}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp.lines().next().unwrap_or_default();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{} answered {status:?}: {body}", a.url);
    }
    println!("{}: {status} {body}", a.url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9464/healthz").unwrap(),
            ("127.0.0.1:9464", "/healthz")
        );
        assert_eq!(split_url("http://node:9464").unwrap(), ("node:9464", "/"));
        assert!(split_url("https://node:9464/healthz").is_err());
    }

    /// A server that answers each connection with `reply`.
    fn serve(reply: &'static str) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                // The whole request first: closing with part of it unread
                // resets the connection, and the client may see that
                // instead of the reply.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(reply.as_bytes());
            }
        });
        format!("http://{addr}/healthz")
    }

    fn args(url: String) -> HealthArgs {
        HealthArgs {
            url,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn ok_only_on_200() {
        health(args(serve("HTTP/1.1 200 OK\r\n\r\nok\n"))).unwrap();
        let err = health(args(serve(
            "HTTP/1.1 503 Service Unavailable\r\n\r\nno svid\n",
        )))
        .unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
    }

    #[test]
    fn reports_a_refused_connection() {
        // A port nothing listens on: bind, then drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = health(args(format!("http://127.0.0.1:{port}/healthz"))).unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
