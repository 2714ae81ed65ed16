//! `healthcheck [--api-key-env VAR] http://HOST:PORT/PATH`
//!
//! Exits 0 when the URL answers a 2xx status within 5 s, 1 otherwise. It
//! is the HEALTHCHECK / exec probe of the FROM-scratch images, which have
//! no shell and no curl. With `--api-key-env VAR` the value of that
//! environment variable is sent as `X-API-Key` (the node's REST API wants
//! it; the key then never appears on a command line or in the image).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(status) => {
            println!("healthy: HTTP {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<u16, String> {
    let mut api_key = None;
    let mut url = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--api-key-env" => {
                let var = it.next().ok_or("--api-key-env needs a variable name")?;
                api_key = std::env::var(&var).ok().filter(|v| !v.is_empty());
            }
            "-h" | "--help" => {
                return Err("usage: healthcheck [--api-key-env VAR] http://HOST:PORT/PATH".into())
            }
            _ if url.is_none() => url = Some(a),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let url = url.ok_or("no URL given")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are checked (the health listeners are plain HTTP)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(k) = api_key {
        req.push_str(&format!("X-API-Key: {k}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // The status line is all we need; a bounded read keeps a misbehaving
    // server from holding the check.
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < buf.len() && !buf[..got].contains(&b'\n') {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("HTTP {status} from {url}"))
    }
}
