//! A generated image dataset in a local store, for demos and tests where real
//! data cannot be downloaded: one coloured shape on a noisy background per
//! image, and the class is the shape, so a small network learns it. The same
//! idea as the Python `crs4_cassandra.testing` generator.

use crate::error::{Error, Result};
use crs4_cassandra_core::{LabelType, SplitFile, SplitHeader};
use crs4_cassandra_store::local::LocalStore;
use crs4_cassandra_store::{LabelValue, MetadataRow, SampleRow, TableSpec};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use uuid::Uuid;

/// The class names, in label order.
pub const SHAPES: [&str; 10] = [
    "circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star", "halfmoon", "frame",
];

/// Encoding of the generated images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JPEG at quality 90, like photographs.
    Jpeg,
    /// Lossless: decoded pixels equal the generated ones.
    Png,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct ShapesSpec {
    /// Number of classes, at most 10.
    pub classes: usize,
    pub per_class: usize,
    /// Images are `size` x `size`.
    pub size: u32,
    /// Fraction of each class in the "val" split; the rest is "train".
    pub val_fraction: f64,
    pub seed: u64,
    pub encoding: Encoding,
}

impl Default for ShapesSpec {
    fn default() -> Self {
        Self {
            classes: 10,
            per_class: 50,
            size: 64,
            val_fraction: 0.2,
            seed: 0,
            encoding: Encoding::Jpeg,
        }
    }
}

fn in_polygon(pts: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Whether pixel centre (x, y) is inside `shape` centred at (cx, cy) with radius r.
fn inside(shape: &str, x: f32, y: f32, cx: f32, cy: f32, r: f32) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    let w = (r / 3.0).max(2.0);
    let d = (dx * dx + dy * dy).sqrt();
    match shape {
        "circle" => d <= r,
        "square" => dx.abs() <= r && dy.abs() <= r,
        "triangle" => in_polygon(&[(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], x, y),
        "cross" => (dx.abs() <= r && dy.abs() <= w / 2.0) || (dy.abs() <= r && dx.abs() <= w / 2.0),
        "ring" => d <= r && d >= r - w,
        "diamond" => dx.abs() + dy.abs() <= r,
        "bar" => dx.abs() <= r && dy.abs() <= r / 4.0,
        "star" => {
            let pts: Vec<(f32, f32)> = (0..10)
                .map(|k| {
                    let a = std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
                    let rr = if k % 2 == 0 { r } else { r * 0.45 };
                    (cx + rr * a.cos(), cy - rr * a.sin())
                })
                .collect();
            in_polygon(&pts, x, y)
        }
        "halfmoon" => d <= r && dy >= 0.0,
        "frame" => dx.abs() <= r && dy.abs() <= r && (dx.abs() >= r - w || dy.abs() >= r - w),
        _ => false,
    }
}

/// One `size` x `size` image of `shape` (one of [`SHAPES`]).
pub fn shape_image(rng: &mut impl Rng, shape: &str, size: u32) -> RgbImage {
    let s = size as f32;
    let base: [f32; 3] = std::array::from_fn(|_| rng.random_range(40.0..216.0));
    let colour: [u8; 3] = std::array::from_fn(|c| {
        ((255.0 - base[c] + rng.random_range(-20.0..20.0)) as i32).rem_euclid(256) as u8
    });
    let r = rng.random_range(0.18..0.32) * s;
    let cx = rng.random_range(r..s - r);
    let cy = rng.random_range(r..s - r);
    let noise = 12.0;
    RgbImage::from_fn(size, size, |x, y| {
        let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
        if inside(shape, fx, fy, cx, cy, r) {
            image::Rgb(colour)
        } else {
            let grad = (fx / s - 0.5) * 60.0;
            image::Rgb(std::array::from_fn(|c| {
                (base[c] + grad + rng.random_range(-noise..noise)).clamp(0.0, 255.0) as u8
            }))
        }
    })
}

fn encode(img: &RgbImage, encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let result = match encoding {
        Encoding::Jpeg => JpegEncoder::new_with_quality(&mut out, 90).write_image(
            img,
            w,
            h,
            ExtendedColorType::Rgb8,
        ),
        Encoding::Png => PngEncoder::new(&mut out).write_image(img, w, h, ExtendedColorType::Rgb8),
    };
    result.expect("encoding into memory does not fail");
    out
}

/// Creates (or overwrites) `table` and `<table>_metadata` in the local store at
/// `store_dir` (created if missing), fills them with generated images with int
/// labels, and writes a split file with "train" and "val" splits.
pub fn write_shapes_store(
    store_dir: &Path,
    table: &str,
    split_path: &Path,
    spec: &ShapesSpec,
) -> Result<SplitFile> {
    if spec.classes == 0 || spec.classes > SHAPES.len() || spec.size < 8 {
        return Err(Error::InvalidArgument(format!(
            "shapes need 1..={} classes and a size of at least 8, got {} and {}",
            SHAPES.len(),
            spec.classes,
            spec.size
        )));
    }
    let store = LocalStore::open(store_dir, true)?;
    let metadata_table = format!("{table}_metadata");
    store.create_tables_sync(
        &TableSpec::new(table, LabelType::Int),
        &metadata_table,
        true,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n_val = ((spec.per_class as f64) * spec.val_fraction).round() as usize;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    let mut metadata = Vec::new();
    for (label, shape) in SHAPES.iter().enumerate().take(spec.classes) {
        for k in 0..spec.per_class {
            let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
            let img = shape_image(&mut rng, shape, spec.size);
            let split = if k < n_val { "val" } else { "train" };
            if k < n_val { &mut val } else { &mut train }.extend_from_slice(id.as_bytes());
            rows.push(SampleRow {
                id,
                label: LabelValue::Int(label as i32),
                data: encode(&img, spec.encoding),
            });
            metadata.push(MetadataRow {
                id,
                label: Some(label as i32),
                label_name: Some(shape.to_string()),
                path: Some(format!("{shape}/{k}")),
                split: Some(split.into()),
            });
        }
    }
    store.put_samples_sync(table, &rows)?;
    store.put_metadata_sync(&metadata_table, &metadata)?;
    let mut file = SplitFile::new(SplitHeader {
        store: Some(format!("local:{}", store_dir.display())),
        table: table.to_string(),
        metadata_table: Some(metadata_table),
        id_col: "id".into(),
        label_col: "label".into(),
        data_col: "data".into(),
        label_type: LabelType::Int,
        classes: SHAPES[..spec.classes]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        info: Default::default(),
    });
    file.add_split("train", train)?;
    file.add_split("val", val)?;
    file.save(split_path)?;
    Ok(file)
}

/// Uuids of a split, in file order.
pub fn split_uuids(file: &SplitFile, name: &str) -> Result<Vec<Uuid>> {
    Ok(file
        .uuids(name)?
        .chunks_exact(16)
        .map(|c| Uuid::from_bytes(c.try_into().expect("16 bytes")))
        .collect())
}
