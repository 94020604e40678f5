//! HOTP and TOTP codes (RFC 4226, RFC 6238) computed with OpenSSL's HMAC in
//! the benchmark process, independent of the vault, so a benchmark can
//! submit codes the way an authenticator app computes them.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// Returns the HMAC-SHA1 HOTP code of `seed` for `counter` with `digits` digits.
pub fn hotp_sha1(seed: &[u8], counter: u64, digits: u32) -> String {
    let key = PKey::hmac(seed).expect("HMAC key from seed bytes");
    let mut signer = Signer::new(MessageDigest::sha1(), &key).expect("HMAC-SHA1 signer");
    signer.update(&counter.to_be_bytes()).expect("HMAC update");
    let mac = signer.sign_to_vec().expect("HMAC result");
    // Dynamic truncation, RFC 4226 section 5.3.
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    format!("{:0width$}", binary % 10u32.pow(digits), width = digits as usize)
}

/// Returns the code `oathtool` prints for a hex seed at `counter`, or `None`
/// when oathtool is not installed. Used once per run to check [`hotp_sha1`].
pub fn oathtool_hotp(seed_hex: &str, counter: u64, digits: u32) -> Option<String> {
    let output = std::process::Command::new("oathtool")
        .arg(format!("--digits={digits}"))
        .arg(format!("--counter={counter}"))
        .arg(seed_hex)
        .output()
        .ok()?;
    assert!(output.status.success(), "oathtool failed: {}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8(output.stdout).expect("oathtool prints ASCII").trim().to_string())
}
