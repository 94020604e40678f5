//! A fixed HTTP/1.1 upstream for the proxy benchmarks in `benches/run.sh`.
//!
//! `POST /login` accepts any form and returns `303 See Other` with a new
//! random `sessionid` cookie, like an application that accepted the
//! password. Every other request gets `200 OK` with a fixed 47-byte body.
//! Connections stay open (keep-alive) unless the client sends
//! `Connection: close`.
//!
//! Usage: `bench_upstream [--listen 127.0.0.1:0] [--threads N]`. The first
//! line on standard output is `listening on ADDRESS`.

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = "fixed upstream response for otpgate benchmarks\n";
/// Largest request head or body this server reads, in bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut threads = 2;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen needs ADDRESS"),
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).expect("--threads needs a number"),
            other => panic!("unknown argument {other:?}; usage: bench_upstream [--listen ADDRESS] [--threads N]"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| panic!("binding {listen} failed: {e}"));
        println!("listening on {}", listener.local_addr().expect("bound address"));
        std::io::stdout().flush().expect("stdout is writable");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream));
        }
    });
}

/// Serves requests on one connection until the client closes it, sends
/// `Connection: close`, or sends something that is not HTTP/1.1.
async fn serve(mut stream: TcpStream) {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // Read until one complete request head is buffered.
        let (head_len, method_is_post_login, content_length, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buffer) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let post_login = request.method == Some("POST") && request.path.is_some_and(|p| p == "/login" || p.starts_with("/login?"));
                    let mut content_length = 0usize;
                    let mut close = false;
                    for header in request.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                        } else if header.name.eq_ignore_ascii_case("connection") {
                            close = header.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    break (head_len, post_login, content_length, close);
                }
                Ok(httparse::Status::Partial) if buffer.len() < MAX_REQUEST_BYTES => {}
                _ => return,
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        if content_length > MAX_REQUEST_BYTES {
            return;
        }
        while buffer.len() < head_len + content_length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_len + content_length);

        let connection = if close { "close" } else { "keep-alive" };
        let response = if method_is_post_login {
            let session: [u8; 16] = rand::random();
            let session = data_encoding::HEXLOWER.encode(&session);
            format!(
                "HTTP/1.1 303 See Other\r\nlocation: /dashboard\r\nset-cookie: sessionid={session}; Path=/; HttpOnly; SameSite=Lax\r\ncontent-length: 0\r\nconnection: {connection}\r\n\r\n"
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{BODY}",
                BODY.len()
            )
        };
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}
