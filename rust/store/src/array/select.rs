//! Which chunks a selection touches, and the copies between a chunk and the
//! selection's dense output: pure index arithmetic, no I/O.
//!
//! A selection is numpy basic indexing reduced to one [`DimSel`] per
//! dimension (an integer index is a selection of one element whose dimension
//! the caller drops). Along each dimension, the selected coordinates fall into
//! chunks; within a chunk they form [`Run`]s: stretches where the output
//! position and the position inside the chunk both advance by one (a step of 1
//! gives one run per chunk; other steps give runs of one element). A chunk's
//! share of the selection is the cartesian product of its runs over every
//! dimension, and its innermost runs are copied with `copy_from_slice`.

use crate::error::{Result, StoreError};

/// The selected coordinates of one dimension: `start + i * step` for `i` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimSel {
    pub start: i64,
    pub step: i64,
    pub count: u64,
}

impl DimSel {
    pub fn all(len: u64) -> Self {
        Self {
            start: 0,
            step: 1,
            count: len,
        }
    }

    fn coord(&self, i: u64) -> i64 {
        self.start + i as i64 * self.step
    }
}

/// Output positions `out..out+len` are chunk positions `local..local+len` of one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub out: u64,
    pub local: u64,
    pub len: u64,
}

/// One chunk's share of a selection: its coordinates in the chunk grid and,
/// per dimension, its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPart {
    pub coords: Vec<u64>,
    pub runs: Vec<Vec<Run>>,
}

/// Checks `sel` against `shape`: one entry per dimension, every selected
/// coordinate inside the array, a non-zero step.
pub fn check(shape: &[u64], sel: &[DimSel], array: &str) -> Result<()> {
    if sel.len() != shape.len() {
        return Err(StoreError::InvalidArgument(format!(
            "array {array:?} has {} dimensions, the selection {}",
            shape.len(),
            sel.len()
        )));
    }
    for (d, (s, &n)) in sel.iter().zip(shape).enumerate() {
        if s.count == 0 {
            continue;
        }
        if s.step == 0 {
            return Err(StoreError::InvalidArgument(format!(
                "array {array:?}: dimension {d} has a step of 0"
            )));
        }
        let (first, last) = (s.coord(0), s.coord(s.count - 1));
        let inside = |c: i64| c >= 0 && (c as u64) < n;
        if !inside(first) || !inside(last) {
            return Err(StoreError::InvalidArgument(format!(
                "array {array:?}: selection {first}..={last} (step {}) is outside dimension {d} of length {n}",
                s.step
            )));
        }
    }
    Ok(())
}

/// Per dimension: the chunks the selection touches there, each with its runs,
/// in increasing output order.
fn runs_by_dim(sel: &[DimSel], chunks: &[u64]) -> Vec<Vec<(u64, Vec<Run>)>> {
    sel.iter()
        .zip(chunks)
        .map(|(s, &c)| {
            let mut out: Vec<(u64, Vec<Run>)> = Vec::new();
            for i in 0..s.count {
                let coord = s.coord(i) as u64;
                let (chunk, local) = (coord / c, coord % c);
                // A step of -1 visits chunks in decreasing order, others increasing:
                // a chunk's coordinates are always consecutive in output order.
                match out.last_mut() {
                    Some((last, runs)) if *last == chunk => {
                        let run = runs.last_mut().expect("a chunk has a run");
                        if run.out + run.len == i && run.local + run.len == local {
                            run.len += 1;
                        } else {
                            runs.push(Run {
                                out: i,
                                local,
                                len: 1,
                            });
                        }
                    }
                    _ => out.push((
                        chunk,
                        vec![Run {
                            out: i,
                            local,
                            len: 1,
                        }],
                    )),
                }
            }
            out
        })
        .collect()
}

/// Every chunk the selection touches (C order of output), with its runs.
pub fn parts(sel: &[DimSel], chunks: &[u64]) -> Vec<ChunkPart> {
    let by_dim = runs_by_dim(sel, chunks);
    if by_dim.iter().any(Vec::is_empty) {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut index = vec![0usize; by_dim.len()];
    loop {
        parts.push(ChunkPart {
            coords: index.iter().zip(&by_dim).map(|(&i, d)| d[i].0).collect(),
            runs: index
                .iter()
                .zip(&by_dim)
                .map(|(&i, d)| d[i].1.clone())
                .collect(),
        });
        // Odometer over the dimensions, last fastest.
        let mut d = by_dim.len();
        loop {
            if d == 0 {
                return parts;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < by_dim[d].len() {
                break;
            }
            index[d] = 0;
        }
    }
}

/// C-order strides, in elements.
pub fn strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Calls `f(chunk_offset, out_offset, len)`, in bytes, for each contiguous
/// stretch of `part`: between a whole chunk (C order, `chunk_shape`) and the
/// selection's dense array (C order, `out_shape`), `itemsize` bytes an element.
/// Trailing dimensions that the part covers whole on both sides (the channels
/// of an image, whole rows) are one stretch with the dimension before them.
pub fn for_each_run(
    part: &ChunkPart,
    chunk_shape: &[u64],
    out_shape: &[u64],
    itemsize: usize,
    f: &mut impl FnMut(usize, usize, usize),
) {
    let mut dims = part.runs.len();
    let mut itemsize = itemsize;
    while dims > 1 {
        let d = dims - 1;
        let whole = matches!(
            part.runs[d].as_slice(),
            [Run { out: 0, local: 0, len }] if *len == chunk_shape[d] && *len == out_shape[d]
        );
        if !whole {
            break;
        }
        itemsize *= chunk_shape[d] as usize;
        dims -= 1;
    }
    let cs = strides(&chunk_shape[..dims]);
    let os = strides(&out_shape[..dims]);
    let runs = &part.runs[..dims];
    runs_rec(runs, 0, 0, 0, &cs, &os, itemsize, f);
}

#[allow(clippy::too_many_arguments)]
fn runs_rec(
    runs: &[Vec<Run>],
    d: usize,
    chunk_off: u64,
    out_off: u64,
    cs: &[u64],
    os: &[u64],
    itemsize: usize,
    f: &mut impl FnMut(usize, usize, usize),
) {
    let last = d + 1 == runs.len();
    for run in &runs[d] {
        if last {
            // Innermost strides are 1: a run is contiguous on both sides.
            f(
                (chunk_off + run.local) as usize * itemsize,
                (out_off + run.out) as usize * itemsize,
                run.len as usize * itemsize,
            );
        } else {
            for k in 0..run.len {
                runs_rec(
                    runs,
                    d + 1,
                    chunk_off + (run.local + k) * cs[d],
                    out_off + (run.out + k) * os[d],
                    cs,
                    os,
                    itemsize,
                    f,
                );
            }
        }
    }
}

/// Copies `part` of `chunk` into `out` (a read).
pub fn gather(
    part: &ChunkPart,
    chunk: &[u8],
    chunk_shape: &[u64],
    out: &mut [u8],
    out_shape: &[u64],
    itemsize: usize,
) {
    for_each_run(part, chunk_shape, out_shape, itemsize, &mut |c, o, n| {
        out[o..o + n].copy_from_slice(&chunk[c..c + n])
    });
}

/// Copies `part` of `data` into `chunk` (a write).
pub fn scatter(
    part: &ChunkPart,
    data: &[u8],
    chunk: &mut [u8],
    chunk_shape: &[u64],
    out_shape: &[u64],
    itemsize: usize,
) {
    for_each_run(part, chunk_shape, out_shape, itemsize, &mut |c, o, n| {
        chunk[c..c + n].copy_from_slice(&data[o..o + n])
    });
}

/// Whether `part` covers every element of its chunk that lies inside the
/// array (so a write needs not read the chunk first).
pub fn covers_chunk(part: &ChunkPart, chunks: &[u64], shape: &[u64]) -> bool {
    part.runs.iter().enumerate().all(|(d, runs)| {
        let origin = part.coords[d] * chunks[d];
        let valid = chunks[d].min(shape[d] - origin);
        runs.iter().map(|r| r.len).sum::<u64>() == valid
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The selection read element by element, as numpy would.
    fn naive(shape: &[u64], data: &[u8], sel: &[DimSel]) -> Vec<u8> {
        let st = strides(shape);
        let counts: Vec<u64> = sel.iter().map(|s| s.count).collect();
        let total: u64 = counts.iter().product();
        let mut out = Vec::with_capacity(total as usize);
        for flat in 0..total {
            let mut rem = flat;
            let mut src = 0u64;
            for d in (0..sel.len()).rev() {
                let i = rem % counts[d];
                rem /= counts[d];
                src += sel[d].coord(i) as u64 * st[d];
            }
            out.push(data[src as usize]);
        }
        out
    }

    /// The array cut into padded chunks, as the store keeps it.
    fn chunked(shape: &[u64], chunks: &[u64], data: &[u8]) -> Vec<(Vec<u64>, Vec<u8>)> {
        let grid: Vec<u64> = shape
            .iter()
            .zip(chunks)
            .map(|(&n, &c)| n.div_ceil(c))
            .collect();
        let whole: Vec<DimSel> = shape.iter().map(|&n| DimSel::all(n)).collect();
        let mut out = Vec::new();
        for part in parts(&whole, chunks) {
            let mut chunk = vec![0u8; chunks.iter().product::<u64>() as usize];
            scatter(&part, data, &mut chunk, chunks, shape, 1);
            out.push((part.coords.clone(), chunk));
        }
        assert_eq!(out.len() as u64, grid.iter().product::<u64>());
        out
    }

    fn selection(shape: Vec<u64>) -> impl Strategy<Value = (Vec<u64>, Vec<DimSel>)> {
        let dims: Vec<_> = shape
            .iter()
            .map(|&n| {
                (0..n, 0..n, prop_oneof![1i64..4, -3i64..0]).prop_map(move |(a, b, step)| {
                    // Every coordinate between a and b that the step reaches from a.
                    let (lo, hi) = (a.min(b) as i64, a.max(b) as i64);
                    let start = if step > 0 { lo } else { hi };
                    let count = ((hi - lo) / step.abs() + 1) as u64;
                    DimSel { start, step, count }
                })
            })
            .collect();
        (Just(shape), dims)
    }

    fn case() -> impl Strategy<Value = (Vec<u64>, Vec<u64>, Vec<DimSel>)> {
        proptest::collection::vec(1u64..9, 1..4)
            .prop_flat_map(|shape| {
                let chunks: Vec<_> = shape.iter().map(|&n| 1..=n + 2).collect();
                (selection(shape), chunks)
            })
            .prop_map(|((shape, sel), chunks)| (shape, chunks, sel))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn gathering_from_chunks_equals_indexing((shape, chunks, sel) in case()) {
            let n: u64 = shape.iter().product();
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            check(&shape, &sel, "a").unwrap();
            let stored = chunked(&shape, &chunks, &data);
            let out_shape: Vec<u64> = sel.iter().map(|s| s.count).collect();
            let mut out = vec![0u8; out_shape.iter().product::<u64>() as usize];
            for part in parts(&sel, &chunks) {
                let chunk = &stored.iter().find(|(c, _)| *c == part.coords).unwrap().1;
                gather(&part, chunk, &chunks, &mut out, &out_shape, 1);
            }
            prop_assert_eq!(out, naive(&shape, &data, &sel));
        }

        #[test]
        fn full_cover_is_exactly_every_valid_element((shape, chunks, sel) in case()) {
            for part in parts(&sel, &chunks) {
                let covered: u64 = part.runs.iter().map(|r| r.iter().map(|x| x.len).sum::<u64>()).product();
                let valid: u64 = (0..shape.len())
                    .map(|d| chunks[d].min(shape[d] - part.coords[d] * chunks[d]))
                    .product();
                prop_assert_eq!(covers_chunk(&part, &chunks, &shape), covered == valid);
            }
        }
    }

    #[test]
    fn out_of_range_selections_are_named() {
        let e = check(
            &[4, 5],
            &[
                DimSel::all(4),
                DimSel {
                    start: 2,
                    step: 2,
                    count: 3,
                },
            ],
            "img",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"img\"") && e.contains("dimension 1"), "{e}");
        let e = check(&[4], &[DimSel::all(4), DimSel::all(1)], "img")
            .unwrap_err()
            .to_string();
        assert!(e.contains("2"), "{e}");
        assert!(check(
            &[4],
            &[DimSel {
                start: 9,
                step: 1,
                count: 0
            }],
            "img"
        )
        .is_ok());
    }
}
