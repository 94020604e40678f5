//! Command-line parsing.

use std::fmt;
use std::net::SocketAddr;

/// Listen address when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

pub const USAGE: &str = "\
Usage: demo-app [--listen ADDR]

Demo web application without two-factor authentication, used to test and
demonstrate otpgate. Sessions are kept in memory and end when the process stops.

Options:
  --listen ADDR  IP address and TCP port to listen on, for example
                 127.0.0.1:8000 (the default) or [::1]:8000. Port 0 picks a
                 free port, and the startup line shows the port in use.
  -h, --help     Print this help and exit.
";

/// Action requested on the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run { listen: SocketAddr },
    Help,
}

/// Invalid command line. The caller prints the message and exits with status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the arguments that follow the program name. A repeated `--listen` overrides
/// the earlier one.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, UsageError> {
    let mut listen = None;
    let mut args = args.into_iter();

    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }

        let value = if arg == "--listen" {
            args.next().ok_or_else(|| {
                UsageError(
                    "missing value for --listen: expected IP:PORT, for example 127.0.0.1:8000"
                        .to_owned(),
                )
            })?
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            value.to_owned()
        } else {
            return Err(UsageError(format!(
                "unknown argument '{arg}': run 'demo-app --help' to see the options"
            )));
        };
        listen = Some(parse_listen(&value)?);
    }

    let listen = match listen {
        Some(addr) => addr,
        None => parse_listen(DEFAULT_LISTEN)?,
    };
    Ok(Command::Run { listen })
}

fn parse_listen(value: &str) -> Result<SocketAddr, UsageError> {
    value.parse().map_err(|_| {
        UsageError(format!(
            "invalid value '{value}' for --listen: expected IP:PORT, for example 127.0.0.1:8000 \
             (host names are not resolved)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        parse_args(args.iter().map(|arg| (*arg).to_owned()))
    }

    fn run_on(addr: &str) -> Command {
        Command::Run {
            listen: addr.parse().unwrap(),
        }
    }

    #[test]
    fn no_arguments_use_default() {
        assert_eq!(parse(&[]), Ok(run_on(DEFAULT_LISTEN)));
    }

    #[test]
    fn listen_accepts_both_forms() {
        assert_eq!(
            parse(&["--listen", "127.0.0.1:0"]),
            Ok(run_on("127.0.0.1:0"))
        );
        assert_eq!(parse(&["--listen=[::1]:9000"]), Ok(run_on("[::1]:9000")));
    }

    #[test]
    fn help_wins_over_other_arguments() {
        assert_eq!(
            parse(&["--listen", "127.0.0.1:1", "--help"]),
            Ok(Command::Help)
        );
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let unknown = parse(&["--port", "80"]).unwrap_err();
        assert!(unknown.0.contains("unknown argument '--port'"), "{unknown}");

        let missing = parse(&["--listen"]).unwrap_err();
        assert!(missing.0.contains("missing value"), "{missing}");

        let invalid = parse(&["--listen", "localhost:80"]).unwrap_err();
        assert!(
            invalid.0.contains("invalid value 'localhost:80'"),
            "{invalid}"
        );
    }
}
