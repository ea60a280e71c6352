//! The loader's resumable state, the same JSON as the Python dataset's
//! `state_dict()`: a state saved by either side resumes on the other.

use crate::error::{Error, Result};
use blake2::digest::{Update, VariableOutput};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the state layout (the Python side's `STATE_VERSION`).
pub const STATE_VERSION: u32 = 1;

/// Where a run stands: `consumed_samples` counts samples of the epoch's global
/// order served to all ranks together, so a state saved with one world size
/// resumes on another (the rest is re-dealt over the current ranks). The other
/// fields identify the run, and a state from another run is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub version: u32,
    pub epoch: u64,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub batch_size: usize,
    pub num_samples: usize,
    pub uuids_fingerprint: String,
    pub table: String,
    pub world_size: usize,
    pub consumed_samples: usize,
}

impl LoaderState {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a state serializes")
    }

    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::State(format!("invalid state JSON: {e}")))
    }

    /// Refuses a state from another run: `mine` is this loader's state.
    pub(crate) fn check_compatible(&self, mine: &LoaderState) -> Result<()> {
        if self.version != STATE_VERSION {
            return Err(Error::State(format!(
                "unsupported state version {} (expected {STATE_VERSION})",
                self.version
            )));
        }
        let fields: [(&str, String, String); 7] = [
            ("seed", self.seed.to_string(), mine.seed.to_string()),
            (
                "shuffle",
                self.shuffle.to_string(),
                mine.shuffle.to_string(),
            ),
            (
                "drop_last",
                self.drop_last.to_string(),
                mine.drop_last.to_string(),
            ),
            (
                "batch_size",
                self.batch_size.to_string(),
                mine.batch_size.to_string(),
            ),
            (
                "num_samples",
                self.num_samples.to_string(),
                mine.num_samples.to_string(),
            ),
            (
                "uuids_fingerprint",
                self.uuids_fingerprint.clone(),
                mine.uuids_fingerprint.clone(),
            ),
            ("table", self.table.clone(), mine.table.clone()),
        ];
        for (key, saved, current) in fields {
            if saved != current {
                return Err(Error::State(format!(
                    "state was saved with {key}={saved} but this loader has {key}={current}: \
                     it belongs to another run"
                )));
            }
        }
        if self.consumed_samples > self.num_samples {
            return Err(Error::State(format!(
                "consumed_samples={} is out of range",
                self.consumed_samples
            )));
        }
        Ok(())
    }
}

/// BLAKE2b with an 8-byte digest of the uuid bytes, in hex: what the Python
/// dataset computes, so states cross between the two.
pub fn uuids_fingerprint(ids: &[Uuid]) -> String {
    let mut h = blake2::Blake2bVar::new(8).expect("8 is a valid BLAKE2b length");
    for id in ids {
        h.update(id.as_bytes());
    }
    let mut out = [0u8; 8];
    h.finalize_variable(&mut out).expect("8-byte buffer");
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_python_hashlib() {
        // hashlib.blake2b(bytes(range(32)), digest_size=8).hexdigest()
        let ids = [
            Uuid::from_bytes(core::array::from_fn(|i| i as u8)),
            Uuid::from_bytes(core::array::from_fn(|i| 16 + i as u8)),
        ];
        assert_eq!(uuids_fingerprint(&ids), PYTHON_FINGERPRINT);
        assert_eq!(uuids_fingerprint(&[]), PYTHON_EMPTY_FINGERPRINT);
    }

    const PYTHON_FINGERPRINT: &str = "40f68f4ad24e575b";
    const PYTHON_EMPTY_FINGERPRINT: &str = "e4a6a0577479b2b4";

    #[test]
    fn reads_a_python_state_dict() {
        let json = r#"{"version": 1, "epoch": 3, "seed": 7, "shuffle": true, "drop_last": false,
            "batch_size": 16, "num_samples": 100, "uuids_fingerprint": "0011223344556677",
            "table": "imagenette_data", "world_size": 4, "consumed_samples": 64}"#;
        let s = LoaderState::from_json(json).unwrap();
        assert_eq!((s.epoch, s.world_size, s.consumed_samples), (3, 4, 64));
        assert_eq!(LoaderState::from_json(&s.to_json()).unwrap(), s);
        let mut other = s.clone();
        other.batch_size = 32;
        let err = other.check_compatible(&s).unwrap_err().to_string();
        assert!(
            err.contains("batch_size=32") && err.contains("batch_size=16"),
            "{err}"
        );
        assert!(LoaderState::from_json("{}").is_err());
    }
}
