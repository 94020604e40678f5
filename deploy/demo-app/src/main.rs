//! Demo "legacy" web application that otpgate is tested and demonstrated against.
//!
//! The app has no two-factor authentication of its own. It behaves like a small
//! framework app: a login form with a CSRF cookie, a JSON login API, session cookies
//! kept in memory, protected pages, and test endpoints (`/echo`, `/_demo/...`) that
//! show what a gateway in front of it forwarded.
#![forbid(unsafe_code)]

mod cli;
mod members;
mod pages;
mod request;
mod routes;
mod state;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use cli::Command;
use state::AppState;

#[tokio::main]
async fn main() -> ExitCode {
    let args = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned());

    match cli::parse_args(args) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Run { listen }) => serve(listen).await,
        Err(error) => {
            eprintln!("demo-app: {error}");
            ExitCode::from(2)
        }
    }
}

/// Serves the app on `listen` until SIGINT or SIGTERM arrives.
async fn serve(listen: SocketAddr) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo-app: failed to listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("demo-app: failed to read the bound address for {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };

    // Tests wait for this exact line on stdout, so it must show the bound port
    // (not 0) and reach the pipe before the first request.
    println!("demo-app listening on http://{local_addr}");
    let _ = std::io::stdout().flush();

    let app = routes::router(AppState::default());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    if let Err(error) = result {
        eprintln!("demo-app: server on {local_addr} failed: {error}");
        return ExitCode::FAILURE;
    }

    eprintln!("demo-app: stopped");
    ExitCode::SUCCESS
}

/// Completes when the process receives SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            eprintln!("demo-app: failed to listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                eprintln!("demo-app: failed to listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("demo-app: shutdown signal received, stopping");
}
