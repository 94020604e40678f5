//! Codes from `oathtool`, an implementation independent of otpgate.

use std::process::Command;

use otpgate_config::Algorithm;

/// Returns the TOTP code `oathtool` computes for a hex seed at `unix_time`.
pub fn oathtool_totp(seed_hex: &str, algorithm: Algorithm, digits: u32, period: u64, unix_time: u64) -> String {
    let mode = match algorithm {
        Algorithm::SHA1 => "SHA1",
        Algorithm::SHA256 => "SHA256",
        Algorithm::SHA512 => "SHA512",
    };
    let output = Command::new("oathtool")
        .arg(format!("--totp={mode}"))
        .arg(format!("--digits={digits}"))
        .arg(format!("--time-step-size={period}s"))
        .arg(format!("--now=@{unix_time}"))
        .arg(seed_hex)
        .output()
        .expect("oathtool is installed (Debian package oathtool)");
    assert!(
        output.status.success(),
        "oathtool failed for time {unix_time}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Returns the current code for a base32 seed, SHA-1, 6 digits, 30 s, at `unix_time`.
pub fn oathtool_base32(secret: &str, unix_time: u64) -> String {
    let output = Command::new("oathtool")
        .args(["--totp", "--base32", "--digits=6"])
        .arg(format!("--now=@{unix_time}"))
        .arg(secret)
        .output()
        .expect("oathtool is installed (Debian package oathtool)");
    assert!(output.status.success(), "oathtool failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
