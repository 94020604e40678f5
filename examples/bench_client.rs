//! Load clients for `benches/run.sh`; all traffic goes to 127.0.0.1.
//!
//! `bench_client second-factor --config FILE --gateway URL [--members N] [--concurrency N] [--prefix NAME]`
//!   Enrolls N new members with random seeds through the vault and the
//!   store (the calls `otpgate user import` makes), logs each in through
//!   the gateway to get a pending login, computes each member's current
//!   TOTP code with OpenSSL's HMAC, and then posts all codes to
//!   `/_otpgate/challenge` as JSON with N concurrent requests at most.
//!   Afterwards it times `Vault::verify` alone on the same token with one
//!   and with two threads, so the HTTP rate can be set beside the HSM rate.
//!   With `--gateway-pid PID` and `--redis-pid PID` it also reports the CPU
//!   time those processes used while the codes were posted.
//!   Needs `SOFTHSM2_CONF` and the PIN variable of the configuration.
//!
//! `bench_client idle --addr HOST:PORT [--connections N] [--hold-secs S] [--path P] [--header "Name: value"]`
//!   Opens N connections, sends one GET on each and reads the response,
//!   prints `ready N`, keeps them idle for S seconds, and then reports how
//!   many the server still keeps open. Raise `ulimit -n` first.
//!
//! `bench_client fixed-rate --addr HOST:PORT --rate R [--connections N] [--secs S] [--path P] [--header "Name: value"]`
//!   Sends R requests per second in total for S seconds over N keep-alive
//!   connections, each request at its scheduled time (an open loop), and
//!   reports latency percentiles. Latency runs to the end of the response
//!   from the scheduled time when an earlier slow response delayed the
//!   request, so that wait counts too, and otherwise from the moment the
//!   request was sent.
//!
//! Results are printed as `RESULT key=value` lines.

#[path = "../benches/support/totp.rs"]
mod totp;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use otpgate_config::Settings;
use otpgate_hsm::{Algorithm, Seed, TimeStep, TotpParams, UserId, Vault, VaultOptions};
use otpgate_proxy::{EnrollmentRecord, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Name of the pending-login cookie on plain HTTP.
const PENDING_COOKIE: &str = "otpgate_pending";
/// Logins in flight at once while pending logins are prepared.
const LOGIN_CONCURRENCY: usize = 16;
/// Connections opened at once by `idle`.
const CONNECT_CONCURRENCY: usize = 256;
/// Time limit of every request and connection attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line flags as `--name value` pairs.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: impl Iterator<Item = String>) -> Flags {
        let mut pairs = Vec::new();
        let mut args = args.peekable();
        while let Some(name) = args.next() {
            let name = name.strip_prefix("--").unwrap_or_else(|| panic!("expected a --flag, found {name:?}")).to_string();
            let value = args.next().unwrap_or_else(|| panic!("--{name} needs a value"));
            pairs.push((name, value));
        }
        Flags(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| panic!("--{name} is required"))
    }

    fn number(&self, name: &str, default: usize) -> usize {
        self.get(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("--{name} {v:?} is not a whole number")))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let flags = Flags::parse(args);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    match command.as_str() {
        "second-factor" => runtime.block_on(second_factor(&flags)),
        "idle" => runtime.block_on(idle(&flags)),
        "fixed-rate" => runtime.block_on(fixed_rate(&flags)),
        other => panic!("unknown command {other:?}; expected second-factor, idle or fixed-rate"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

/// A member enrolled for this run, with the seed the benchmark keeps to
/// compute codes, and the pending-login ticket once logged in.
struct Member {
    name: String,
    seed: Vec<u8>,
    ticket: String,
}

async fn second_factor(flags: &Flags) {
    let settings = Settings::load(&PathBuf::from(flags.required("config"))).expect("valid gateway configuration");
    let gateway = flags.required("gateway").trim_end_matches('/').to_string();
    assert!(gateway.starts_with("http://127.0.0.1:"), "--gateway must be http://127.0.0.1:PORT");
    let count = flags.number("members", 2_000);
    let concurrency = flags.number("concurrency", 32);
    let prefix = flags.get("prefix").unwrap_or("twofactor").to_string();
    let pin = settings.hsm.pin().expect("HSM PIN from the configuration's source");
    let vault = Arc::new(Vault::open(&VaultOptions::from(&settings.hsm), &pin).expect("open the gateway's vault"));
    let store = Store::connect(&settings.redis.url, &settings.redis.key_prefix, Duration::from_secs(5)).await.expect("connect to Redis");
    let params = TotpParams::default();

    // Enrollment, as `otpgate user import` does it, one seed per member.
    let started = Instant::now();
    let mut members = Vec::with_capacity(count);
    for index in 0..count {
        let name = format!("{prefix}-{index:06}");
        let seed: [u8; 20] = rand::random();
        let sealing_vault = vault.clone();
        let (user, seed_copy) = (name.clone(), seed.to_vec());
        let bytes = tokio::task::spawn_blocking(move || {
            let sealed = sealing_vault
                .seal(&UserId(user.clone()), &Seed::from_bytes(seed_copy).expect("20-byte seed"), Algorithm::SHA1)
                .expect("seal seed");
            EnrollmentRecord::new(&user, &sealed, &params, unix_now(), Vec::new()).seal(&sealing_vault).expect("record MAC")
        })
        .await
        .expect("sealing task");
        store.put_record(&name, &bytes, None).await.expect("write record");
        members.push(Member { name, seed: seed.to_vec(), ticket: String::new() });
    }
    let seed_hex = data_encoding::HEXLOWER.encode(&members[0].seed);
    if let Some(oathtool) = totp::oathtool_hotp(&seed_hex, 1, params.digits) {
        assert_eq!(oathtool, totp::hotp_sha1(&members[0].seed, 1, params.digits), "oathtool and OpenSSL codes differ");
    }
    println!("enrolled {count} members in {:.1} s", started.elapsed().as_secs_f64());

    // Pending logins: the upstream accepts any password for any name.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(concurrency.max(LOGIN_CONCURRENCY))
        .build()
        .expect("HTTP client");
    let started = Instant::now();
    let tickets: Vec<String> = futures::stream::iter(members.iter().map(|m| m.name.clone()))
        .map(|name| {
            let client = client.clone();
            let url = format!("{gateway}/login");
            async move {
                let response = client
                    .post(url)
                    .form(&[("username", name.as_str()), ("password", "any-password")])
                    .send()
                    .await
                    .expect("login request");
                assert_eq!(response.status().as_u16(), 303, "login of {name} was not held for the second factor");
                response
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| v.strip_prefix(&format!("{PENDING_COOKIE}=")).map(|rest| rest.split(';').next().unwrap_or("").to_string()))
                    .unwrap_or_else(|| panic!("login of {name} set no {PENDING_COOKIE} cookie"))
            }
        })
        .buffered(LOGIN_CONCURRENCY)
        .collect()
        .await;
    for (member, ticket) in members.iter_mut().zip(tickets) {
        member.ticket = ticket;
    }
    println!("prepared {count} pending logins in {:.1} s", started.elapsed().as_secs_f64());

    // Codes for the current step; the gateway accepts one step either side,
    // so a phase that crosses a step boundary still passes.
    let step = params.step_at(unix_now()).0;
    let jobs: Arc<Vec<(String, String)>> = Arc::new(
        members
            .iter()
            .map(|m| (m.ticket.clone(), totp::hotp_sha1(&m.seed, step, params.digits)))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let watched: Vec<(&str, u32)> = ["gateway-pid", "redis-pid"]
        .into_iter()
        .filter_map(|flag| flags.get(flag).map(|pid| (flag, pid.parse().unwrap_or_else(|_| panic!("--{flag} {pid:?} is not a process id")))))
        .collect();
    let ticks_before: Vec<u64> = watched.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, jobs, next, gateway) = (client.clone(), jobs.clone(), next.clone(), gateway.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((ticket, code)) = jobs.get(index) else { break };
                let sent = Instant::now();
                let response = client
                    .post(format!("{gateway}/_otpgate/challenge"))
                    .header("cookie", format!("{PENDING_COOKIE}={ticket}"))
                    .json(&serde_json::json!({ "code": code }))
                    .send()
                    .await;
                let ok = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        status == 200 && body.get("ok").and_then(|v| v.as_bool()) == Some(true)
                    }
                    Err(_) => false,
                };
                latencies.push(sent.elapsed());
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut failures = 0;
    for worker in workers {
        let (mut worker_latencies, worker_failures) = worker.await.expect("worker task");
        latencies.append(&mut worker_latencies);
        failures += worker_failures;
    }
    let wall = started.elapsed();
    for ((flag, pid), before) in watched.iter().zip(ticks_before) {
        let name = flag.trim_end_matches("-pid");
        println!("RESULT twofactor_{name}_cpu_ticks={}", cpu_ticks(*pid) - before);
    }
    latencies.sort();
    let http_rate = count as f64 / wall.as_secs_f64();
    println!(
        "{count} second-factor verifications over HTTP in {:.2} s: {http_rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {failures} failed",
        wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    assert_eq!(failures, 0, "every code was valid and every member was used once, so none may fail");

    // The HSM layer alone on the same token: verify with a code that
    // matches none of the three steps, as benches/hsm_verify.rs does.
    let record = EnrollmentRecord::open(&members[0].name, &store.record(&members[0].name).await.expect("read").expect("record"), &vault).expect("open record");
    let sealed = record.sealed().expect("sealed seed");
    let now = unix_now();
    let wrong = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|c| (step - 1..=step + 1).all(|s| totp::hotp_sha1(&members[0].seed, s, 6) != *c))
        .expect("a code that matches no step");
    let iterations = flags.number("hsm-iterations", 20_000);
    let mut hsm_rates = Vec::new();
    for threads in [1usize, 2] {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (vault, sealed, wrong) = (vault.clone(), sealed.clone(), wrong.clone());
                std::thread::spawn(move || {
                    for _ in 0..iterations / threads {
                        let matched = vault.verify(&sealed, &params, &wrong, now, 1, None::<TimeStep>).expect("HSM verification");
                        assert!(matched.is_none());
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("HSM thread");
        }
        let rate = (iterations / threads * threads) as f64 / started.elapsed().as_secs_f64();
        println!("Vault::verify alone, {threads} thread(s): {rate:.0}/s");
        hsm_rates.push(rate);
    }
    println!("RESULT twofactor_http_per_sec={http_rate:.0}");
    println!("RESULT twofactor_http_p50_ms={:.2}", percentile(&latencies, 0.5).as_secs_f64() * 1e3);
    println!("RESULT twofactor_http_p99_ms={:.2}", percentile(&latencies, 0.99).as_secs_f64() * 1e3);
    println!("RESULT twofactor_hsm1_per_sec={:.0}", hsm_rates[0]);
    println!("RESULT twofactor_hsm2_per_sec={:.0}", hsm_rates[1]);
}

/// Returns the user plus system CPU time of process `pid` so far, in clock
/// ticks (`getconf CLK_TCK`). Field 2 of `/proc/PID/stat` may contain
/// spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("reading /proc/{pid}/stat failed: {e}"));
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("").split(' ').collect();
    let field = |index: usize| fields.get(index).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Sends one request on `stream` and reads one response with a
/// `content-length` body. Returns the status code.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<u16> {
    stream.write_all(request).await?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before the response ended"));
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = response.parse(&buffer) {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            let status = response.code.unwrap_or(0);
            while buffer.len() < head_len + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed inside the body"));
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

async fn idle(flags: &Flags) {
    let addr = flags.required("addr").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "--addr must be 127.0.0.1:PORT");
    let connections = flags.number("connections", 10_000);
    let hold = Duration::from_secs(flags.number("hold-secs", 10) as u64);
    let path = flags.get("path").unwrap_or("/");
    let header = flags.get("header").map(|h| format!("{h}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{header}\r\n").into_bytes();

    let started = Instant::now();
    let results: Vec<Result<TcpStream, String>> = futures::stream::iter(0..connections)
        .map(|_| {
            let (addr, request) = (addr.clone(), request.clone());
            async move {
                let attempt = async {
                    let mut stream = TcpStream::connect(&addr).await.map_err(|e| format!("connect: {e}"))?;
                    let status = exchange(&mut stream, &request).await.map_err(|e| format!("request: {e}"))?;
                    if status != 200 {
                        return Err(format!("status {status}"));
                    }
                    Ok(stream)
                };
                tokio::time::timeout(REQUEST_TIMEOUT, attempt).await.unwrap_or_else(|_| Err("timed out".into()))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut streams = Vec::with_capacity(connections);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for result in results {
        match result {
            Ok(stream) => streams.push(stream),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    for (error, times) in &errors {
        eprintln!("{times} connections failed: {error}");
    }
    println!("ready {} connections in {:.1} s", streams.len(), started.elapsed().as_secs_f64());
    std::io::stdout().flush().expect("stdout is writable");

    tokio::time::sleep(hold).await;
    let mut open = 0;
    for stream in &streams {
        let mut probe = [0u8; 1];
        // WouldBlock: nothing to read and not closed, so the server keeps it.
        if matches!(stream.try_read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    println!("RESULT idle_connected={}", streams.len());
    println!("RESULT idle_open_after_hold={open}");
}

async fn fixed_rate(flags: &Flags) {
    let addr = flags.required("addr").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "--addr must be 127.0.0.1:PORT");
    let rate = flags.number("rate", 10_000).max(1);
    let connections = flags.number("connections", 50).clamp(1, rate);
    let duration = Duration::from_secs(flags.number("secs", 5).clamp(1, 600) as u64);
    let path = flags.get("path").unwrap_or("/");
    let header = flags.get("header").map(|h| format!("{h}\r\n")).unwrap_or_default();
    let request = Arc::new(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{header}\r\n").into_bytes());

    // Each connection sends every `interval`; the connections are spread
    // evenly over one interval.
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let per_connection = (duration.as_secs_f64() / interval.as_secs_f64()) as u32;
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let failures = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            let (addr, request, failures) = (addr.clone(), request.clone(), failures.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_connection as usize);
                let Ok(Ok(mut stream)) = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(&addr)).await else {
                    failures.fetch_add(per_connection as usize, Ordering::Relaxed);
                    return latencies;
                };
                let offset = interval.mul_f64(index as f64 / connections as f64);
                for k in 0..per_connection {
                    let scheduled = start + offset + interval * k;
                    // Latency counts from the scheduled time when the previous
                    // response made this request late, and from the wake-up
                    // otherwise: tokio's timer fires up to 1 ms late, which is
                    // the client's delay, not the server's.
                    let origin = if tokio::time::Instant::now() >= scheduled {
                        scheduled
                    } else {
                        tokio::time::sleep_until(scheduled).await;
                        tokio::time::Instant::now()
                    };
                    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, &request)).await {
                        Ok(Ok(200)) => latencies.push(origin.elapsed()),
                        _ => {
                            // The connection may be unusable now; the rest of its schedule counts as failed.
                            failures.fetch_add((per_connection - k) as usize, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a connection task panicked"));
    }
    latencies.sort_unstable();
    let failed = failures.load(Ordering::Relaxed);
    assert!(!latencies.is_empty(), "no request to {addr} succeeded; {failed} failed");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} requests at {rate}/s over {connections} connections: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, {failed} failed",
        latencies.len(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 0.999)),
    );
    println!("RESULT fixed_rate_completed={}", latencies.len());
    println!("RESULT fixed_rate_failed={failed}");
    println!("RESULT fixed_rate_p50_ms={:.3}", ms(percentile(&latencies, 0.50)));
    println!("RESULT fixed_rate_p99_ms={:.3}", ms(percentile(&latencies, 0.99)));
    println!("RESULT fixed_rate_p999_ms={:.3}", ms(percentile(&latencies, 0.999)));
}
