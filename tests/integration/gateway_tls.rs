//! The TLS listener: the pending-login cookie gets the `__Host-` prefix
//! and `Secure` there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use crate::harness::services::{free_port, wait_for_port};
use crate::harness::stack::Stack;

/// Sends one HTTP/1.1 request over TLS (certificate not verified: it is
/// the test's own self-signed one) and returns the raw response.
fn tls_request(port: u16, request: &str) -> String {
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    builder.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let connector = builder.build();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut stream = connector.connect("localhost", tcp).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).to_string()
}

fn header_values<'a>(response: &'a str, name: &str) -> Vec<&'a str> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
        .collect()
}

#[test]
fn tls_pending_cookie_is_host_prefixed_and_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls_port = free_port();
    let stack = Stack::start(&format!(
        "[listen.tls]\naddress = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"",
        cert.display(),
        key.display()
    ));
    wait_for_port(tls_port, "the TLS listener");
    stack.import("alice", "JBSWY3DPEHPK3PXP");

    let page = tls_request(tls_port, "GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let csrf_cookie = header_values(&page, "set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("csrftoken="))
        .and_then(|rest| rest.split(';').next())
        .expect("the login page sets a CSRF cookie")
        .to_string();
    let body = format!("username=alice&password=wonderland-42&csrf_token={csrf_cookie}");
    let response = tls_request(
        tls_port,
        &format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nCookie: csrftoken={csrf_cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 303"), "{response}");
    let cookies = header_values(&response, "set-cookie");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].starts_with("__Host-otpgate_pending="), "{cookies:?}");
    assert!(cookies[0].contains("; Secure"), "{cookies:?}");
    assert!(cookies[0].contains("Path=/"), "{cookies:?}");
    assert!(cookies[0].contains("HttpOnly"), "{cookies:?}");
}
