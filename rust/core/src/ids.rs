//! Deterministic sample ids: the id ingest gives a sample is a uuid5 of a
//! fixed namespace and the table's name with the sample's source key (its
//! path under the source), so that an ingest run again, or a retried task of
//! a distributed one, writes every sample under the id the first run gave it.

use uuid::Uuid;

/// The namespace of [`sample_uuid`]'s uuid5s.
pub const ID_NAMESPACE: Uuid = Uuid::from_bytes([
    0x5d, 0x0c, 0x3b, 0x7e, 0x8a, 0x4f, 0x5c, 0x1e, 0x9b, 0x2d, 0x6f, 0x7a, 0x8e, 0x9c, 0x0d, 0x1b,
]);

/// The id of the sample of `key` (a path relative to the source, with "/")
/// in `table`; `occurrence` counts earlier samples of the same key (a
/// multilabel list may name an image twice): uuid5 of "table\nkey", or of
/// "table\nkey\noccurrence" past the first.
pub fn sample_uuid(table: &str, key: &str, occurrence: u64) -> Uuid {
    let name = if occurrence == 0 {
        format!("{table}\n{key}")
    } else {
        format!("{table}\n{key}\n{occurrence}")
    };
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(
            ID_NAMESPACE.to_string(),
            "5d0c3b7e-8a4f-5c1e-9b2d-6f7a8e9c0d1b"
        );
        let a = sample_uuid("t", "cat/1.jpg", 0);
        assert_eq!(a, sample_uuid("t", "cat/1.jpg", 0));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, sample_uuid("u", "cat/1.jpg", 0));
        assert_ne!(a, sample_uuid("t", "cat/1.jpg", 1));
        assert_eq!(
            sample_uuid("t", "cat/1.jpg", 1),
            Uuid::new_v5(&ID_NAMESPACE, b"t\ncat/1.jpg\n1")
        );
    }
}
