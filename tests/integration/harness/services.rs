//! Redis, the demo application and the gateway as child processes on
//! free loopback ports. Every process is killed when its handle drops.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::softhsm::{SoftHsm, MODULE, USER_PIN};

/// Bearer token of the admin API in test deployments.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Returns a port that is free on 127.0.0.1 now and that no other test of
/// this process was given. Ports come from a counter below Linux's
/// ephemeral range (32768 and up), so neither parallel tests nor outgoing
/// connections take the same port between this check and the server's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (std::process::id() % 6_000) as u16, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `port` (at most 30 s).
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on port {port} within 30 s");
}

/// A child process killed on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server with append-only persistence in its own directory.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let mut redis = Redis { port: free_port(), dir: dir.to_path_buf(), process: None };
        redis.restart();
        redis
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian package redis-server)");
        self.process = Some(Process(child));
        wait_for_port(self.port, "redis-server");
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// Returns the path of a binary built by cargo for this test run.
pub fn binary(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join(name)
}

/// Starts the demo application and returns it with its port.
pub fn start_demo_app() -> (Process, u16) {
    build_demo_app();
    let mut child = Command::new(binary("demo-app"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo-app is built (cargo test --workspace builds it)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected demo-app banner {line:?}"));
    (Process(child), port)
}

/// Writes a gateway configuration and returns its path.
/// `app_keys` go into the `[app]` table; `extra` is appended as whole tables.
pub fn write_config(dir: &Path, ports: (u16, u16, u16), redis_url: &str, token: &str, app_keys: &str, extra: &str) -> PathBuf {
    let (gateway_port, app_port, admin_port) = ports;
    // The demo app shows the member name from this header.
    let identity = if app_keys.contains("identity_header") { "" } else { "identity_header = \"X-Otpgate-User\"\n" };
    let config = format!(
        r#"
[listen]
http = "127.0.0.1:{gateway_port}"

[upstream]
address = "127.0.0.1:{app_port}"

[app]
session_cookie = "sessionid"
public_paths = ["/", "/about", "/static/"]
{identity}{app_keys}
[[app.login]]
path = "/login"
body = "form"
success_status = [302, 303]
[[app.login]]
path = "/api/login"
body = "json"
success_status = [200]

[redis]
url = "{redis_url}"

[hsm]
module = "{MODULE}"
token_label = "{token}"
pin_env = "OTPGATE_TEST_HSM_PIN"

[admin]
listen = "127.0.0.1:{admin_port}"
token_env = "OTPGATE_TEST_ADMIN_TOKEN"

{extra}
"#
    );
    let path = dir.join("otpgate.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Runs an `otpgate` subcommand with the test token's environment.
pub fn otpgate(hsm: &SoftHsm, args: &[&str]) -> std::process::Output {
    Command::new(binary("otpgate"))
        .args(args)
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("OTPGATE_TEST_HSM_PIN", USER_PIN)
        .env("OTPGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

/// Starts `otpgate serve` and waits for its listener.
pub fn start_gateway(hsm: &SoftHsm, config: &Path, port: u16) -> Process {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    let child = Command::new(binary("otpgate"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("OTPGATE_TEST_HSM_PIN", USER_PIN)
        .env("OTPGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(port, "otpgate serve");
    Process(child)
}

/// Builds the demo application binary once per test run: `cargo test`
/// builds only the binaries of the package under test.
pub fn build_demo_app() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "otpgate-demo-app", "--bin", "demo-app"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building demo-app failed");
    });
}
