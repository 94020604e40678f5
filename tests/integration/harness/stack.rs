//! One complete deployment for a test: SoftHSM token, Redis, demo
//! application and gateway, plus an HTTP client with a cookie jar.

use std::path::PathBuf;
use std::sync::Arc;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::redirect::Policy;

use super::services::{self, Process, Redis};
use super::softhsm::SoftHsm;

pub const GATEWAY_TOKEN: &str = "otpgate-gateway";

/// A running deployment. Dropping it stops every process.
pub struct Stack {
    pub hsm: SoftHsm,
    pub redis: Redis,
    pub gateway_port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
    gateway: Option<Process>,
    _app: Process,
}

impl Stack {
    /// Starts everything; `extra` is appended to the gateway configuration.
    pub fn start(extra: &str) -> Stack {
        Stack::start_with("", extra)
    }

    /// Starts everything; `app_keys` are added to the `[app]` table and
    /// `extra` is appended to the gateway configuration.
    pub fn start_with(app_keys: &str, extra: &str) -> Stack {
        let hsm = SoftHsm::create(&[GATEWAY_TOKEN]);
        let redis = Redis::start(hsm.dir());
        let (app, app_port) = services::start_demo_app();
        let gateway_port = services::free_port();
        let admin_port = services::free_port();
        let config = services::write_config(hsm.dir(), (gateway_port, app_port, admin_port), &redis.url(), GATEWAY_TOKEN, app_keys, extra);
        let init = services::otpgate(&hsm, &["hsm", "init", "--config", config.to_str().unwrap()]);
        assert!(init.status.success(), "otpgate hsm init failed: {}", String::from_utf8_lossy(&init.stderr));
        let mut stack = Stack { hsm, redis, gateway_port, admin_port, config, gateway: None, _app: app };
        stack.start_gateway();
        stack
    }

    /// Starts (or restarts) the gateway process.
    pub fn start_gateway(&mut self) {
        self.gateway = None;
        self.gateway = Some(services::start_gateway(&self.hsm, &self.config, self.gateway_port));
    }

    /// Starts a second gateway instance on the same Redis and token, as a
    /// deployment behind a load balancer has. Returns it with its base URL.
    pub fn second_gateway(&self) -> (Process, String) {
        let port = services::free_port();
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace(&format!("127.0.0.1:{}", self.gateway_port), &format!("127.0.0.1:{port}"))
            .replace(&format!("127.0.0.1:{}", self.admin_port), &format!("127.0.0.1:{}", services::free_port()));
        let config = self.config.with_file_name("second.toml");
        std::fs::write(&config, text).unwrap();
        let process = services::start_gateway(&self.hsm, &config, port);
        (process, format!("http://127.0.0.1:{port}"))
    }

    /// Returns a URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Returns a URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    /// Runs an `otpgate` subcommand against this deployment's config.
    pub fn otpgate(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        services::otpgate(&self.hsm, &all)
    }

    /// Imports a base32 TOTP secret for `user` and asserts success.
    pub fn import(&self, user: &str, secret: &str) {
        let out = self.otpgate(&["user", "import", user, "--secret", secret]);
        assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Creates a browser: a client with its own cookie jar that does not follow redirects.
    pub fn browser(&self) -> Browser {
        self.browser_at(&self.url(""))
    }

    /// Creates a browser whose requests go to `base`.
    pub fn browser_at(&self, base: &str) -> Browser {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .build()
            .unwrap();
        Browser { client, jar, base: base.to_string() }
    }
}

/// An HTTP client with a cookie jar.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<Jar>,
    pub base: String,
}

impl Browser {
    /// Returns the cookies the jar would send to the gateway.
    pub fn cookies(&self) -> String {
        let url = self.base.parse().unwrap();
        self.jar
            .cookies(&url)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn has_cookie(&self, name: &str) -> bool {
        self.cookies().split(';').any(|pair| pair.trim().starts_with(&format!("{name}=")))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
    }

    /// Submits the demo application's login form, CSRF token included.
    pub async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        let page = self.get("/login").await.text().await.unwrap();
        let csrf = page
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("login form has a csrf_token field")
            .to_string();
        self.client
            .post(format!("{}/login", self.base))
            .header("accept", "text/html")
            .form(&[("username", user), ("password", password), ("csrf_token", &csrf)])
            .send()
            .await
            .unwrap()
    }

    /// Returns the CSRF token of a gateway page.
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await.text().await.unwrap();
        csrf_in(&page)
    }

    /// Posts a gateway form with its CSRF token taken from `page_path`.
    pub async fn post_form(&self, page_path: &str, action: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let csrf = self.csrf(page_path).await;
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf_token", &csrf));
        self.client
            .post(format!("{}{action}", self.base))
            .header("accept", "text/html")
            .form(&all)
            .send()
            .await
            .unwrap()
    }

    /// Submits the code that confirms an enrollment, with the CSRF token
    /// of the page that showed the seed.
    pub async fn submit_enrollment(&self, code: &str, csrf: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/_otpgate/enroll/verify", self.base))
            .form(&[("code", code), ("csrf_token", csrf)])
            .send()
            .await
            .unwrap()
    }

    /// Submits a backup code on the backup challenge page.
    pub async fn submit_backup(&self, code: &str) -> reqwest::Response {
        self.post_form("/_otpgate/challenge/backup", "/_otpgate/challenge/backup", &[("backup_code", code)]).await
    }

    /// Submits a code on the challenge page.
    pub async fn submit_code(&self, code: &str) -> reqwest::Response {
        let page = self.get("/_otpgate/challenge").await.text().await.unwrap();
        let csrf = page
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_string();
        self.client
            .post(format!("{}/_otpgate/challenge", self.base))
            .header("accept", "text/html")
            .form(&[("code", code), ("csrf_token", &csrf)])
            .send()
            .await
            .unwrap()
    }
}

/// Extracts the `csrf_token` hidden field of an HTML page.
pub fn csrf_in(page: &str) -> String {
    page.split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_string()
}

/// Extracts the backup codes from the page that shows them.
pub fn backup_codes_in(page: &str) -> Vec<String> {
    page.split("<li><code>")
        .skip(1)
        .filter_map(|rest| rest.split("</code>").next())
        .map(str::to_string)
        .collect()
}
