//! CPU image decoding: JPEG and PNG to 8-bit RGB (HWC), optionally resized, a
//! batch at a time on the rayon pool.
//!
//! Pure Rust, no I/O: the fetch engine hands it the encoded samples of a batch
//! and gets back one flat pixel buffer, so a batch's images stay one tensor.

pub mod transform;

use crs4_cassandra_core::ProcessOwned;
use fast_image_resize as fr;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;
use zune_png::PngDecoder;

/// Why one image could not be decoded. The caller adds which sample it was.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a JPEG or PNG image (first bytes {0})")]
    UnknownFormat(String),
    #[error("corrupt JPEG: {0}")]
    Jpeg(String),
    #[error("corrupt PNG: {0}")]
    Png(String),
    #[error("PNG colour space {0} is not supported")]
    Colorspace(String),
    #[error("cannot resize a {width}x{height} image: {reason}")]
    Resize {
        width: u32,
        height: u32,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

/// The format, from the magic bytes (the data column has no content type).
pub fn sniff(bytes: &[u8]) -> Result<Format, DecodeError> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        Ok(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(Format::Png)
    } else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(DecodeError::UnknownFormat(head.join(" ")))
    }
}

/// Checks that a JPEG is whole: its marker segments, and the entropy-coded
/// data of every scan, run up to an end-of-image (EOI) marker.
///
/// zune-jpeg, like browsers, decodes what a truncated file holds and fills
/// the rest with grey, without an error; so does a scan cut short. This walk
/// catches every cut: segments are skipped by their lengths (an EXIF
/// thumbnail's own EOI inside APP1 included), and a scan's data ends at the
/// first marker that is neither a stuffed 0xFF00 nor a restart marker. Bytes
/// after the EOI are ignored, as decoders do. It reads the bytes once, with
/// memchr, which costs little next to decoding them.
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<(), DecodeError> {
    let truncated = |inside: &str| {
        DecodeError::Jpeg(format!(
            "truncated: the data ({} bytes) ends inside {inside}, before the end-of-image (EOI) marker",
            bytes.len()
        ))
    };
    let len = bytes.len();
    let mut i = 2; // after SOI, which sniff() has seen
    loop {
        // The next marker: 0xFF, any fill bytes 0xFF, then its code. Stray
        // bytes between segments are skipped, as zune-jpeg and libjpeg do.
        i += memchr::memchr(0xFF, &bytes[i.min(len)..]).ok_or_else(|| truncated("the headers"))?;
        while i < len && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&code) = bytes.get(i) else {
            return Err(truncated("a marker"));
        };
        i += 1;
        match code {
            0xD9 => return Ok(()),
            // Markers without a length; 0x00 is a stray stuffed byte.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let segment = bytes
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
            .ok_or_else(|| truncated(&format!("the 0xFF{code:02X} segment")))?;
        if segment < 2 {
            return Err(DecodeError::Jpeg(format!(
                "segment 0xFF{code:02X} at byte {} has length {segment}",
                i - 2
            )));
        }
        i += segment;
        if i > len {
            return Err(truncated(&format!("the 0xFF{code:02X} segment")));
        }
        if code == 0xDA {
            // Start of scan: entropy-coded data up to the next real marker.
            loop {
                let ff = i + memchr::memchr(0xFF, &bytes[i..])
                    .ok_or_else(|| truncated("the entropy-coded data of a scan"))?;
                let mut j = ff + 1;
                while j < len && bytes[j] == 0xFF {
                    j += 1;
                }
                match bytes.get(j) {
                    None => return Err(truncated("the entropy-coded data of a scan")),
                    Some(0x00 | 0xD0..=0xD7) => i = j + 1,
                    Some(_) => {
                        i = j - 1; // the 0xFF before the marker's code
                        break;
                    }
                }
            }
        }
    }
}

/// Checks that a PNG is whole: its chunks, each as long as its length says,
/// run up to the IEND chunk. Stricter than Pillow, which takes a file cut
/// just before IEND: a file cut there was cut all the same.
pub fn check_png_complete(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut i = 8; // after the signature, which sniff() has seen
    loop {
        let Some(header) = bytes.get(i..i + 8) else {
            return Err(DecodeError::Png(format!(
                "truncated: the data ({} bytes) ends before the IEND chunk",
                bytes.len()
            )));
        };
        let n = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let kind = String::from_utf8_lossy(&header[4..8]).into_owned();
        // Length, type, data, CRC.
        let end = i.checked_add(12).and_then(|e| e.checked_add(n));
        if end.is_none_or(|e| e > bytes.len()) {
            return Err(DecodeError::Png(format!(
                "truncated: the data ({} bytes) ends inside its {kind} chunk, before the IEND chunk",
                bytes.len()
            )));
        }
        if kind == "IEND" {
            return Ok(());
        }
        i = end.expect("checked");
    }
}

/// The error of a JPEG whose headers did not parse: that it is truncated,
/// if it is (a clearer message than the decoder's), else the decoder's.
fn jpeg_header_error(bytes: &[u8], e: impl std::fmt::Debug) -> DecodeError {
    check_jpeg_complete(bytes)
        .err()
        .unwrap_or_else(|| DecodeError::Jpeg(format!("{e:?}")))
}

/// As [`jpeg_header_error`], for a PNG.
fn png_header_error(bytes: &[u8], e: impl std::fmt::Debug) -> DecodeError {
    check_png_complete(bytes)
        .err()
        .unwrap_or_else(|| DecodeError::Png(format!("{e:?}")))
}

fn jpeg_decoder(bytes: &[u8]) -> JpegDecoder<ZCursor<&[u8]>> {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    JpegDecoder::new_with_options(ZCursor::new(bytes), options)
}

fn png_decoder(bytes: &[u8]) -> PngDecoder<ZCursor<&[u8]>> {
    let options = DecoderOptions::default().png_set_strip_to_8bit(true);
    PngDecoder::new_with_options(ZCursor::new(bytes), options)
}

/// (width, height), from the headers alone.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), DecodeError> {
    let (w, h) = match sniff(bytes)? {
        Format::Jpeg => {
            let mut d = jpeg_decoder(bytes);
            d.decode_headers()
                .map_err(|e| jpeg_header_error(bytes, e))?;
            d.dimensions()
                .ok_or_else(|| DecodeError::Jpeg("no frame header".into()))?
        }
        Format::Png => {
            let mut d = png_decoder(bytes);
            d.decode_headers().map_err(|e| png_header_error(bytes, e))?;
            d.dimensions()
                .ok_or_else(|| DecodeError::Png("no image header".into()))?
        }
    };
    Ok((w as u32, h as u32))
}

/// Decodes to RGB into `out`, which must hold exactly width*height*3 bytes
/// (see [`dimensions`]). `scratch` is reused for PNGs that are not RGB.
pub fn decode_rgb_into(
    bytes: &[u8],
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(u32, u32), DecodeError> {
    match sniff(bytes)? {
        Format::Jpeg => {
            check_jpeg_complete(bytes)?;
            let mut d = jpeg_decoder(bytes);
            d.decode_headers()
                .map_err(|e| jpeg_header_error(bytes, e))?;
            let (w, h) = d
                .dimensions()
                .ok_or_else(|| DecodeError::Jpeg("no frame header".into()))?;
            check_len(out, w, h)?;
            d.decode_into(out)
                .map_err(|e| DecodeError::Jpeg(format!("{e:?}")))?;
            Ok((w as u32, h as u32))
        }
        Format::Png => {
            check_png_complete(bytes)?;
            let mut d = png_decoder(bytes);
            d.decode_headers().map_err(|e| png_header_error(bytes, e))?;
            let (w, h) = d
                .dimensions()
                .ok_or_else(|| DecodeError::Png("no image header".into()))?;
            check_len(out, w, h)?;
            let cs = d
                .colorspace()
                .ok_or_else(|| DecodeError::Png("no colour space".into()))?;
            let decode = |d: &mut PngDecoder<_>, buf: &mut [u8]| {
                d.decode_into(buf)
                    .map_err(|e| DecodeError::Png(format!("{e:?}")))
            };
            if cs == ColorSpace::RGB {
                decode(&mut d, out)?;
            } else {
                let n = cs.num_components();
                scratch.clear();
                scratch.resize(w * h * n, 0);
                decode(&mut d, scratch)?;
                to_rgb(cs, scratch, out)?;
            }
            Ok((w as u32, h as u32))
        }
    }
}

fn check_len(out: &[u8], w: usize, h: usize) -> Result<(), DecodeError> {
    if out.len() != w * h * 3 {
        return Err(DecodeError::Resize {
            width: w as u32,
            height: h as u32,
            reason: format!("output holds {} bytes, not {}", out.len(), w * h * 3),
        });
    }
    Ok(())
}

fn to_rgb(cs: ColorSpace, src: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    match cs {
        ColorSpace::Luma => {
            for (o, &l) in out.chunks_exact_mut(3).zip(src) {
                o.fill(l);
            }
        }
        ColorSpace::LumaA => {
            for (o, la) in out.chunks_exact_mut(3).zip(src.chunks_exact(2)) {
                o.fill(la[0]);
            }
        }
        ColorSpace::RGBA => {
            for (o, p) in out.chunks_exact_mut(3).zip(src.chunks_exact(4)) {
                o.copy_from_slice(&p[..3]);
            }
        }
        other => return Err(DecodeError::Colorspace(format!("{other:?}"))),
    }
    Ok(())
}

/// A decoded RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// HWC, 3 bytes a pixel.
    pub pixels: Vec<u8>,
}

/// Decodes one image to RGB at its own size.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let (w, h) = dimensions(bytes)?;
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    decode_rgb_into(bytes, &mut pixels, &mut Vec::new())?;
    Ok(RgbImage {
        width: w,
        height: h,
        pixels,
    })
}

struct Scratch {
    full: Vec<u8>,
    convert: Vec<u8>,
    resizer: fr::Resizer,
}

thread_local! {
    // Per rayon thread: a full-size image and a resizer reused from image to image.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        full: Vec::new(),
        convert: Vec::new(),
        resizer: fr::Resizer::new(),
    });
}

/// Decodes and resizes (stretching, bilinear with antialiasing) to
/// `width`x`height` into `out` (width*height*3 bytes).
pub fn decode_resized_into(
    bytes: &[u8],
    width: u32,
    height: u32,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    let (w, h) = dimensions(bytes)?;
    SCRATCH.with_borrow_mut(|s| {
        if (w, h) == (width, height) {
            return decode_rgb_into(bytes, out, &mut s.convert).map(drop);
        }
        s.full.clear();
        s.full.resize(w as usize * h as usize * 3, 0);
        decode_rgb_into(bytes, &mut s.full, &mut s.convert)?;
        let fail = |reason: String| DecodeError::Resize {
            width: w,
            height: h,
            reason,
        };
        let src = fr::images::ImageRef::new(w, h, &s.full, fr::PixelType::U8x3)
            .map_err(|e| fail(e.to_string()))?;
        let mut dst = fr::images::Image::from_slice_u8(width, height, out, fr::PixelType::U8x3)
            .map_err(|e| fail(e.to_string()))?;
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        s.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| fail(e.to_string()))
    })
}

/// The process's decoding pool, rebuilt in a forked child. Not rayon's global
/// pool: a DataLoader worker forked from a parent that had used it would
/// inherit the pool's state but none of its threads, and wait forever.
pub fn pool() -> Arc<rayon::ThreadPool> {
    // An inherited pool is leaked, never dropped: its threads are not here to join.
    static SLOT: Mutex<Option<ProcessOwned<Arc<rayon::ThreadPool>>>> = Mutex::new(None);
    let mut guard = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    ProcessOwned::get_or_insert_with(&mut guard, || {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("crs4-decode-{i}"))
                .build()
                .expect("cannot start the decoding threads"),
        )
    })
    .clone()
}

/// Where each decoded image of a batch lies in the batch's pixel buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// (height, width) of each image; (0, 0) where decoding failed.
    pub shapes: Vec<(u32, u32)>,
    /// B+1 byte offsets into the pixel buffer.
    pub offsets: Vec<usize>,
    /// The failure of each sample, if any.
    pub errors: Vec<Option<DecodeError>>,
}

/// Decodes a batch into `out` (cleared first), in parallel on the rayon pool.
///
/// With `size = Some((height, width))` every image is resized to it, so the
/// buffer is a dense (B, height, width, 3) array; without, images keep their
/// own sizes and lie one after another. A sample that fails to decode keeps
/// its slot (zeros, or no bytes at native size) and its error is reported.
pub fn decode_batch(samples: &[&[u8]], size: Option<(u32, u32)>, out: &mut Vec<u8>) -> Decoded {
    pool().install(|| decode_batch_here(samples, size, out))
}

fn decode_batch_here(samples: &[&[u8]], size: Option<(u32, u32)>, out: &mut Vec<u8>) -> Decoded {
    out.clear();
    match size {
        Some((height, width)) => {
            let stride = height as usize * width as usize * 3;
            out.resize(stride * samples.len(), 0);
            let errors: Vec<Option<DecodeError>> = if stride == 0 {
                vec![None; samples.len()]
            } else {
                out.par_chunks_mut(stride)
                    .zip(samples.par_iter())
                    .map(|(slot, bytes)| decode_resized_into(bytes, width, height, slot).err())
                    .collect()
            };
            let shapes = errors
                .iter()
                .map(|e| if e.is_none() { (height, width) } else { (0, 0) })
                .collect();
            Decoded {
                shapes,
                offsets: (0..=samples.len()).map(|i| i * stride).collect(),
                errors,
            }
        }
        None => {
            // Headers first, so that every image decodes straight into its slot.
            let dims: Vec<Result<(u32, u32), DecodeError>> =
                samples.par_iter().map(|b| dimensions(b)).collect();
            let mut offsets = Vec::with_capacity(samples.len() + 1);
            offsets.push(0usize);
            for d in &dims {
                let len = d.as_ref().map_or(0, |&(w, h)| w as usize * h as usize * 3);
                offsets.push(offsets.last().copied().unwrap_or(0) + len);
            }
            out.resize(*offsets.last().unwrap_or(&0), 0);
            let mut slots = Vec::with_capacity(samples.len());
            let mut rest: &mut [u8] = out;
            for i in 0..samples.len() {
                let (slot, tail) = rest.split_at_mut(offsets[i + 1] - offsets[i]);
                slots.push(slot);
                rest = tail;
            }
            let errors: Vec<Option<DecodeError>> = slots
                .into_par_iter()
                .zip(samples.par_iter())
                .zip(dims.par_iter())
                .map(|((slot, bytes), dim)| match dim {
                    Err(e) => Some(e.clone()),
                    Ok(_) => SCRATCH
                        .with_borrow_mut(|s| decode_rgb_into(bytes, slot, &mut s.convert))
                        .err(),
                })
                .collect();
            let shapes = dims
                .iter()
                .zip(&errors)
                .map(|(d, e)| match (d, e) {
                    (Ok((w, h)), None) => (*h, *w),
                    _ => (0, 0),
                })
                .collect();
            Decoded {
                shapes,
                offsets,
                errors,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid PNG: 2x1 RGB, built by hand (stored deflate block).
    fn tiny_png(pixels: &[u8; 6]) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut c = kind.to_vec();
            c.extend_from_slice(data);
            out.extend_from_slice(&c);
            out.extend_from_slice(&crc32(&c).to_be_bytes());
        }
        fn crc32(data: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &b in data {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        fn adler(data: &[u8]) -> u32 {
            let (mut a, mut b) = (1u32, 0u32);
            for &x in data {
                a = (a + x as u32) % 65521;
                b = (b + a) % 65521;
            }
            (b << 16) | a
        }
        let mut raw = vec![0u8]; // filter: none
        raw.extend_from_slice(pixels);
        let mut z = vec![0x78, 0x01, 0x01];
        z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
        z.extend_from_slice(&raw);
        z.extend_from_slice(&adler(&raw).to_be_bytes());
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&2u32.to_be_bytes());
        ihdr.extend_from_slice(&1u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn png_decodes_exactly() {
        let px = [1, 2, 3, 250, 251, 252];
        let img = decode_rgb(&tiny_png(&px)).unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.pixels, px);
    }

    #[test]
    fn resize_keeps_a_flat_colour() {
        let png = tiny_png(&[9, 99, 199, 9, 99, 199]);
        let mut out = vec![0u8; 4 * 3 * 3];
        decode_resized_into(&png, 4, 3, &mut out).unwrap();
        assert!(out.chunks(3).all(|p| p == [9, 99, 199]));
    }

    #[test]
    fn batch_reports_bad_samples_and_keeps_slots() {
        let good = tiny_png(&[5; 6]);
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 20);
        let samples: Vec<&[u8]> = vec![&good, b"not an image", &truncated, &good];
        let mut out = Vec::new();
        let d = decode_batch(&samples, Some((2, 2)), &mut out);
        assert_eq!(out.len(), 4 * 12);
        assert!(d.errors[0].is_none() && d.errors[3].is_none());
        assert!(matches!(d.errors[1], Some(DecodeError::UnknownFormat(_))));
        assert!(matches!(d.errors[2], Some(DecodeError::Png(_))));
        assert_eq!(d.shapes, vec![(2, 2), (0, 0), (0, 0), (2, 2)]);

        let d = decode_batch(&samples, None, &mut out);
        // The truncated PNG fails at its headers already, so it gets no bytes either.
        assert_eq!(d.offsets, vec![0, 6, 6, 6, 12]);
        assert_eq!(d.shapes[0], (1, 2));
        assert_eq!(&out[..6], &[5; 6]);
        assert!(d.errors[2].is_some());
    }
}
