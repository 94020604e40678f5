//! A pingora reverse proxy with no checks, the baseline of the
//! pass-through benchmark in `benches/run.sh`.
//!
//! It is set up as `otpgate serve` sets up its proxy service
//! (`Server::new(None)`, default server configuration, one
//! `http_proxy_service` on one TCP listener, `HttpPeer::new` without TLS),
//! and it forwards every request unchanged. It uses the same allocator
//! (mimalloc) as `otpgate`, so the difference to otpgate is what otpgate's
//! `ProxyHttp` filters cost.
//!
//! Usage: `plain_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--read-buffer BYTES]`.
//! `--read-buffer` sets the per-connection L4 read buffer of the listener
//! (pingora 0.9 allocates 64 KiB by default), to measure what a smaller one
//! saves per idle connection.

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PlainProxy {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PlainProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let mut listen = None;
    let mut upstream = None;
    let mut read_buffer: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--upstream" => upstream = args.next(),
            "--read-buffer" => read_buffer = Some(args.next().and_then(|v| v.parse().ok()).expect("--read-buffer needs a size in bytes")),
            other => panic!("unknown argument {other:?}; usage: plain_proxy --listen ADDRESS --upstream ADDRESS [--read-buffer BYTES]"),
        }
    }
    let listen = listen.expect("--listen ADDRESS is required");
    let upstream = upstream.expect("--upstream ADDRESS is required");

    let mut server = pingora::server::Server::new(None).expect("pingora server starts");
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, PlainProxy { upstream });
    match read_buffer {
        Some(bytes) => proxy.add_listener(ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().read(bytes))),
        None => proxy.add_tcp(&listen),
    }
    server.add_service(proxy);
    server.run_forever();
}
