//! Demo member accounts and the credential check.

/// Demo members as `(username, password)` pairs. The passwords are public on purpose
/// because demos and tests sign in with them. Like many applications that log
/// members in by e-mail address, the demo ignores letter case and surrounding
/// whitespace in the username, so the gateway must not treat `ALICE` as another
/// member than `alice`.
/// `anna@example.org` covers apps whose login name is an e-mail address, so a
/// username may contain `@` and `.`, and `zoë` covers names outside ASCII.
pub const MEMBERS: &[(&str, &str)] = &[
    ("alice", "wonderland-42"),
    ("bob", "builder-42"),
    ("carol", "singer-42"),
    ("dave", "diver-42"),
    ("erin", "explorer-42"),
    ("anna@example.org", "anna-42"),
    ("zoë", "zoe-42"),
];

/// Checks `username` (letter case and surrounding whitespace ignored) and
/// `password` against [`MEMBERS`] and returns the member's username on a match. The loop compares every entry and does not stop at the
/// first match.
pub fn authenticate(username: &str, password: &str) -> Option<&'static str> {
    let username = username.trim().to_ascii_lowercase();
    let mut matched = None;
    for &(member, member_password) in MEMBERS {
        let username_matches = constant_time_eq(username.as_bytes(), member.as_bytes());
        let password_matches = constant_time_eq(password.as_bytes(), member_password.as_bytes());
        if username_matches & password_matches {
            matched = Some(member);
        }
    }
    matched
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_can_authenticate() {
        for &(username, password) in MEMBERS {
            assert_eq!(authenticate(username, password), Some(username));
        }
    }

    #[test]
    fn wrong_credentials_are_rejected() {
        assert_eq!(authenticate("alice", "builder-42"), None);
        assert_eq!(authenticate("alice", "wonderland-42 "), None);
        assert_eq!(authenticate("mallory", "wonderland-42"), None);
        assert_eq!(authenticate("", ""), None);
    }

    #[test]
    fn username_case_and_whitespace_ignored() {
        assert_eq!(authenticate("Alice", "wonderland-42"), Some("alice"));
        assert_eq!(authenticate(" ALICE ", "wonderland-42"), Some("alice"));
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
    }
}
