//! Whole images from Pillow decode as Pillow decodes them; the same images cut
//! short anywhere fail to decode, instead of coming out partly grey.
//!
//! The images and Pillow's decoding of each (`NAME.rgb`) are written by
//! `tests/data/make_fixtures.py`.

use crs4_cassandra_decode::{decode_batch, decode_rgb, DecodeError};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("data/", $name)) as &[u8],
            include_bytes!(concat!("data/", $name, ".rgb")) as &[u8],
        )
    };
}

const JPEGS: [(&str, &[u8], &[u8]); 6] = [
    fixture!("baseline.jpg"),
    fixture!("baseline444.jpg"),
    fixture!("progressive.jpg"),
    fixture!("restart.jpg"),
    fixture!("gray.jpg"),
    fixture!("cmyk.jpg"),
];

const PNGS: [(&str, &[u8], &[u8]); 4] = [
    fixture!("rgb.png"),
    fixture!("rgba.png"),
    fixture!("gray.png"),
    fixture!("palette.png"),
];

const SIZE: (u32, u32) = (61, 47);

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as i64 - y as i64).unsigned_abs())
        .sum();
    total as f64 / a.len() as f64
}

#[test]
fn whole_images_decode_as_pillow_decodes_them() {
    for (name, bytes, pillow) in JPEGS.iter().chain(&PNGS) {
        let img = decode_rgb(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((img.width, img.height), SIZE, "{name}");
        let diff = mean_abs_diff(&img.pixels, pillow);
        // JPEG decoders differ by rounding (CMYK by its conversion); PNG is exact.
        let tolerance = if name.ends_with(".png") { 0.0 } else { 2.0 };
        assert!(
            diff <= tolerance,
            "{name}: mean difference from Pillow {diff}"
        );
    }
}

/// Where to cut `bytes`: at 10%, 50% and 90%, and just before its last
/// `tail` bytes (the EOI marker, the IEND chunk), and one byte short.
fn cuts(bytes: &[u8], tail: usize) -> Vec<usize> {
    let n = bytes.len();
    vec![n / 10, n / 2, n * 9 / 10, n - tail, n - 1]
}

fn assert_truncated(name: &str, cut: usize, result: Result<impl std::fmt::Debug, DecodeError>) {
    match result {
        Err(DecodeError::Jpeg(m) | DecodeError::Png(m)) => {
            assert!(m.contains("truncated"), "{name} cut at {cut}: {m}")
        }
        other => panic!("{name} cut at {cut} bytes: {other:?}"),
    }
}

#[test]
fn jpegs_cut_anywhere_fail() {
    for (name, bytes, _) in JPEGS {
        assert_eq!(
            &bytes[bytes.len() - 2..],
            [0xFF, 0xD9],
            "{name} ends with EOI"
        );
        for cut in cuts(bytes, 2) {
            assert_truncated(name, cut, decode_rgb(&bytes[..cut]));
        }
    }
}

#[test]
fn pngs_cut_anywhere_fail() {
    for (name, bytes, _) in PNGS {
        assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND", "{name}");
        for cut in cuts(bytes, 12) {
            assert_truncated(name, cut, decode_rgb(&bytes[..cut]));
        }
    }
}

#[test]
fn every_cut_of_a_progressive_and_a_restart_jpeg_fails() {
    for (name, bytes, _) in [JPEGS[2], JPEGS[3]] {
        for cut in 2..bytes.len() {
            assert!(decode_rgb(&bytes[..cut]).is_err(), "{name} cut at {cut}");
        }
    }
}

#[test]
fn bytes_after_the_end_are_ignored() {
    let (name, bytes, pillow) = JPEGS[0];
    let mut padded = bytes.to_vec();
    padded.extend_from_slice(&[0u8; 100]);
    assert_eq!(
        decode_rgb(&padded).unwrap().pixels,
        decode_rgb(bytes).unwrap().pixels,
        "{name}"
    );
    assert!(mean_abs_diff(&decode_rgb(&padded).unwrap().pixels, pillow) <= 2.0);
}

#[test]
fn a_batch_reports_the_truncated_samples_at_both_sizes() {
    let (_, jpeg, _) = JPEGS[0];
    let (_, png, _) = PNGS[0];
    let samples: Vec<&[u8]> = vec![jpeg, &jpeg[..jpeg.len() / 2], png, &png[..png.len() - 12]];
    let mut out = Vec::new();
    for size in [None, Some((16, 16))] {
        let d = decode_batch(&samples, size, &mut out);
        let failed: Vec<bool> = d.errors.iter().map(Option::is_some).collect();
        assert_eq!(
            failed,
            [false, true, false, true],
            "{size:?}: {:?}",
            d.errors
        );
    }
}
