mod common;

use common::{shapes_store, with_timeout, TestStore};
use crs4_cassandra_core::LabelType;
use crs4_cassandra_store::local::LocalStore;
use crs4_cassandra_store::{LabelValue, SampleRow, TableSpec};
use crs4_cassandra_tch::synthetic::{split_uuids, Encoding};
use crs4_cassandra_tch::{Error, Images, Loader, LoaderState, TchBatch};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tch::{Kind, Tensor};
use uuid::Uuid;

fn bytes_of(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t).expect("uint8 tensor")
}

fn i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).expect("int64 tensor")
}

fn bools(t: &Tensor) -> Vec<bool> {
    Vec::<bool>::try_from(t).expect("bool tensor")
}

fn loader(s: &TestStore, batch_size: usize) -> crs4_cassandra_tch::LoaderBuilder {
    Loader::builder(&s.url, "shapes")
        .split_file(&s.split, "train")
        .batch_size(batch_size)
}

fn epoch_ids(loader: &Loader) -> Vec<Vec<(Uuid, bool)>> {
    loader
        .iter()
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            b.ids.iter().copied().zip(bools(&b.is_pad)).collect()
        })
        .collect()
}

fn labels_by_id(s: &TestStore) -> HashMap<Uuid, i64> {
    let store = LocalStore::open(Path::new(s.url.strip_prefix("local:").unwrap()), false).unwrap();
    store
        .scan_metadata_sync("shapes_metadata")
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.label.unwrap() as i64))
        .collect()
}

#[test]
fn encoded_batches_hold_the_stored_samples_once_each() {
    with_timeout(60, || {
        let s = shapes_store(3, 8, Encoding::Png);
        let train = split_uuids(&s.file, "train").unwrap();
        assert_eq!(train.len(), 18);
        let truth = labels_by_id(&s);
        let l = loader(&s, 4).shuffle(false).build().unwrap();
        assert_eq!((l.len(), l.num_samples()), (5, 18));
        let mut seen = HashSet::new();
        let mut pads = 0;
        for (j, b) in l.iter().unwrap().enumerate() {
            let b: TchBatch = b.unwrap();
            assert_eq!((b.position, b.len()), (j, 4));
            assert_eq!(b.data.kind(), Kind::Uint8);
            assert_eq!(b.offsets.size(), vec![5]);
            let offsets = i64s(&b.offsets);
            let data = bytes_of(&b.data);
            assert_eq!(offsets[4] as usize, data.len());
            let labels = i64s(b.labels.as_ref().unwrap());
            let indices = i64s(&b.indices);
            for (i, (&id, pad)) in b.ids.iter().zip(bools(&b.is_pad)).enumerate() {
                assert_eq!(train[indices[i] as usize], id);
                assert_eq!(labels[i], truth[&id]);
                let sample = &data[offsets[i] as usize..offsets[i + 1] as usize];
                let img = image::load_from_memory(sample).unwrap();
                assert_eq!((img.width(), img.height()), (32, 32));
                if pad {
                    pads += 1;
                } else {
                    assert!(seen.insert(id), "{id} served twice");
                }
            }
        }
        assert_eq!(seen.len(), 18);
        assert_eq!(pads, 2);
    });
}

#[test]
fn an_epoch_reports_what_it_delivered_and_how_long_the_loop_waited() {
    with_timeout(60, || {
        let s = shapes_store(3, 8, Encoding::Png);
        let l = loader(&s, 4).shuffle(false).build().unwrap();
        assert!(l.stats().is_none());
        let mut it = l.iter().unwrap();
        let mut bytes = 0;
        for _ in 0..2 {
            let b = it.next().unwrap().unwrap();
            bytes += b.data.size()[0] as u64;
            // A loop slower than the store: it rarely waits.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let now = it.stats().current.expect("an epoch under way");
        assert_eq!((now.epoch, now.batches, now.samples), (0, 2, 8));
        assert_eq!(now.bytes, bytes);
        assert!(!now.complete);
        for b in it.by_ref() {
            b.unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(it);
        let done = l.stats().expect("the epoch's figures");
        // 18 samples and 2 pads in 5 batches.
        assert_eq!((done.batches, done.samples, done.skipped), (5, 18, 0));
        assert!(done.complete);
        assert!(done.seconds >= 0.2, "{done:?}");
        assert!(done.stall < 0.5, "{done:?}");
        assert!(
            done.batch_reads >= 5 && done.batch_read_ms.p50.is_some(),
            "{done:?}"
        );
        assert!(done.window.max >= 1.0, "{done:?}");
        assert!((done.samples_per_s - 18.0 / done.seconds).abs() < 1e-6);
    });
}

#[test]
fn decoded_images_are_the_stored_pixels() {
    with_timeout(60, || {
        let s = shapes_store(2, 8, Encoding::Png);
        let l = loader(&s, 5).images(Images::U8Nhwc).build().unwrap();
        let mean = [0.4, 0.5, 0.6];
        let std = [0.2, 0.25, 0.3];
        let n = loader(&s, 5)
            .images(Images::Normalized { mean, std })
            .build()
            .unwrap();
        let mut batches = 0;
        for (b, f) in l.iter().unwrap().zip(n.iter().unwrap()) {
            let (b, f) = (b.unwrap(), f.unwrap());
            let images = b.images.as_ref().unwrap();
            assert_eq!(images.size(), vec![5, 32, 32, 3]);
            assert_eq!(images.kind(), Kind::Uint8);
            let offsets = i64s(&b.offsets);
            let data = bytes_of(&b.data);
            for i in 0..b.len() {
                let sample = &data[offsets[i] as usize..offsets[i + 1] as usize];
                let expected = image::load_from_memory(sample)
                    .unwrap()
                    .into_rgb8()
                    .into_raw();
                assert_eq!(bytes_of(&images.get(i as i64).flatten(0, -1)), expected);
            }
            let x = f.images.as_ref().unwrap();
            assert_eq!(x.size(), vec![5, 3, 32, 32]);
            assert_eq!(x.kind(), Kind::Float);
            let scaled = images
                .permute([0, 3, 1, 2])
                .to_kind(Kind::Float)
                .divide_scalar(255.0);
            let reference = (scaled - Tensor::from_slice(&mean).view([1, 3, 1, 1]))
                / Tensor::from_slice(&std).view([1, 3, 1, 1]);
            let err = (x - reference).abs().max().double_value(&[]);
            assert!(err < 1e-5, "normalisation differs by {err}");
            batches += 1;
        }
        assert_eq!(batches, 3);
    });
}

#[test]
fn tensors_keep_their_batch_buffer_alive() {
    with_timeout(60, || {
        let s = shapes_store(4, 8, Encoding::Png);
        let l = loader(&s, 2).shuffle(false).window(1).build().unwrap();
        let mut it = l.iter().unwrap();
        let first = it.next().unwrap().unwrap();
        // A view outlives its batch; later batches recycle released buffers.
        let view = first.data.narrow(0, 0, first.data.size()[0]);
        let labels = first.labels.as_ref().unwrap().shallow_clone();
        let expected = bytes_of(&view);
        let expected_labels = i64s(&labels);
        drop(first);
        let rest: Vec<Vec<u8>> = it.map(|b| bytes_of(&b.unwrap().data)).collect();
        assert_eq!(rest.len(), l.len() - 1);
        assert_eq!(bytes_of(&view), expected);
        assert_eq!(i64s(&labels), expected_labels);
        assert!(rest.iter().all(|r| *r != expected));
    });
}

#[test]
fn ranks_share_the_epoch_without_overlap() {
    with_timeout(60, || {
        let s = shapes_store(3, 8, Encoding::Jpeg);
        let world = 3;
        let mut seen = HashSet::new();
        let mut counts = Vec::new();
        for rank in 0..world {
            let mut l = loader(&s, 4).rank(rank, world).seed(9).build().unwrap();
            l.set_epoch(1);
            let batches = epoch_ids(&l);
            counts.push(batches.len());
            for (id, pad) in batches.into_iter().flatten() {
                if !pad {
                    assert!(seen.insert(id), "{id} served twice");
                }
            }
        }
        assert_eq!(counts, vec![2, 2, 2]);
        assert_eq!(seen.len(), 18);
    });
}

#[test]
fn shuffle_follows_seed_and_epoch() {
    with_timeout(60, || {
        let s = shapes_store(3, 8, Encoding::Jpeg);
        let mut a = loader(&s, 3).seed(5).build().unwrap();
        let b = loader(&s, 3).seed(5).build().unwrap();
        assert_eq!(epoch_ids(&a), epoch_ids(&b));
        a.set_epoch(1);
        assert_ne!(epoch_ids(&a), epoch_ids(&b));
        let unordered = loader(&s, 3).seed(5).ordered(false).build().unwrap();
        let mut x: Vec<_> = epoch_ids(&unordered);
        let mut y = epoch_ids(&b);
        x.sort();
        y.sort();
        assert_eq!(x, y, "completion order changes no batch");
    });
}

#[test]
fn a_saved_state_resumes_with_the_next_batch() {
    with_timeout(60, || {
        let s = shapes_store(3, 8, Encoding::Jpeg);
        let mut full = loader(&s, 2).seed(3).build().unwrap();
        full.set_epoch(2);
        let all = epoch_ids(&full);
        assert_eq!(all.len(), 9);

        let mut first = loader(&s, 2).seed(3).build().unwrap();
        first.set_epoch(2);
        let mut it = first.iter().unwrap();
        let head: Vec<_> = it.by_ref().take(4).map(|b| b.unwrap().ids).collect();
        let json = it.state().unwrap().to_json();
        drop(it);
        let saved: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(saved["consumed_samples"], 8);
        assert_eq!(saved["epoch"], 2);
        assert_eq!(saved["version"], 2);
        assert_eq!(head.len(), 4);

        let mut resumed = loader(&s, 2).seed(3).build().unwrap();
        resumed
            .load_state(&LoaderState::from_json(&json).unwrap())
            .unwrap();
        assert_eq!(resumed.epoch(), 2);
        assert_eq!(resumed.len(), 5);
        assert_eq!(epoch_ids(&resumed), all[4..].to_vec());
        // The resume point belongs to its epoch only.
        resumed.set_epoch(3);
        assert_eq!(resumed.len(), 9);

        // On two ranks, the rest is re-dealt: every remaining sample once.
        let done: HashSet<Uuid> = all[..4].iter().flatten().map(|(id, _)| *id).collect();
        let mut rest = HashSet::new();
        for rank in 0..2 {
            let mut l = loader(&s, 2).seed(3).rank(rank, 2).build().unwrap();
            l.load_state(&LoaderState::from_json(&json).unwrap())
                .unwrap();
            for (id, pad) in epoch_ids(&l).into_iter().flatten() {
                if !pad {
                    assert!(!done.contains(&id) && rest.insert(id), "{id} served twice");
                }
            }
        }
        assert_eq!(done.len() + rest.len(), 18);

        let mut other = loader(&s, 4).seed(3).build().unwrap();
        let err = other
            .load_state(&LoaderState::from_json(&json).unwrap())
            .unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");
        assert!(err.to_string().contains("batch_size"), "{err}");
        assert!(first.state(10).is_err());
    });
}

#[test]
fn stopping_an_epoch_early_releases_the_reader() {
    with_timeout(60, || {
        let s = shapes_store(4, 8, Encoding::Jpeg);
        let l = loader(&s, 2)
            .images(Images::U8Nhwc)
            .prefetch(1)
            .build()
            .unwrap();
        for _ in 0..3 {
            let mut it = l.iter().unwrap();
            let b = it.next().unwrap().unwrap();
            assert_eq!(b.images.as_ref().unwrap().size(), vec![2, 32, 32, 3]);
            drop(it);
        }
        assert_eq!(l.iter().unwrap().count(), l.len());
    });
}

#[test]
fn blob_and_missing_labels() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), true).unwrap();
        store
            .create_tables_sync(
                &TableSpec::new("masks", LabelType::Blob),
                "masks_metadata",
                false,
            )
            .unwrap();
        let ids: Vec<Uuid> = (0..5u8).map(|i| Uuid::from_bytes([i + 1; 16])).collect();
        let rows: Vec<SampleRow> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| SampleRow {
                id,
                label: LabelValue::Blob(vec![i as u8; i + 1]),
                data: vec![b'x'; 10 + i],
            })
            .collect();
        store.put_samples_sync("masks", &rows).unwrap();
        let url = format!("local:{}", dir.path().display());
        let l = Loader::builder(&url, "masks")
            .uuids(ids.clone())
            .label_type(LabelType::Blob)
            .batch_size(5)
            .shuffle(false)
            .build()
            .unwrap();
        let b = l.iter().unwrap().next().unwrap().unwrap();
        assert_eq!(
            i64s(b.label_offsets.as_ref().unwrap()),
            vec![0, 1, 3, 6, 10, 15]
        );
        assert_eq!(bytes_of(b.labels.as_ref().unwrap())[1..3], [1, 1]);
        assert_eq!(i64s(&b.offsets), vec![0, 10, 21, 33, 46, 60]);

        let unlabelled = Loader::builder(dir.path().to_str().unwrap(), "masks")
            .uuids(ids.clone())
            .label_type(LabelType::None)
            .batch_size(2)
            .build()
            .unwrap();
        let b = unlabelled.iter().unwrap().next().unwrap().unwrap();
        assert!(b.labels.is_none() && b.label_offsets.is_none());

        // Not images: decoding fails with the sample's uuid, and ends the epoch.
        let decoding = Loader::builder(&url, "masks")
            .uuids(ids[..2].to_vec())
            .label_type(LabelType::Blob)
            .batch_size(2)
            .shuffle(false)
            .images(Images::U8Nhwc)
            .build()
            .unwrap();
        let mut it = decoding.iter().unwrap();
        let err = it.next().unwrap().unwrap_err().to_string();
        assert!(err.contains(&ids[0].to_string()), "{err}");
        assert!(it.next().is_none());
        drop(it);

        // Or they are skipped, and reported.
        let skipping = Loader::builder(&url, "masks")
            .uuids(ids.clone())
            .label_type(LabelType::Blob)
            .batch_size(2)
            .shuffle(false)
            .images(Images::U8Nhwc)
            .skip_errors(true)
            .build()
            .unwrap();
        let b = skipping.iter().unwrap().next().unwrap().unwrap();
        assert_eq!(b.len(), 0);
        assert_eq!(b.skipped, vec![(0, ids[0]), (1, ids[1])]);
        assert_eq!(b.images.as_ref().unwrap().size()[0], 0);

        // A uuid not in the table.
        let missing = Uuid::from_bytes([99; 16]);
        let l = Loader::builder(&url, "masks")
            .uuids(vec![ids[0], missing])
            .label_type(LabelType::Blob)
            .batch_size(2)
            .build()
            .unwrap();
        let err = l.iter().unwrap().next().unwrap().unwrap_err();
        assert!(err.to_string().contains(&missing.to_string()), "{err}");
    });
}

#[test]
fn bad_options_fail_at_build() {
    with_timeout(60, || {
        let s = shapes_store(2, 4, Encoding::Jpeg);
        let msg = |r: crs4_cassandra_tch::Result<Loader>| match r {
            Ok(_) => panic!("built a loader from bad options"),
            Err(e) => e.to_string(),
        };
        let m = msg(Loader::builder(&s.url, "shapes")
            .split_file(&s.split, "train")
            .build());
        assert!(m.contains("batch_size"), "{m}");
        let m = msg(loader(&s, 2).rank(2, 2).build());
        assert!(m.contains("rank 2"), "{m}");
        let m = msg(Loader::builder(&s.url, "shapes")
            .split_file(&s.split, "test")
            .batch_size(2)
            .build());
        assert!(m.contains("\"test\"") && m.contains("train"), "{m}");
        let m = msg(Loader::builder(&s.url, "nope")
            .uuids(vec![])
            .batch_size(2)
            .build());
        assert!(m.contains("nope") && m.contains("shapes"), "{m}");
        let m = msg(Loader::builder(&s.url, "nope")
            .split_file(&s.split, "train")
            .batch_size(2)
            .build());
        assert!(m.contains("nope") && m.contains("shapes"), "{m}");
        let m = msg(Loader::builder("mongodb://h/ks", "shapes")
            .uuids(vec![])
            .batch_size(2)
            .build());
        assert!(m.contains("unsupported store URL"), "{m}");
        let m = msg(loader(&s, 2).resize(0, 4).build());
        assert!(m.contains("resize"), "{m}");
    });
}

#[test]
fn images_of_different_sizes_need_a_resize() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), true).unwrap();
        store
            .create_tables_sync(
                &TableSpec::new("mixed", LabelType::Int),
                "mixed_metadata",
                false,
            )
            .unwrap();
        let ids: Vec<Uuid> = (0..2u8).map(|i| Uuid::from_bytes([i + 1; 16])).collect();
        let rows: Vec<SampleRow> = [(8u32, 8u32), (4, 6)]
            .iter()
            .zip(&ids)
            .map(|(&(w, h), &id)| {
                let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
                let mut png = Vec::new();
                img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .unwrap();
                SampleRow {
                    id,
                    label: LabelValue::Int(1),
                    data: png,
                }
            })
            .collect();
        store.put_samples_sync("mixed", &rows).unwrap();
        let url = format!("local:{}", dir.path().display());
        let builder = Loader::builder(&url, "mixed")
            .uuids(ids.clone())
            .batch_size(2)
            .shuffle(false)
            .images(Images::U8Nhwc);
        let l = builder.clone().build().unwrap();
        let err = l.iter().unwrap().next().unwrap().unwrap_err();
        assert!(
            matches!(&err, Error::Decode { uuid, .. } if *uuid == ids[1]),
            "{err}"
        );
        assert!(err.to_string().contains("resize"), "{err}");
        let l = builder.resize(5, 7).build().unwrap();
        let b = l.iter().unwrap().next().unwrap().unwrap();
        let images = b.images.unwrap();
        assert_eq!(images.size(), vec![2, 5, 7, 3]);
        assert_eq!(bytes_of(&images.get(1).get(2).get(3)), vec![10, 20, 30]);
    });
}
