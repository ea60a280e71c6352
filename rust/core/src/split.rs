//! Split files: everything a training run needs to read its samples and nothing
//! more: store, table and column names, label type, class names, and the uuids
//! of each split.
//!
//! Layout (little endian): `b"C4SPLIT1"`, `u32` header length, the header as
//! JSON, the uuids of each split in header order (16 bytes each, big-endian uuid
//! bytes as in RFC 4122), then a CRC-32 of everything before it. The binary body
//! makes a split of a million uuids load in milliseconds; the checksum turns a
//! truncated or altered file into a clear error instead of wrong samples.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;
use uuid::Uuid;

const MAGIC: &[u8; 8] = b"C4SPLIT1";
pub const UUID_LEN: usize = 16;

#[derive(Debug, Error)]
pub enum SplitError {
    #[error("cannot read split file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a split file (bad magic bytes)")]
    Magic { path: PathBuf },
    #[error("split file {path} is truncated or corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("split file {path} has an invalid header: {source}")]
    Header {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("split {name:?} not found; the file has {available:?}")]
    NoSuchSplit {
        name: String,
        available: Vec<String>,
    },
    #[error("split {name:?}: uuid bytes length {len} is not a multiple of 16")]
    UuidBytes { name: String, len: usize },
    #[error("split name {0:?} appears twice")]
    DuplicateName(String),
    #[error(
        "split {name:?} lists uuid {uuid} twice (at positions {first} and {second}): \
         each sample must appear once, or it is served twice per epoch"
    )]
    DuplicateUuid {
        name: String,
        uuid: Uuid,
        first: usize,
        second: usize,
    },
    #[error(
        "split file {path}: split {name:?} lists uuid {uuid} twice (at positions {first} and \
         {second}); each sample must appear once: write the file again without duplicates"
    )]
    DuplicateUuidInFile {
        path: PathBuf,
        name: String,
        uuid: Uuid,
        first: usize,
        second: usize,
    },
}

/// A uuid that `uuids` (16 bytes each) lists more than once, with the
/// positions of its first two occurrences; None if every uuid is unique.
///
/// Sorts a copy (16 bytes a uuid): a million uuids take some tens of
/// milliseconds, once per reader or split file.
pub fn find_duplicate(uuids: &[u8]) -> Option<(Uuid, usize, usize)> {
    let value = |c: &[u8]| u128::from_be_bytes(c.try_into().expect("16 bytes"));
    let mut sorted: Vec<u128> = uuids.chunks_exact(UUID_LEN).map(value).collect();
    sorted.sort_unstable();
    let twice = sorted.windows(2).find(|w| w[0] == w[1])?[0];
    let mut at = uuids
        .chunks_exact(UUID_LEN)
        .enumerate()
        .filter(|(_, c)| value(c) == twice)
        .map(|(i, _)| i);
    let (first, second) = (at.next()?, at.next()?);
    Some((Uuid::from_u128(twice), first, second))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelType {
    Int,
    Blob,
    None,
}

impl LabelType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "int" => Some(Self::Int),
            "blob" => Some(Self::Blob),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::Blob => "blob",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitEntry {
    pub name: String,
    pub count: usize,
}

fn default_id_col() -> String {
    "id".into()
}
fn default_label_col() -> String {
    "label".into()
}
fn default_data_col() -> String {
    "data".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitHeader {
    /// Store URL the uuids refer to (`local:PATH`, `cassandra://...`), if known.
    #[serde(default)]
    pub store: Option<String>,
    /// Data table (for Cassandra `keyspace.table`).
    pub table: String,
    #[serde(default)]
    pub metadata_table: Option<String>,
    #[serde(default = "default_id_col")]
    pub id_col: String,
    #[serde(default = "default_label_col")]
    pub label_col: String,
    #[serde(default = "default_data_col")]
    pub data_col: String,
    pub label_type: LabelType,
    #[serde(default)]
    pub classes: Vec<String>,
    /// Free-form provenance (ratios, seed, balancing mode...).
    #[serde(default)]
    pub info: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDiskHeader {
    #[serde(flatten)]
    header: SplitHeader,
    splits: Vec<SplitEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitFile {
    pub header: SplitHeader,
    /// (name, uuid bytes: 16 per uuid), in file order.
    pub splits: Vec<(String, Vec<u8>)>,
}

impl SplitFile {
    pub fn new(header: SplitHeader) -> Self {
        Self {
            header,
            splits: Vec::new(),
        }
    }

    pub fn add_split(&mut self, name: &str, uuids: Vec<u8>) -> Result<(), SplitError> {
        if !uuids.len().is_multiple_of(UUID_LEN) {
            return Err(SplitError::UuidBytes {
                name: name.into(),
                len: uuids.len(),
            });
        }
        if self.splits.iter().any(|(n, _)| n == name) {
            return Err(SplitError::DuplicateName(name.into()));
        }
        if let Some((uuid, first, second)) = find_duplicate(&uuids) {
            return Err(SplitError::DuplicateUuid {
                name: name.into(),
                uuid,
                first,
                second,
            });
        }
        self.splits.push((name.into(), uuids));
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.splits.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn uuids(&self, name: &str) -> Result<&[u8], SplitError> {
        self.splits
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.as_slice())
            .ok_or_else(|| SplitError::NoSuchSplit {
                name: name.into(),
                available: self.names(),
            })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let disk = OnDiskHeader {
            header: self.header.clone(),
            splits: self
                .splits
                .iter()
                .map(|(name, u)| SplitEntry {
                    name: name.clone(),
                    count: u.len() / UUID_LEN,
                })
                .collect(),
        };
        let json = serde_json::to_vec(&disk).expect("split header serializes");
        let body: usize = self.splits.iter().map(|(_, u)| u.len()).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + json.len() + body + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        for (_, u) in &self.splits {
            out.extend_from_slice(u);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a split file's bytes; `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, SplitError> {
        let corrupt = |what: &str| SplitError::Corrupt {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SplitError::Magic {
                path: path.to_path_buf(),
            });
        }
        if bytes.len() < MAGIC.len() + 8 {
            return Err(corrupt("shorter than its fixed header"));
        }
        let (content, crc) = bytes.split_at(bytes.len() - 4);
        let expected = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(content) != expected {
            return Err(corrupt("checksum mismatch (file truncated or modified)"));
        }
        let rest = &content[MAGIC.len()..];
        let header_len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let rest = &rest[4..];
        if header_len > rest.len() {
            return Err(corrupt("header length exceeds file size"));
        }
        let disk: OnDiskHeader =
            serde_json::from_slice(&rest[..header_len]).map_err(|source| SplitError::Header {
                path: path.to_path_buf(),
                source,
            })?;
        let mut body = &rest[header_len..];
        let mut file = SplitFile::new(disk.header);
        for entry in disk.splits {
            let len = entry
                .count
                .checked_mul(UUID_LEN)
                .filter(|&l| l <= body.len())
                .ok_or_else(|| corrupt(&format!("split {:?} runs past the end", entry.name)))?;
            file.add_split(&entry.name, body[..len].to_vec())
                .map_err(|e| match e {
                    // Written by an older version, which took duplicates.
                    SplitError::DuplicateUuid {
                        name,
                        uuid,
                        first,
                        second,
                    } => SplitError::DuplicateUuidInFile {
                        path: path.to_path_buf(),
                        name,
                        uuid,
                        first,
                        second,
                    },
                    other => other,
                })?;
            body = &body[len..];
        }
        if !body.is_empty() {
            return Err(corrupt("trailing bytes after the last split"));
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<Self, SplitError> {
        let bytes = std::fs::read(path).map_err(|source| SplitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Writes atomically (temporary file, then rename) so a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<(), SplitError> {
        let io = |source| SplitError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> SplitHeader {
        SplitHeader {
            store: Some("local:/tmp/x".into()),
            table: "imagenette_data".into(),
            metadata_table: Some("imagenette_metadata".into()),
            id_col: "id".into(),
            label_col: "label".into(),
            data_col: "data".into(),
            label_type: LabelType::Int,
            classes: vec!["a".into(), "b".into()],
            info: Default::default(),
        }
    }

    #[test]
    fn round_trip_and_errors_name_the_file() {
        let mut f = SplitFile::new(header());
        f.add_split("train", [[7u8; 16], [8u8; 16]].concat())
            .unwrap();
        f.add_split("val", vec![9u8; 16]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.split");
        f.save(&p).unwrap();
        let g = SplitFile::load(&p).unwrap();
        assert_eq!(f, g);
        assert_eq!(g.uuids("val").unwrap(), &[9u8; 16]);
        let err = g.uuids("test").unwrap_err().to_string();
        assert!(err.contains("train") && err.contains("test"), "{err}");

        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let err = SplitFile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("s.split") && err.contains("truncated"),
            "{err}"
        );
        std::fs::write(&p, b"hello world, not a split").unwrap();
        assert!(matches!(SplitFile::load(&p), Err(SplitError::Magic { .. })));
    }

    #[test]
    fn a_uuid_listed_twice_is_refused_and_named() {
        let id = |i: u8| [i; 16];
        let uuids = [id(1), id(2), id(3), id(2), id(4), id(2)].concat();
        let twice = Uuid::from_bytes(id(2));
        assert_eq!(find_duplicate(&uuids), Some((twice, 1, 3)));
        assert_eq!(find_duplicate(&[id(1), id(2)].concat()), None);
        assert_eq!(find_duplicate(&[]), None);

        let mut f = SplitFile::new(header());
        let err = f.add_split("train", uuids.clone()).unwrap_err();
        assert!(matches!(err, SplitError::DuplicateUuid { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"train\"") && msg.contains(&twice.to_string()),
            "{msg}"
        );
        assert!(f.splits.is_empty(), "nothing was added");

        // A file with duplicates, as an older version wrote it, is refused
        // naming the file, the split and the uuid.
        f.add_split("val", id(9).to_vec()).unwrap();
        f.splits.push(("train".into(), uuids));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.split");
        std::fs::write(&p, f.to_bytes()).unwrap();
        let err = SplitFile::load(&p).unwrap_err();
        assert!(
            matches!(err, SplitError::DuplicateUuidInFile { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("old.split")
                && msg.contains("\"train\"")
                && msg.contains(&twice.to_string()),
            "{msg}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SplitFile::from_bytes(&bytes, Path::new("x"));
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = SplitFile::from_bytes(&with_magic, Path::new("x"));
        }

        #[test]
        fn every_truncation_is_detected(cut in 1usize..100) {
            let mut f = SplitFile::new(header());
            f.add_split("train", (0..64).collect()).unwrap();
            let bytes = f.to_bytes();
            let cut = cut.min(bytes.len());
            prop_assert!(SplitFile::from_bytes(&bytes[..bytes.len() - cut], Path::new("x")).is_err());
        }
    }
}
