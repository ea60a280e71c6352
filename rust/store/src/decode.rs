//! The decode stage of the fetch engine: turns a batch's encoded images into
//! RGB pixels on the rayon pool, so decoding overlaps the reads of later batches.

use crate::batch::{compact_ragged, ArenaPool, Batch, Images};
use crate::engine::DecodeOptions;
use crate::error::{Result, StoreError};
use crate::TableSpec;
use crs4_cassandra_decode::decode_batch;
use std::sync::Arc;
use uuid::Uuid;

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
