//! Backup recovery codes: generation, normalisation and argon2id hashing.
//!
//! A code is 10 base32 characters (50 bits of entropy), shown as
//! `ABCDE-FGHJK`. The enrollment record keeps, per code, one hex byte of
//! its SHA-256 (so a submission is checked against about one hash instead
//! of ten) and an argon2id hash.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Codes per set.
pub const CODES_PER_SET: usize = 10;
/// Characters per code: 10 base32 characters carry 50 bits.
const CODE_CHARS: usize = 10;

/// Generates a new set of codes: returns the codes for display (grouped)
/// and the entries to store.
pub fn generate() -> (Vec<Zeroizing<String>>, Vec<String>) {
    let mut shown = Vec::with_capacity(CODES_PER_SET);
    let mut stored = Vec::with_capacity(CODES_PER_SET);
    for _ in 0..CODES_PER_SET {
        let bytes: Zeroizing<[u8; 7]> = Zeroizing::new(rand::random());
        let encoded = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&bytes[..]));
        let code = Zeroizing::new(encoded[..CODE_CHARS].to_string());
        stored.push(entry_for(&code));
        shown.push(Zeroizing::new(format!("{}-{}", &code[..5], &code[5..])));
    }
    (shown, stored)
}

fn hint(code: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(code.as_bytes())[..1])
}

fn entry_for(code: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(code.as_bytes(), &salt)
        .expect("argon2id hashing with default parameters succeeds")
        .to_string();
    format!("{}:{hash}", hint(code))
}

/// Normalises a typed backup code: spaces and hyphens removed, letters
/// upper-cased. Returns `None` unless exactly 10 base32 characters remain.
pub fn normalize(input: &str) -> Option<Zeroizing<String>> {
    let code: Zeroizing<String> = Zeroizing::new(
        input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    );
    let valid = code.len() == CODE_CHARS && code.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7'));
    valid.then_some(code)
}

/// Returns the stored entry that `code` (already normalised) matches.
pub fn find_match<'a>(code: &str, entries: &'a [String]) -> Option<&'a String> {
    let hint = hint(code);
    entries.iter().find(|entry| {
        let Some((entry_hint, hash)) = entry.split_once(':') else {
            return false;
        };
        entry_hint == hint
            && PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(code.as_bytes(), &parsed).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_verify_once_normalised() {
        let (shown, stored) = generate();
        assert_eq!(shown.len(), 10);
        assert_eq!(stored.len(), 10);
        let typed = shown[3].to_lowercase().replace('-', " ");
        let code = normalize(&typed).unwrap();
        assert_eq!(find_match(&code, &stored), Some(&stored[3]));
    }

    #[test]
    fn malformed_codes_are_rejected() {
        assert!(normalize("ABCDE-FGHJ").is_none());
        assert!(normalize("ABCDE-FGHJ1").is_none());
        assert!(normalize("ABCDE-FGHJKL").is_none());
        assert!(normalize(" abcde fghjk ").is_some());
    }

    #[test]
    fn unknown_code_matches_nothing() {
        let (_, stored) = generate();
        assert!(find_match("AAAAAAAAAA", &stored).is_none());
    }
}
