//! Verification latency with few and with many enrolled members.
//!
//! Run with `cargo bench --bench scale` (or through `benches/run.sh`).
//! The bench creates a SoftHSM token in a temporary directory and starts
//! two `redis-server` processes on free loopback ports without
//! persistence. It enrolls `--small` members (default 1,000) in one and
//! `--large` members (default 1,000,000) in the other, in `wrapped` mode.
//! Then it times the gateway's verification path for random members of
//! both, interleaved one by one so both see the same machine load:
//!
//! `Store::count_and_record` (the member's attempt counter, record and used
//! step in one round trip), `EnrollmentRecord::open` (one HMAC-SHA256
//! `C_Sign`), `Vault::verify` (`C_UnwrapKey`, three `C_Sign`,
//! `C_DestroyObject`) and `Store::consume_step`.
//!
//! The vault calls run inline on the measuring thread; the gateway runs
//! them through `spawn_blocking`, which adds the same cost to both sizes.
//!
//! Enrollment: one seed is wrapped once, and every member gets a record
//! with that blob, its own name and its own record MAC (one `C_Sign` each),
//! because the MAC covers the member name and a copied record is rejected.
//! Every member also gets a used time step, as after a first login. Redis
//! writes go through `Store::put_record`, many in flight on the one
//! multiplexed connection.
//!
//! Every verification uses a time one step later than the one before, and
//! a code computed for that step with OpenSSL's HMAC (checked against
//! `oathtool`), so each code matches, the replay check passes and
//! `consume_step` writes, however often a member is drawn.
//!
//! Output: a summary table, and `RESULT key=value` lines for `run.sh`.

#[path = "support/totp.rs"]
mod totp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use otpgate_config::Secret;
use otpgate_hsm::{Algorithm, KeyMode, SealedSeed, Seed, TimeStep, TotpParams, Vault, VaultOptions};
use otpgate_proxy::store::RateKey;
use otpgate_proxy::{EnrollmentRecord, Store};
use rand::Rng;

/// Path of the SoftHSM library that Debian's softhsm2 package installs.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "otpgate-scale";
const USER_PIN: &str = "4711-scale";
const SO_PIN: &str = "0815-scale";
/// Key prefix the gateway uses by default.
const KEY_PREFIX: &str = "otpgate:";
const WINDOW: u64 = 1;
/// Window of the per-member attempt counter, as the gateway's default
/// `rate_limit.second_factor_per_user` (the count is not checked here).
const ATTEMPT_WINDOW_SECS: u64 = 900;
/// Records sealed per batch handed from a sealing thread to the writer.
const BATCH: usize = 1_000;
/// `Store::put_record` calls in flight at once on the one connection.
const IN_FLIGHT: usize = 256;

struct Options {
    small: usize,
    large: usize,
    rounds: usize,
    samples: usize,
    sealing_threads: usize,
}

impl Options {
    /// Parses `--small N --large N --rounds N --samples N --sealing-threads N`.
    /// `cargo bench` appends `--bench`, which is ignored.
    fn parse() -> Options {
        let mut options = Options { small: 1_000, large: 1_000_000, rounds: 5, samples: 5_000, sealing_threads: 2 };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> usize {
                args.next()
                    .and_then(|v| v.replace('_', "").parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a positive whole number"))
            };
            match arg.as_str() {
                "--small" => options.small = number("--small"),
                "--large" => options.large = number("--large"),
                "--rounds" => options.rounds = number("--rounds"),
                "--samples" => options.samples = number("--samples"),
                "--sealing-threads" => options.sealing_threads = number("--sealing-threads").max(1),
                "--bench" => {}
                other => panic!("unknown argument {other:?}; expected --small, --large, --rounds, --samples or --sealing-threads"),
            }
        }
        options
    }
}

/// A redis-server child process, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(dir: &Path) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on port {port} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisServer { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a SoftHSM configuration with one token in `dir` and points
/// `SOFTHSM2_CONF` at it, before the first `C_Initialize` reads it.
fn create_token(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).expect("create token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()))
        .expect("write softhsm2.conf");
    let output = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin", SO_PIN, "--pin", USER_PIN])
        .output()
        .expect("softhsm2-util is installed (Debian package softhsm2)");
    assert!(output.status.success(), "softhsm2-util --init-token failed: {}", String::from_utf8_lossy(&output.stderr));
    std::env::set_var("SOFTHSM2_CONF", &conf);
    conf
}

/// Reads `used_memory` from `INFO memory`, in bytes.
async fn used_memory(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("Redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("Redis connection");
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut connection).await.expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

fn member_name(index: usize) -> String {
    format!("member{index:07}")
}

/// Cost of enrolling `count` members.
struct Enrollment {
    count: usize,
    wall: Duration,
    /// Summed time the sealing threads spent in `EnrollmentRecord::seal`.
    sealing: Duration,
    bytes_per_member: f64,
    record_bytes: usize,
}

/// Enrolls `count` members in the Redis that `target` (its store and URL)
/// names: sealing threads build the records while the runtime writes
/// finished batches.
fn enroll(runtime: &tokio::runtime::Runtime, vault: &Arc<Vault>, target: (&Store, &str), sealed: &SealedSeed, count: usize, threads: usize, used: u64) -> Enrollment {
    let (store, url) = target;
    let before = runtime.block_on(used_memory(url));
    let started = Instant::now();
    let params = TotpParams::default();
    let created = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let (sender, receiver) = mpsc::sync_channel::<Vec<(String, Vec<u8>)>>(16);
    let mut workers = Vec::new();
    for thread in 0..threads {
        let sender = sender.clone();
        let vault = vault.clone();
        let sealed = sealed.clone();
        workers.push(std::thread::spawn(move || {
            let mut busy = Duration::ZERO;
            let mut start = thread * BATCH;
            while start < count {
                let end = (start + BATCH).min(count);
                let began = Instant::now();
                let batch: Vec<(String, Vec<u8>)> = (start..end)
                    .map(|index| {
                        let name = member_name(index);
                        let record = EnrollmentRecord::new(&name, &sealed, &params, created, Vec::new());
                        let bytes = record.seal(&vault).expect("record MAC in the HSM");
                        (name, bytes)
                    })
                    .collect();
                busy += began.elapsed();
                sender.send(batch).expect("writer is running");
                start += threads * BATCH;
            }
            busy
        }));
    }
    drop(sender);

    let mut record_bytes = 0;
    runtime.block_on(async {
        while let Ok(batch) = receiver.recv() {
            record_bytes = batch[0].1.len();
            futures::stream::iter(batch)
                .map(|(name, bytes)| async move { store.put_record(&name, &bytes, Some(used)).await })
                .buffer_unordered(IN_FLIGHT)
                .for_each(|written| async move { written.expect("Redis write") })
                .await;
        }
    });
    let sealing = workers.into_iter().map(|w| w.join().expect("sealing thread")).sum();
    let wall = started.elapsed();
    let after = runtime.block_on(used_memory(url));
    Enrollment { count, wall, sealing, bytes_per_member: (after.saturating_sub(before)) as f64 / count as f64, record_bytes }
}

/// Time of one verification, split into its Redis and HSM parts.
#[derive(Clone, Copy)]
struct Timing {
    total: Duration,
    redis_read: Duration,
    hsm: Duration,
    redis_write: Duration,
}

/// Runs the gateway's verification path once for `user`, at `unix_time`,
/// with a code that matches that time step: one round trip that counts
/// the attempt and reads the record and the used step, the record MAC and
/// the verification, and the replay script.
async fn verify_once(store: &Store, vault: &Vault, user: &str, code: &str, unix_time: u64) -> Timing {
    let started = Instant::now();
    let counter = (&RateKey::SecondFactorUser(user), ATTEMPT_WINDOW_SECS);
    let (_, bytes, used) = store.count_and_record(counter, user).await.expect("Redis read");
    let bytes = bytes.expect("record exists");
    let read = Instant::now();
    let record = EnrollmentRecord::open(user, &bytes, vault).expect("record MAC matches");
    let params = record.params().expect("record parameters");
    let sealed = record.sealed().expect("sealed seed");
    let step = vault
        .verify(&sealed, &params, code, unix_time, WINDOW, used.map(TimeStep))
        .expect("HSM verification")
        .expect("code matches its time step");
    let checked = Instant::now();
    let accepted = store.consume_step(user, step.0).await.expect("Redis write");
    assert!(accepted, "step {} of {user} was rejected as replayed", step.0);
    let done = Instant::now();
    Timing { total: done - started, redis_read: read - started, hsm: checked - read, redis_write: done - checked }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

/// Percentiles of one size in one round, in microseconds.
struct RoundStats {
    p50: f64,
    p99: f64,
    read_p50: f64,
    hsm_p50: f64,
    write_p50: f64,
}

fn stats(timings: &[Timing]) -> RoundStats {
    let sorted = |part: fn(&Timing) -> Duration| {
        let mut values: Vec<Duration> = timings.iter().map(part).collect();
        values.sort();
        values
    };
    let total = sorted(|t| t.total);
    RoundStats {
        p50: micros(percentile(&total, 0.5)),
        p99: micros(percentile(&total, 0.99)),
        read_p50: micros(percentile(&sorted(|t| t.redis_read), 0.5)),
        hsm_p50: micros(percentile(&sorted(|t| t.hsm), 0.5)),
        write_p50: micros(percentile(&sorted(|t| t.redis_write), 0.5)),
    }
}

fn main() {
    let options = Options::parse();
    let dir = tempfile::Builder::new().prefix("otpgate-scale-").tempdir().expect("temporary directory");
    create_token(dir.path());
    let vault = Arc::new(
        Vault::open(
            &VaultOptions { module: MODULE.into(), token_label: TOKEN_LABEL.into(), key_mode: KeyMode::Wrapped, pool_size: 4 },
            &Secret::new(USER_PIN.into()),
        )
        .expect("open vault"),
    );
    vault.init_keys().expect("create vault keys");

    // One seed, wrapped once, shared by every member's record.
    let seed_bytes = vault.random(20).expect("random seed");
    let seed_hex = data_encoding::HEXLOWER.encode(&seed_bytes);
    let sealed = vault.seal_wrapped(&Seed::from_bytes(seed_bytes.clone()).expect("20-byte seed"), Algorithm::SHA1).expect("wrap seed");
    let params = TotpParams::default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let first_step = params.step_at(now).0;
    for counter in [first_step, first_step + 1] {
        let ours = totp::hotp_sha1(&seed_bytes, counter, params.digits);
        assert_eq!(vault.hotp(&sealed, &params, counter).expect("HOTP in the HSM"), ours, "vault and OpenSSL codes differ");
        if let Some(oathtool) = totp::oathtool_hotp(&seed_hex, counter, params.digits) {
            assert_eq!(oathtool, ours, "oathtool and OpenSSL codes differ");
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let small_redis = RedisServer::start(dir.path());
    let large_redis = RedisServer::start(dir.path());
    let connect = |url: String| runtime.block_on(Store::connect(&url, KEY_PREFIX, Duration::from_secs(5))).expect("connect to Redis");
    let small_store = connect(small_redis.url());
    let large_store = connect(large_redis.url());

    let used = first_step;
    println!("enrolling {} members ...", options.small);
    let small = enroll(&runtime, &vault, (&small_store, &small_redis.url()), &sealed, options.small, options.sealing_threads, used);
    println!("enrolling {} members ...", options.large);
    let large = enroll(&runtime, &vault, (&large_store, &large_redis.url()), &sealed, options.large, options.sealing_threads, used);
    for e in [&small, &large] {
        println!(
            "enrolled {} members in {:.1} s ({:.0} records/s); sealing threads busy {:.1} s in total; {:.0} bytes of Redis memory per member; stored record {} bytes",
            e.count,
            e.wall.as_secs_f64(),
            e.count as f64 / e.wall.as_secs_f64(),
            e.sealing.as_secs_f64(),
            e.bytes_per_member,
            e.record_bytes
        );
    }

    // Each verification gets its own, later time step.
    let mut step = first_step + 10;
    let mut rng = rand::thread_rng();
    let mut next_case = |members: usize| {
        step += 1;
        let member = member_name(rng.gen_range(0..members));
        (member, totp::hotp_sha1(&seed_bytes, step, params.digits), step * params.period)
    };

    // Warm-up: fill caches and the key-handle cache, unmeasured.
    runtime.block_on(async {
        for _ in 0..500 {
            for (store, members) in [(&small_store, options.small), (&large_store, options.large)] {
                let (user, code, time) = next_case(members);
                verify_once(store, &vault, &user, &code, time).await;
            }
        }
    });

    let mut rounds = Vec::new();
    for round in 0..options.rounds {
        let mut small_timings = Vec::with_capacity(options.samples);
        let mut large_timings = Vec::with_capacity(options.samples);
        runtime.block_on(async {
            for sample in 0..options.samples {
                let small_case = next_case(options.small);
                let large_case = next_case(options.large);
                // Alternate which size goes first.
                if sample % 2 == 0 {
                    small_timings.push(verify_once(&small_store, &vault, &small_case.0, &small_case.1, small_case.2).await);
                    large_timings.push(verify_once(&large_store, &vault, &large_case.0, &large_case.1, large_case.2).await);
                } else {
                    large_timings.push(verify_once(&large_store, &vault, &large_case.0, &large_case.1, large_case.2).await);
                    small_timings.push(verify_once(&small_store, &vault, &small_case.0, &small_case.1, small_case.2).await);
                }
            }
        });
        let (s, l) = (stats(&small_timings), stats(&large_timings));
        println!(
            "round {}: p50 {:.1} µs vs {:.1} µs (ratio {:.3}), p99 {:.1} µs vs {:.1} µs",
            round + 1,
            s.p50,
            l.p50,
            l.p50 / s.p50,
            s.p99,
            l.p99
        );
        rounds.push((s, l));
    }

    let column = |pick: fn(&(RoundStats, RoundStats)) -> f64| median(&mut rounds.iter().map(pick).collect::<Vec<_>>());
    let small_p50 = column(|r| r.0.p50);
    let large_p50 = column(|r| r.1.p50);
    let small_p99 = column(|r| r.0.p99);
    let large_p99 = column(|r| r.1.p99);
    let ratio_p50 = column(|r| r.1.p50 / r.0.p50);
    let ratio_p99 = column(|r| r.1.p99 / r.0.p99);

    println!();
    println!("median of {} rounds, {} verifications per size and round", options.rounds, options.samples);
    println!("| Members | p50 | p99 | Redis reads p50 | HSM p50 | Redis write p50 | Redis memory per member |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (e, p50, p99, pick) in [
        (&small, small_p50, small_p99, 0usize),
        (&large, large_p50, large_p99, 1usize),
    ] {
        let part = |f: fn(&RoundStats) -> f64| median(&mut rounds.iter().map(|r| if pick == 0 { f(&r.0) } else { f(&r.1) }).collect::<Vec<_>>());
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.0} B |",
            e.count,
            p50,
            p99,
            part(|s| s.read_p50),
            part(|s| s.hsm_p50),
            part(|s| s.write_p50),
            e.bytes_per_member
        );
    }
    println!("p50 ratio (large / small), median of per-round ratios: {ratio_p50:.3}; p99 ratio: {ratio_p99:.3}");

    println!("RESULT scale_small_members={}", small.count);
    println!("RESULT scale_large_members={}", large.count);
    println!("RESULT scale_small_p50_us={small_p50:.1}");
    println!("RESULT scale_large_p50_us={large_p50:.1}");
    println!("RESULT scale_small_p99_us={small_p99:.1}");
    println!("RESULT scale_large_p99_us={large_p99:.1}");
    println!("RESULT scale_p50_ratio={ratio_p50:.3}");
    println!("RESULT scale_p99_ratio={ratio_p99:.3}");
    println!("RESULT scale_small_bytes_per_member={:.0}", small.bytes_per_member);
    println!("RESULT scale_large_bytes_per_member={:.0}", large.bytes_per_member);
    println!("RESULT scale_large_enroll_secs={:.1}", large.wall.as_secs_f64());
    println!("RESULT scale_large_sealing_busy_secs={:.1}", large.sealing.as_secs_f64());
    drop((small_store, large_store));
    drop((small_redis, large_redis));
}
