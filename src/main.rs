//! The `otpgate` command: the gateway server and its operator commands.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use otpgate_config::{Algorithm, LogFormat, Settings};
use otpgate_hsm::{Seed, TotpParams, UserId, Vault, VaultOptions};
use otpgate_proxy::admin::Admin;
use otpgate_proxy::{EnrollmentRecord, Gateway, Store};

/// mimalloc instead of glibc's allocator: pingora allocates dozens of small
/// objects per request, and a pass-through comparison measured 5 to 15 %
/// more requests per second with it, for about 10 MiB more RSS
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "otpgate", version, about = "Two-factor authentication gateway in front of an unchanged web application")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Path of the TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print the first error.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage the HSM token.
    Hsm {
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Manage one member's second factor; each action writes an audit log line.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Create the wrapping, record and blob keys that are missing (idempotent).
    Init {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the keys and check the mechanisms the gateway needs.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Show whether a member has 2FA.
    Status {
        user: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a member's 2FA (the member lost phone and backup codes).
    Reset {
        user: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Import a TOTP seed from an earlier 2FA system.
    Import {
        user: String,
        #[arg(long, short)]
        config: PathBuf,
        /// The seed in base32; case, spaces and `=` padding are ignored.
        #[arg(long, env = "OTPGATE_IMPORT_SECRET", hide_env_values = true)]
        secret: String,
        /// HMAC algorithm: SHA1, SHA256 or SHA512.
        #[arg(long, default_value = "SHA1")]
        algorithm: String,
        /// Code length: 6 or 8.
        #[arg(long, default_value_t = 6)]
        digits: u32,
        /// Time step in seconds: 30 or 60.
        #[arg(long, default_value_t = 30)]
        period: u64,
    },
}

fn load(config: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(config)?)
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            // cryptoki logs every vendor mechanism it has no name for at
            // ERROR level while listing the token's mechanisms.
            tracing_subscriber::EnvFilter::new(format!("{},cryptoki::mechanism=off", settings.log.level))
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

fn open_vault(settings: &Settings) -> anyhow::Result<Vault> {
    let pin = settings.hsm.pin()?;
    Ok(Vault::open(&VaultOptions::from(&settings.hsm), &pin)?)
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let redis = &settings.redis;
    Ok(Store::connect(&redis.url, &redis.key_prefix, Duration::from_millis(redis.timeout_ms)).await?)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Printed as a chain of causes, without a backtrace, whatever
            // RUST_BACKTRACE is set to: these are operator errors, not bugs.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(load(&config)?),
        Command::CheckConfig { config } => {
            let settings = load(&config)?;
            settings.hsm.pin().context("the configuration is valid, but the HSM PIN cannot be read")?;
            settings.admin.token()?;
            println!("{}: configuration is valid", config.display());
            Ok(())
        }
        Command::Hsm { command } => hsm_command(command),
        Command::User { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(user_command(command))
        }
    }
}

fn hsm_command(command: HsmCommand) -> anyhow::Result<()> {
    match command {
        HsmCommand::Init { config } => {
            let settings = load(&config)?;
            init_logging(&settings);
            let vault = open_vault(&settings)?;
            let created = vault.init_keys()?;
            if created.is_empty() {
                println!("all keys already exist in token {:?}", settings.hsm.token_label);
            }
            for label in created {
                println!("created key {label}");
            }
            Ok(())
        }
        HsmCommand::Status { config } => {
            let settings = load(&config)?;
            let vault = open_vault(&settings)?;
            let status = vault.status()?;
            println!("token {:?} ({} {}, serial {})", status.token_label, status.manufacturer, status.model, status.serial);
            for (role, present) in &status.keys {
                println!("key {}: {}", role.label(), if *present { "present" } else { "missing; run `otpgate hsm init`" });
            }
            for mechanism in &status.missing_mechanisms {
                println!("mechanism {mechanism}: missing");
            }
            if !status.is_ready() {
                bail!("the token is not ready");
            }
            println!("ready");
            Ok(())
        }
    }
}

async fn user_command(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Status { user, config } => {
            let settings = load(&config)?;
            let user = settings.app.member_name(&user);
            let store = open_store(&settings).await?;
            match store.record(&user).await? {
                None => println!("{user}: no two-factor authentication"),
                Some(bytes) => {
                    let vault = open_vault(&settings)?;
                    let record = EnrollmentRecord::open(&user, &bytes, &vault)?;
                    println!(
                        "{user}: TOTP enrolled ({} {} digits {} s), since unix time {}",
                        record.algorithm, record.digits, record.period, record.created
                    );
                }
            }
            Ok(())
        }
        UserCommand::Reset { user, config } => {
            let settings = load(&config)?;
            let user = settings.app.member_name(&user);
            init_logging(&settings);
            let store = open_store(&settings).await?;
            let vault = open_vault(&settings)?;
            let existed = store.delete_record(&user).await?;
            vault.delete_token_seed(&UserId(user.clone()))?;
            tracing::info!(target: "audit", user = %user, action = "reset", existed, "second factor reset by operator");
            println!("{user}: two-factor authentication {}", if existed { "removed" } else { "was not set up" });
            Ok(())
        }
        UserCommand::Import { user, config, secret, algorithm, digits, period } => {
            let settings = load(&config)?;
            let user = settings.app.member_name(&user);
            init_logging(&settings);
            let Some(algorithm) = Algorithm::parse(&algorithm) else {
                bail!("--algorithm {algorithm:?} is not SHA1, SHA256 or SHA512");
            };
            if !matches!(digits, 6 | 8) {
                bail!("--digits {digits} is not 6 or 8");
            }
            if !matches!(period, 30 | 60) {
                bail!("--period {period} is not 30 or 60");
            }
            let seed = Seed::from_base32(&secret)?;
            let store = open_store(&settings).await?;
            let vault = open_vault(&settings)?;
            let params = TotpParams { algorithm, digits, period };
            let sealed = vault.seal(&UserId(user.clone()), &seed, algorithm)?;
            let record = EnrollmentRecord::new(&user, &sealed, &params, now_unix(), Vec::new());
            store.put_record(&user, &record.seal(&vault)?, None).await?;
            tracing::info!(target: "audit", user = %user, action = "import", algorithm = algorithm.as_str(), digits, period, "TOTP seed imported by operator");
            println!("{user}: TOTP seed imported ({} {digits} digits {period} s)", algorithm.as_str());
            Ok(())
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings);
    let settings = Arc::new(settings);
    let vault = Arc::new(open_vault(&settings)?);
    let status = vault.status()?;
    if !status.is_ready() {
        bail!("HSM token {:?} is not ready: run `otpgate hsm init` and `otpgate hsm status`", settings.hsm.token_label);
    }

    // The Redis connection's driver task lives on this runtime, which stays
    // alive (with its own worker threads) for as long as the server runs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("otpgate-redis")
        .enable_all()
        .build()?;
    let store = runtime.block_on(open_store(&settings))?;
    match runtime.block_on(store.persistence_enabled()) {
        Ok(false) => tracing::warn!("Redis persistence (AOF or RDB) is off: enrollment records are lost when Redis restarts"),
        Ok(true) => {}
        Err(e) => tracing::warn!(error = %e, "cannot check Redis persistence"),
    }

    let upstream_addr = std::net::ToSocketAddrs::to_socket_addrs(settings.upstream.address.as_str())
        .with_context(|| format!("upstream.address {:?} cannot be resolved; check the name or use IP:port", settings.upstream.address))?
        .next()
        .with_context(|| format!("upstream.address {:?} resolves to no address", settings.upstream.address))?;

    let conf = pingora::server::configuration::ServerConf {
        threads: settings.gateway.threads,
        grace_period_seconds: Some(settings.gateway.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(settings.gateway.shutdown_grace_secs),
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let gateway = Gateway::new(settings.clone(), vault.clone(), store.clone(), upstream_addr);
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    // A 4 KiB first read buffer instead of pingora's 64 KiB: measured
    // 27.5 KB instead of 43.3 KB per idle plain-HTTP connection, 50.9 KiB
    // instead of 111.3 KiB under TLS, and no throughput change
    // (BENCHMARKS.md).
    let buffers = pingora::protocols::l4::stream::L4BufferSettings::default().read(4096);
    if let Some(address) = &settings.listen.http {
        proxy.add_listener(pingora::listeners::ListenerConfig::tcp(address).l4_buffer(buffers));
    }
    if let Some(tls) = &settings.listen.tls {
        let certificates = pingora::listeners::tls::TlsSettings::intermediate(&tls.cert.to_string_lossy(), &tls.key.to_string_lossy())?;
        proxy.add_listener(pingora::listeners::ListenerConfig::tcp(&tls.address).tls(certificates).l4_buffer(buffers));
    }
    server.add_service(proxy);
    if let Some(address) = &settings.admin.listen {
        let admin = Admin { store, vault, token: settings.admin.token()?, app: settings.app.clone() };
        let mut service = pingora::services::listening::Service::new(
            "otpgate admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(admin),
        );
        service.add_tcp(address);
        server.add_service(service);
    }
    tracing::info!(http = ?settings.listen.http, admin = ?settings.admin.listen, upstream = %settings.upstream.address, "otpgate starting");
    server.run_forever();
}
