//! A chunk as stored: a 20-byte header (magic, codec, the raw length, a CRC-32
//! of the raw bytes), then the raw or zstd-compressed bytes. The checksum is
//! what tells a damaged chunk from a valid one whatever the codec.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"CRA1";
const HEADER: usize = 20;
const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "codec", rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

impl Compression {
    /// `None` or `"zstd"` (at `level`, zstd's default 3 when not given).
    pub fn parse(name: Option<&str>, level: Option<i32>) -> Result<Self, String> {
        match (name, level) {
            (None, None) => Ok(Self::None),
            (None, Some(_)) => Err("a compression level needs compression=\"zstd\"".into()),
            (Some("zstd"), level) => {
                let level = level.unwrap_or(3);
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(format!(
                        "zstd level must be in {}..={}, got {level}",
                        range.start(),
                        range.end()
                    ));
                }
                Ok(Self::Zstd { level })
            }
            (Some(other), _) => Err(format!(
                "compression must be \"zstd\" or None, got {other:?}"
            )),
        }
    }

    pub fn name(&self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Zstd { .. } => Some("zstd"),
        }
    }
}

/// The stored form of a chunk's raw bytes.
pub fn encode(raw: &[u8], compression: Compression) -> Vec<u8> {
    let (codec, body) = match compression {
        Compression::None => (RAW, None),
        Compression::Zstd { level } => (
            ZSTD,
            Some(zstd::bulk::compress(raw, level).expect("compressing into a growable buffer")),
        ),
    };
    let body_len = body.as_ref().map_or(raw.len(), Vec::len);
    let mut out = Vec::with_capacity(HEADER + body_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[codec, 0, 0, 0]);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(body.as_deref().unwrap_or(raw));
    out
}

/// The raw bytes of a stored chunk, which must be `expected` bytes long (a
/// raw chunk's are a slice of `stored`, not a copy); the error says what is
/// wrong with it.
pub fn decode(stored: Bytes, expected: usize) -> Result<Bytes, String> {
    if stored.len() < HEADER || &stored[..4] != MAGIC {
        return Err(format!(
            "not a chunk ({} bytes without the chunk header)",
            stored.len()
        ));
    }
    if stored[5..8] != [0, 0, 0] {
        return Err("damaged chunk header".into());
    }
    let raw_len = u64::from_le_bytes(stored[8..16].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(stored[16..20].try_into().expect("4 bytes"));
    if raw_len != expected {
        return Err(format!(
            "holds {raw_len} bytes where the array's chunks have {expected}"
        ));
    }
    let body = &stored[HEADER..];
    let raw = match stored[4] {
        RAW if body.len() == raw_len => stored.slice(HEADER..),
        RAW => return Err(format!("{} bytes stored for {raw_len}", body.len())),
        ZSTD => {
            let mut raw = Vec::with_capacity(raw_len);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(body, &mut raw))
                .map_err(|e| format!("zstd: {e}"))?;
            if raw.len() != raw_len {
                return Err(format!(
                    "decompressed to {} bytes, not {raw_len}",
                    raw.len()
                ));
            }
            Bytes::from(raw)
        }
        other => return Err(format!("unknown codec {other}")),
    };
    if crc32fast::hash(&raw) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000), zstd in any::<bool>()) {
            let c = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
            prop_assert_eq!(decode(encode(&raw, c).into(), raw.len()).unwrap(), raw);
        }

        #[test]
        fn damage_is_detected(
            raw in proptest::collection::vec(any::<u8>(), 1..500),
            zstd in any::<bool>(),
            at in any::<prop::sample::Index>(),
            bits in 1u8..=255,
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let c = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
            let mut stored = encode(&raw, c);
            if truncate {
                stored.truncate(cut.index(stored.len()));
            } else {
                let i = at.index(stored.len());
                stored[i] ^= bits;
            }
            prop_assert!(decode(stored.into(), raw.len()).is_err());
        }
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(Compression::parse(None, None), Ok(Compression::None));
        assert_eq!(
            Compression::parse(Some("zstd"), None),
            Ok(Compression::Zstd { level: 3 })
        );
        assert!(Compression::parse(Some("gzip"), None)
            .unwrap_err()
            .contains("gzip"));
        assert!(Compression::parse(Some("zstd"), Some(99))
            .unwrap_err()
            .contains("99"));
    }
}
