//! Tensors over memory owned by Rust values, without copying.
//!
//! tch's `Tensor::from_blob` has no deleter: the tensor would dangle once the
//! owner of the bytes is dropped. A small C++ shim (csrc/blob.cpp) calls
//! `at::from_blob` with a release callback instead, so the owner lives exactly
//! as long as libtorch's storage: the tensor, and every view, slice or shallow
//! clone of it, keep the bytes valid; the last one to go releases the owner
//! (for a batch arena, back to its pool).

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::Tensor;

extern "C" {
    fn crs4_tensor_of_blob(
        data: *mut c_void,
        dims: *const i64,
        ndims: usize,
        scalar_type: c_int,
        release: unsafe extern "C" fn(*mut c_void),
        ctx: *mut c_void,
        error: *mut *mut c_char,
    ) -> *mut torch_sys::C_tensor;
    fn crs4_free_error(error: *mut c_char);
}

/// Element types a tensor can be made of, with libtorch's scalar type code.
pub(crate) trait BlobElement: tch::kind::Element + Copy {
    const SCALAR_TYPE: c_int;
}

impl BlobElement for u8 {
    const SCALAR_TYPE: c_int = 0;
}
impl BlobElement for i64 {
    const SCALAR_TYPE: c_int = 4;
}
impl BlobElement for f32 {
    const SCALAR_TYPE: c_int = 6;
}
impl BlobElement for bool {
    const SCALAR_TYPE: c_int = 11;
}

unsafe extern "C" fn release<O>(ctx: *mut c_void) {
    // SAFETY: `ctx` is the `Box<O>` leaked in `tensor_of`, released exactly once.
    drop(unsafe { Box::from_raw(ctx as *mut O) });
}

/// A CPU tensor of shape `dims` over the slice that `view` picks out of `owner`.
///
/// The slice must stay where it is while `owner` lives, which holds for the heap
/// buffer of a `Vec` or a pooled arena reached through the owner (moving the
/// owner into a box does not move that buffer).
pub(crate) fn tensor_of<O, T>(
    owner: O,
    view: impl FnOnce(&O) -> &[T],
    dims: &[i64],
) -> Result<Tensor>
where
    O: Send + 'static,
    T: BlobElement,
{
    let owner = Box::new(owner);
    let (data, len) = {
        let slice = view(&owner);
        (slice.as_ptr() as *mut c_void, slice.len())
    };
    let numel: i64 = dims.iter().product();
    if dims.iter().any(|&d| d < 0) || numel as usize != len {
        return Err(Error::Torch(format!(
            "shape {dims:?} does not match {len} elements"
        )));
    }
    let ctx = Box::into_raw(owner) as *mut c_void;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `data` points to `numel` initialised elements of `T`, kept alive by
    // `ctx` until libtorch calls `release`, which the shim guarantees exactly once.
    let ptr = unsafe {
        crs4_tensor_of_blob(
            data,
            dims.as_ptr(),
            dims.len(),
            T::SCALAR_TYPE,
            release::<O>,
            ctx,
            &mut error,
        )
    };
    if ptr.is_null() {
        let message = if error.is_null() {
            "from_blob failed".to_string()
        } else {
            // SAFETY: the shim returns a NUL-terminated string from strdup.
            let m = unsafe { CStr::from_ptr(error) }
                .to_string_lossy()
                .into_owned();
            unsafe { crs4_free_error(error) };
            m
        };
        return Err(Error::Torch(message));
    }
    // SAFETY: `ptr` is a heap `at::Tensor`, the type tch's `Tensor` owns and frees.
    Ok(unsafe { Tensor::from_ptr(ptr) })
}
