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
    pub config: PathBuf,
    gateway: Option<Process>,
    _app: Process,
}

impl Stack {
    /// Starts everything; `extra` is appended to the gateway configuration.
    pub fn start(extra: &str) -> Stack {
        let hsm = SoftHsm::create(&[GATEWAY_TOKEN]);
        let redis = Redis::start(hsm.dir());
        let (app, app_port) = services::start_demo_app();
        let gateway_port = services::free_port();
        let config = services::write_config(hsm.dir(), gateway_port, app_port, &redis.url(), GATEWAY_TOKEN, extra);
        let init = services::otpgate(&hsm, &["hsm", "init", "--config", config.to_str().unwrap()]);
        assert!(init.status.success(), "otpgate hsm init failed: {}", String::from_utf8_lossy(&init.stderr));
        let mut stack = Stack { hsm, redis, gateway_port, config, gateway: None, _app: app };
        stack.start_gateway();
        stack
    }

    /// Starts (or restarts) the gateway process.
    pub fn start_gateway(&mut self) {
        self.gateway = None;
        self.gateway = Some(services::start_gateway(&self.hsm, &self.config, self.gateway_port));
    }

    /// The gateway's base URL.
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

    /// A new browser: a client with its own cookie jar that does not follow redirects.
    pub fn browser(&self) -> Browser {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .build()
            .unwrap();
        Browser { client, jar, base: self.url("") }
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
