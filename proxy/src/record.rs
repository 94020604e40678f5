//! Enrollment records: what the store keeps per member, authenticated with
//! the HSM record key so that an altered or copied record is rejected.

use data_encoding::BASE64;
use otpgate_hsm::{Algorithm, SealedSeed, TotpParams, Vault};
use serde::{Deserialize, Serialize};

/// A member's second-factor enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// The member this record belongs to; checked against the key it was read from.
    pub user: String,
    /// `SealedSeed::to_bytes`, base64.
    pub sealed_seed: String,
    pub algorithm: String,
    pub digits: u32,
    pub period: u64,
    /// Unix time of enrollment.
    pub created: u64,
    /// Backup code entries (`hint:argon2id-hash`), see `backup`.
    #[serde(default)]
    pub backup_codes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    record: String,
    mac: String,
}

/// A record that failed its integrity check or could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("enrollment record of {user:?} failed its integrity check; it was altered in Redis or copied from another member")]
    Tampered { user: String },
    #[error("enrollment record of {user:?} is malformed: {reason}")]
    Malformed { user: String, reason: String },
    #[error(transparent)]
    Hsm(#[from] otpgate_hsm::HsmError),
}

fn mac_input(user: &str, record_json: &str) -> Vec<u8> {
    let mut input = b"otpgate-record-v1\0".to_vec();
    input.extend_from_slice(user.as_bytes());
    input.push(0);
    input.extend_from_slice(record_json.as_bytes());
    input
}

impl EnrollmentRecord {
    /// Builds a record for a sealed seed.
    pub fn new(user: &str, sealed: &SealedSeed, params: &TotpParams, created: u64, backup_codes: Vec<String>) -> Self {
        EnrollmentRecord {
            user: user.to_string(),
            sealed_seed: BASE64.encode(&sealed.to_bytes()),
            algorithm: params.algorithm.as_str().to_string(),
            digits: params.digits,
            period: params.period,
            created,
            backup_codes,
        }
    }

    /// Serialises the record with its MAC for storage under `user`'s key.
    pub fn seal(&self, vault: &Vault) -> Result<Vec<u8>, RecordError> {
        let record = serde_json::to_string(self).expect("record serialises");
        let mac = vault.mac(&mac_input(&self.user, &record))?;
        let stored = Stored { record, mac: BASE64.encode(&mac) };
        Ok(serde_json::to_vec(&stored).expect("stored record serialises"))
    }

    /// Parses stored bytes read from `user`'s key and checks their MAC.
    pub fn open(user: &str, bytes: &[u8], vault: &Vault) -> Result<EnrollmentRecord, RecordError> {
        let malformed = |reason: String| RecordError::Malformed { user: user.to_string(), reason };
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let mac = BASE64.decode(stored.mac.as_bytes()).map_err(|e| malformed(e.to_string()))?;
        if !vault.verify_mac(&mac_input(user, &stored.record), &mac)? {
            return Err(RecordError::Tampered { user: user.to_string() });
        }
        let record: EnrollmentRecord = serde_json::from_str(&stored.record).map_err(|e| malformed(e.to_string()))?;
        if record.user != user {
            return Err(RecordError::Tampered { user: user.to_string() });
        }
        Ok(record)
    }

    /// Decodes the sealed seed.
    pub fn sealed(&self) -> Result<SealedSeed, RecordError> {
        let bytes = BASE64
            .decode(self.sealed_seed.as_bytes())
            .map_err(|e| RecordError::Malformed { user: self.user.clone(), reason: e.to_string() })?;
        Ok(SealedSeed::from_bytes(&bytes)?)
    }

    /// Returns the TOTP parameters.
    pub fn params(&self) -> Result<TotpParams, RecordError> {
        let algorithm = Algorithm::parse(&self.algorithm).ok_or_else(|| RecordError::Malformed {
            user: self.user.clone(),
            reason: format!("unknown algorithm {:?}", self.algorithm),
        })?;
        Ok(TotpParams { algorithm, digits: self.digits, period: self.period })
    }
}
