//! Transforms applied once, at ingest: resizing the shorter side, cropping
//! the centre square, and re-encoding (JPEG at a quality, or non-JPEG inputs
//! to JPEG). An image decodes with this crate's decoder, is resized with
//! fast_image_resize and encoded with jpeg-encoder (JPEG) or zune-png (PNG).
//!
//! Choices, as a Pillow or torchvision user expects them:
//! - The resize filter is Catmull-Rom, the cubic convolution (a = -0.5) that
//!   Pillow's `Image.resize` uses by default (`Resampling.BICUBIC`), with its
//!   support widened by the scale when downscaling (antialiased, as Pillow).
//! - `resize_shorter = N` gives the shorter side N and the longer side
//!   `floor(N * long / short)`, as `torchvision.transforms.Resize(N)`; an image
//!   whose shorter side is N or less is never upscaled: it keeps its size.
//! - `center_crop` crops the centre square, of the shorter side after the
//!   resize (N x N when the image was resized), its offset rounded as
//!   `torchvision.transforms.CenterCrop` rounds it.
//! - Outputs are 8-bit RGB: a grey image is stored as RGB, alpha is dropped
//!   (as Pillow's `convert("RGB")`), EXIF and ICC segments are not kept.
//! - A JPEG input stays JPEG, a PNG input stays PNG (lossless) unless
//!   `to_jpeg`; JPEG outputs use `jpeg_quality`, else [`DEFAULT_JPEG_QUALITY`].
//! - An image is re-encoded only when its pixels change (resized, cropped), a
//!   JPEG when `jpeg_quality` is given, a PNG when `to_jpeg`: otherwise its
//!   bytes pass through unchanged, so an identity spec is byte-exact.

use crate::{decode_rgb, dimensions, sniff, DecodeError, Format, RgbImage};
use fast_image_resize as fr;
use std::borrow::Cow;
use thiserror::Error;

/// The quality of JPEG outputs when `jpeg_quality` is not given.
pub const DEFAULT_JPEG_QUALITY: u8 = 90;

/// What to do to each image; `TransformSpec::default()` does nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransformSpec {
    /// Shorter side to this many pixels (aspect kept, never upscaled).
    pub resize_shorter: Option<u32>,
    /// After the resize, keep the centre square.
    pub center_crop: bool,
    /// Re-encode JPEGs (and JPEG outputs) at this quality, 1 to 100.
    pub jpeg_quality: Option<u8>,
    /// Encode non-JPEG inputs (PNG) as JPEG.
    pub to_jpeg: bool,
}

/// Why one image could not be transformed. The caller adds which one.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TransformError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("cannot encode the {width}x{height} result as {format}: {reason}")]
    Encode {
        width: u32,
        height: u32,
        format: &'static str,
        reason: String,
    },
    #[error("invalid transform: {0}")]
    Invalid(String),
}

impl TransformSpec {
    pub fn is_identity(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the parameters: a size of 1 or more, a quality in 1..=100.
    pub fn check(&self) -> Result<(), TransformError> {
        if self.resize_shorter == Some(0) {
            return Err(TransformError::Invalid(
                "resize_shorter must be 1 or more, got 0".into(),
            ));
        }
        if let Some(q) = self.jpeg_quality {
            if !(1..=100).contains(&q) {
                return Err(TransformError::Invalid(format!(
                    "jpeg_quality must be in 1..=100, got {q}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the images' sizes change (their masks would have to follow).
    pub fn changes_geometry(&self) -> bool {
        self.resize_shorter.is_some() || self.center_crop
    }

    /// The spec as `resize_shorter=256,center_crop,jpeg_quality=90,to_jpeg`
    /// ("identity" for none), for reports and split-file provenance.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.resize_shorter {
            parts.push(format!("resize_shorter={n}"));
        }
        if self.center_crop {
            parts.push("center_crop".into());
        }
        if let Some(q) = self.jpeg_quality {
            parts.push(format!("jpeg_quality={q}"));
        }
        if self.to_jpeg {
            parts.push("to_jpeg".into());
        }
        if parts.is_empty() {
            "identity".into()
        } else {
            parts.join(",")
        }
    }

    /// The size (width, height) after the resize, before any crop.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let Some(n) = self.resize_shorter else {
            return (width, height);
        };
        let short = width.min(height);
        if short <= n {
            return (width, height);
        }
        let long = |l: u32| ((u64::from(l) * u64::from(n)) / u64::from(short)).max(1) as u32;
        if width <= height {
            (n, long(height))
        } else {
            (long(width), n)
        }
    }

    /// The region (left, top, width, height) of the resized image that is kept.
    pub fn crop_box(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        if !self.center_crop {
            return (0, 0, width, height);
        }
        let side = width.min(height);
        (
            centre_offset(width - side),
            centre_offset(height - side),
            side,
            side,
        )
    }

    /// The size (width, height) of the stored image of a `width`x`height` input.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (w, h) = self.resized_size(width, height);
        let (_, _, cw, ch) = self.crop_box(w, h);
        (cw, ch)
    }
}

/// `round(extra / 2)` with Python's rounding (half to even), as torchvision's
/// CenterCrop places its box.
fn centre_offset(extra: u32) -> u32 {
    let half = extra / 2;
    if extra % 2 == 0 || half % 2 == 0 {
        half
    } else {
        half + 1
    }
}

/// Transforms one encoded image (see the module's documentation); an
/// identity spec, or one that leaves this image as it is, returns the input.
pub fn apply(bytes: &[u8], spec: &TransformSpec) -> Result<Vec<u8>, TransformError> {
    apply_cow(bytes, spec).map(Cow::into_owned)
}

/// As [`apply`], borrowing the input when it passes through unchanged.
pub fn apply_cow<'a>(bytes: &'a [u8], spec: &TransformSpec) -> Result<Cow<'a, [u8]>, TransformError> {
    if spec.is_identity() {
        return Ok(Cow::Borrowed(bytes));
    }
    spec.check()?;
    let format = sniff(bytes)?;
    let (w, h) = dimensions(bytes)?;
    let (rw, rh) = spec.resized_size(w, h);
    let (left, top, cw, ch) = spec.crop_box(rw, rh);
    let geometry = (rw, rh) != (w, h) || (cw, ch) != (rw, rh);
    let to_jpeg = format == Format::Jpeg || spec.to_jpeg;
    let reencode = geometry
        || (format == Format::Jpeg && spec.jpeg_quality.is_some())
        || (format != Format::Jpeg && spec.to_jpeg);
    if !reencode {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut img = decode_rgb(bytes)?;
    if (rw, rh) != (w, h) {
        img = resize(&img, rw, rh)?;
    }
    if (cw, ch) != (rw, rh) {
        img = crop(&img, left, top, cw, ch);
    }
    let out = if to_jpeg {
        encode_jpeg(&img, spec.jpeg_quality.unwrap_or(DEFAULT_JPEG_QUALITY))?
    } else {
        encode_png(&img)?
    };
    Ok(Cow::Owned(out))
}

/// Resizes with Pillow's default filter (see the module's documentation).
pub fn resize(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage, TransformError> {
    let fail = |reason: String| {
        TransformError::Decode(DecodeError::Resize {
            width: img.width,
            height: img.height,
            reason,
        })
    };
    let src = fr::images::ImageRef::new(img.width, img.height, &img.pixels, fr::PixelType::U8x3)
        .map_err(|e| fail(e.to_string()))?;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let mut dst = fr::images::Image::from_slice_u8(width, height, &mut pixels, fr::PixelType::U8x3)
        .map_err(|e| fail(e.to_string()))?;
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| fail(e.to_string()))?;
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

fn crop(img: &RgbImage, left: u32, top: u32, width: u32, height: u32) -> RgbImage {
    let stride = img.width as usize * 3;
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for row in top..top + height {
        let start = row as usize * stride + left as usize * 3;
        pixels.extend_from_slice(&img.pixels[start..start + width as usize * 3]);
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

/// Baseline JPEG, Huffman tables optimised for the image; chroma subsampled
/// 4:2:0 (box-averaged) below quality 90, as libjpeg's defaults do.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, TransformError> {
    let fail = |reason: String| TransformError::Encode {
        width: img.width,
        height: img.height,
        format: "JPEG",
        reason,
    };
    let (Ok(w), Ok(h)) = (u16::try_from(img.width), u16::try_from(img.height)) else {
        return Err(fail("JPEG allows at most 65535 pixels a side".into()));
    };
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    enc.set_optimized_huffman_tables(true);
    enc.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
    enc.encode(&img.pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| fail(e.to_string()))?;
    Ok(out)
}

/// 8-bit RGB PNG.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, TransformError> {
    use zune_core::bit_depth::BitDepth;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::EncoderOptions;
    let options = EncoderOptions::new(
        img.width as usize,
        img.height as usize,
        ColorSpace::RGB,
        BitDepth::Eight,
    );
    let mut out = Vec::new();
    zune_png::PngEncoder::new(&img.pixels, options)
        .encode(&mut out)
        .map_err(|e| TransformError::Encode {
            width: img.width,
            height: img.height,
            format: "PNG",
            reason: format!("{e:?}"),
        })?;
    Ok(out)
}

/// Why `bytes` is not an image this crate decodes, in the words ingest
/// reports: "empty file (0 bytes)", "not a JPEG or PNG image (...)",
/// "truncated image (...)" or "cannot decode (...)". Decodes it whole.
pub fn check_image(bytes: &[u8]) -> Result<(u32, u32), String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    decode_rgb(bytes)
        .map(|img| (img.width, img.height))
        .map_err(|e| rejection(&TransformError::Decode(e)))
}

/// The reason ingest gives for an image that failed to decode or transform.
pub fn rejection(e: &TransformError) -> String {
    match e {
        TransformError::Decode(DecodeError::UnknownFormat(head)) => {
            format!("not a JPEG or PNG image (first bytes {head})")
        }
        TransformError::Decode(DecodeError::Jpeg(m)) if m.starts_with("truncated: ") => {
            format!("truncated image (JPEG: {})", &m["truncated: ".len()..])
        }
        TransformError::Decode(DecodeError::Png(m)) if m.starts_with("truncated: ") => {
            format!("truncated image (PNG: {})", &m["truncated: ".len()..])
        }
        TransformError::Decode(d) => format!("cannot decode ({d})"),
        other => format!("cannot transform ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A width x height RGB image with smooth gradients and a sharp edge.
    fn pattern(width: u32, height: u32) -> RgbImage {
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            for x in 0..width {
                let edge = if x > width / 3 { 200 } else { 30 };
                pixels.extend_from_slice(&[
                    (x * 255 / width.max(1)) as u8,
                    (y * 255 / height.max(1)) as u8,
                    edge,
                ]);
            }
        }
        RgbImage {
            width,
            height,
            pixels,
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        encode_png(&pattern(width, height)).unwrap()
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        encode_jpeg(&pattern(width, height), 95).unwrap()
    }

    fn spec(resize: Option<u32>, crop: bool, q: Option<u8>, to_jpeg: bool) -> TransformSpec {
        TransformSpec {
            resize_shorter: resize,
            center_crop: crop,
            jpeg_quality: q,
            to_jpeg,
        }
    }

    #[test]
    fn identity_returns_the_input_bytes() {
        for bytes in [png(10, 7), jpeg(10, 7), b"not even an image".to_vec()] {
            assert_eq!(apply(&bytes, &TransformSpec::default()).unwrap(), bytes);
        }
    }

    #[test]
    fn sizes_follow_torchvision_and_never_upscale() {
        let s = spec(Some(256), false, None, false);
        assert_eq!(s.output_size(500, 375), (341, 256));
        assert_eq!(s.output_size(375, 500), (256, 341));
        assert_eq!(s.output_size(200, 100), (200, 100), "smaller: kept");
        assert_eq!(s.output_size(256, 999), (256, 999), "shorter side already N");
        let c = spec(Some(256), true, None, false);
        assert_eq!(c.output_size(500, 375), (256, 256));
        assert_eq!(c.output_size(200, 100), (100, 100), "crop of an image kept small");
        assert_eq!(spec(None, true, None, false).output_size(9, 4), (4, 4));
        // torchvision's CenterCrop: round((w - side) / 2), half to even.
        assert_eq!(c.crop_box(341, 256), (42, 0, 256, 256)); // 42.5 -> 42
        assert_eq!(c.crop_box(259, 256), (2, 0, 256, 256)); // 1.5 -> 2
        assert_eq!(c.crop_box(256, 260), (0, 2, 256, 256));
    }

    #[test]
    fn resized_png_stays_png_and_has_the_size() {
        let out = apply(&png(40, 30), &spec(Some(12), false, None, false)).unwrap();
        assert_eq!(sniff(&out).unwrap(), Format::Png);
        assert_eq!(dimensions(&out).unwrap(), (16, 12));
        let out = apply(&png(40, 30), &spec(Some(12), true, None, true)).unwrap();
        assert_eq!(sniff(&out).unwrap(), Format::Jpeg);
        assert_eq!(dimensions(&out).unwrap(), (12, 12));
    }

    #[test]
    fn resize_is_close_to_the_source_and_keeps_flat_colour() {
        // A flat image stays flat (the filter's weights sum to one).
        let flat = RgbImage {
            width: 50,
            height: 40,
            pixels: [7u8, 120, 240].repeat(50 * 40),
        };
        let small = resize(&flat, 13, 10).unwrap();
        assert!(small.pixels.chunks(3).all(|p| p == [7, 120, 240]));
        // A gradient halves to the same gradient, up to rounding.
        let src = pattern(64, 64);
        let half = resize(&src, 32, 32).unwrap();
        let far = (0..32u32)
            .flat_map(|y| (0..32u32).map(move |x| (x, y)))
            .filter(|&(x, _)| !(9..=12).contains(&x)) // away from the sharp edge
            .map(|(x, y)| {
                let a = half.pixels[((y * 32 + x) * 3 + 1) as usize] as i32;
                let b = src.pixels[((2 * y * 64 + 2 * x) * 3 + 1) as usize] as i32;
                (a - b).abs()
            })
            .max()
            .unwrap();
        assert!(far <= 3, "green gradient differs by {far}");
    }

    #[test]
    fn jpeg_quality_reencodes_only_jpegs_and_to_jpeg_only_others() {
        let j = jpeg(32, 32);
        let p = png(32, 32);
        let q = spec(None, false, Some(30), false);
        let low = apply(&j, &q).unwrap();
        assert_ne!(low, j);
        assert!(low.len() < j.len(), "quality 30 is smaller than 95");
        assert_eq!(apply(&p, &q).unwrap(), p, "a PNG is not a JPEG to re-encode");
        let t = spec(None, false, None, true);
        assert_eq!(apply(&j, &t).unwrap(), j, "a JPEG is JPEG already");
        let converted = apply(&p, &t).unwrap();
        assert_eq!(sniff(&converted).unwrap(), Format::Jpeg);
        let back = decode_rgb(&converted).unwrap();
        let orig = decode_rgb(&p).unwrap();
        let mean: f64 = back
            .pixels
            .iter()
            .zip(&orig.pixels)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / orig.pixels.len() as f64;
        assert!(mean < 4.0, "quality 90 round trip differs by {mean}");
        // An image already small enough passes through unchanged.
        assert_eq!(apply(&j, &spec(Some(64), false, None, false)).unwrap(), j);
    }

    #[test]
    fn grey_and_alpha_pngs_become_rgb() {
        let grey = {
            let options = zune_core::options::EncoderOptions::new(
                4,
                2,
                zune_core::colorspace::ColorSpace::Luma,
                zune_core::bit_depth::BitDepth::Eight,
            );
            let mut out = Vec::new();
            let px = [0u8, 50, 100, 150, 200, 250, 25, 75];
            zune_png::PngEncoder::new(&px, options)
                .encode(&mut out)
                .unwrap();
            out
        };
        let rgba = {
            let options = zune_core::options::EncoderOptions::new(
                2,
                2,
                zune_core::colorspace::ColorSpace::RGBA,
                zune_core::bit_depth::BitDepth::Eight,
            );
            let mut out = Vec::new();
            let px = [10u8, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 4];
            zune_png::PngEncoder::new(&px, options)
                .encode(&mut out)
                .unwrap();
            out
        };
        let s = spec(None, true, None, false);
        let g = decode_rgb(&apply(&grey, &s).unwrap()).unwrap();
        assert_eq!((g.width, g.height), (2, 2));
        // Centre square of a 4x2 image: columns 1..3.
        assert_eq!(g.pixels, [50, 50, 50, 100, 100, 100, 250, 250, 250, 25, 25, 25]);
        let out = apply(&rgba, &spec(None, false, None, true)).unwrap();
        let c = decode_rgb(&out).unwrap();
        assert_eq!((c.width, c.height), (2, 2));
        // Alpha dropped, colours kept (up to JPEG's loss on a 2x2 image).
        let want = [10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3];
        let worst = c
            .pixels
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as i32 - b).abs())
            .max()
            .unwrap();
        assert!(worst <= 25, "{:?}", c.pixels);
    }

    #[test]
    fn bad_inputs_are_named() {
        let s = spec(Some(8), false, None, false);
        let e = apply(b"GIF89a....", &s).unwrap_err();
        assert_eq!(
            rejection(&e),
            "not a JPEG or PNG image (first bytes 47 49 46 38)"
        );
        let j = jpeg(32, 32);
        let e = apply(&j[..j.len() / 2], &s).unwrap_err();
        assert!(
            rejection(&e).starts_with("truncated image (JPEG: the data ("),
            "{}",
            rejection(&e)
        );
        assert_eq!(check_image(b"").unwrap_err(), "empty file (0 bytes)");
        assert_eq!(check_image(&j).unwrap(), (32, 32));
        assert!(spec(None, false, Some(0), false).check().is_err());
        assert!(spec(Some(0), false, None, false).check().is_err());
    }
}
