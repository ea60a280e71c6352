//! The decode stage of the fetch engine: turns a batch's encoded images into
//! RGB pixels on the rayon pool, so decoding overlaps the reads of later batches.

use crate::batch::{compact_ragged, ArenaPool, Batch, Images};
use crate::error::{Result, StoreError};
use crate::TableSpec;
use crs4_cassandra_decode::decode_batch;
use std::sync::Arc;
use uuid::Uuid;

/// How the decode stage turns encoded images into pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeOptions {
    /// Resize every image to (height, width); None keeps each image's size.
    pub size: Option<(u32, u32)>,
    /// Drop samples that fail to decode (reported in `Batch::skipped`)
    /// instead of failing the batch.
    pub skip_errors: bool,
}

/// Decodes `batch` in place (see [`DecodeOptions`]). Blocks on rayon: call it
/// from a blocking thread, never from a runtime worker.
pub fn decode_stage(
    mut batch: Batch,
    spec: &TableSpec,
    options: DecodeOptions,
    pool: &Arc<ArenaPool>,
) -> Result<Batch> {
    let n = batch.len();
    let estimate = match options.size {
        Some((h, w)) => n * h as usize * w as usize * 3,
        // About ten bytes of pixels per byte of JPEG.
        None => batch.data.len() * 10,
    };
    let mut pixels = pool.take(estimate);
    let samples: Vec<&[u8]> = (0..n).map(|i| batch.sample(i)).collect();
    let decoded = decode_batch(&samples, options.size, &mut pixels);
    drop(samples);
    let mut offsets: Vec<i64> = decoded.offsets.iter().map(|&o| o as i64).collect();
    let mut shapes = decoded.shapes;
    let failed: Vec<usize> = (0..n).filter(|&i| decoded.errors[i].is_some()).collect();
    if let Some(&first) = failed.first() {
        let reason = decoded.errors[first]
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default();
        if !options.skip_errors {
            return Err(StoreError::BadValue {
                table: spec.table.clone(),
                uuid: uuid_at(&batch, first),
                column: spec.data_col.clone(),
                reason: format!("cannot decode the image: {reason}"),
            });
        }
        let keep: Vec<bool> = decoded.errors.iter().map(Option::is_none).collect();
        for &i in &failed {
            if !batch.is_pad[i] {
                batch.skipped.push(batch.indices[i]);
                batch
                    .skipped_ids
                    .extend_from_slice(&batch.ids[i * 16..i * 16 + 16]);
            }
        }
        let (_, kept_offsets) = compact_ragged(&mut pixels, &offsets, &keep);
        offsets = kept_offsets;
        let mut flags = keep.iter();
        shapes.retain(|_| *flags.next().unwrap_or(&true));
        batch.retain(&keep);
    }
    batch.images = Some(Images {
        pixels,
        shapes,
        offsets,
        size: options.size,
    });
    Ok(batch)
}

fn uuid_at(batch: &Batch, i: usize) -> Uuid {
    Uuid::from_slice(&batch.ids[i * 16..i * 16 + 16]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchJob, Labels, PooledBuf};
    use crate::LabelType;

    /// A 1x1 RGB PNG.
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00\x00\x00\x0cIDAT\x08\xd7c\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\x18\xdd\x8d\xb0\x00\x00\x00\x00IEND\xaeB`\x82";

    fn batch(samples: &[&[u8]], pads: &[bool]) -> Batch {
        let job = BatchJob {
            epoch: 0,
            position: 0,
            indices: (0..samples.len() as u32).map(|i| i * 10).collect(),
            is_pad: pads.to_vec(),
            ids: (0..samples.len()).map(|_| Uuid::new_v4()).collect(),
        };
        let labels = Labels::Int((0..samples.len() as i64).collect());
        let mut b = Batch::from_job(&job, PooledBuf::unpooled(Vec::new()), labels);
        for s in samples {
            b.data.extend_from_slice(s);
            b.offsets.push(b.data.len() as i64);
        }
        b
    }

    #[test]
    fn a_bad_image_fails_the_batch_naming_its_uuid_and_table() {
        let b = batch(&[PNG, b"garbage"], &[false, false]);
        let bad = Uuid::from_slice(&b.ids[16..32]).unwrap();
        let spec = TableSpec::new("shapes", LabelType::Int);
        let options = DecodeOptions {
            size: Some((2, 3)),
            skip_errors: false,
        };
        let err = decode_stage(b, &spec, options, &ArenaPool::new(1)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&bad.to_string()) && msg.contains("shapes"),
            "{msg}"
        );
    }

    #[test]
    fn skipping_compacts_every_field_and_reports_real_samples_only() {
        let b = batch(
            &[b"bad", PNG, b"bad too", PNG, b"bad pad"],
            &[false, false, false, false, true],
        );
        let ids = b.ids.clone();
        let spec = TableSpec::new("shapes", LabelType::Int);
        let options = DecodeOptions {
            size: Some((2, 3)),
            skip_errors: true,
        };
        let b = decode_stage(b, &spec, options, &ArenaPool::new(1)).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.indices, vec![10, 30]);
        assert!(matches!(&b.labels, Labels::Int(v) if v == &vec![1, 3]));
        assert_eq!(b.sample(0), PNG);
        assert_eq!(b.ids, [&ids[16..32], &ids[48..64]].concat());
        assert_eq!(b.skipped, vec![0, 20]);
        assert_eq!(b.skipped_ids, [&ids[0..16], &ids[32..48]].concat());
        let images = b.images.unwrap();
        assert_eq!(images.pixels.len(), 2 * 2 * 3 * 3);
        assert_eq!(images.offsets, vec![0, 18, 36]);
        assert_eq!(images.shapes, vec![(2, 3), (2, 3)]);
    }
}
