//! Python objects as memory regions: the buffer protocol (numpy, bytearray, memoryview),
//! `__cuda_array_interface__` (torch CUDA tensors, cupy) and DLPack (torch tensors on either
//! side), without importing any of those libraries.
//!
//! Whatever keeps the memory alive is returned as an [`Owner`]; the session holds it until
//! the region is deregistered, so a registered object cannot be freed (or, for a buffer
//! export, resized) underneath the plugin.

use std::ffi::c_void;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyAttributeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};
use tcpx::engine::Memory;

use crate::error::{invalid, raise};

/// What keeps a registered object's memory valid.
pub(crate) enum Owner {
    /// A buffer export: its exporter cannot free or resize the memory while it is held.
    Buffer(#[allow(dead_code)] PyUntypedBuffer),
    /// The object itself (`__cuda_array_interface__` exporters own their memory).
    Object(#[allow(dead_code)] Py<PyAny>),
    /// An unconsumed DLPack capsule (its destructor frees the exported tensor when the
    /// capsule goes) and the object it came from.
    DlPack {
        #[allow(dead_code)]
        capsule: Py<PyAny>,
        #[allow(dead_code)]
        object: Py<PyAny>,
    },
}

/// A Python object's memory, ready to register.
pub(crate) struct Exported {
    pub ptr: u64,
    pub len: usize,
    pub memory: Memory,
    pub readonly: bool,
    pub owner: Owner,
    /// Which interface the memory came through, for `Registration.__repr__`.
    pub via: &'static str,
}

/// Finds `obj`'s memory: `__cuda_array_interface__` first (device memory), then the buffer
/// protocol (host memory), then DLPack. `device` names the CUDA device where the object
/// cannot tell it (a `__cuda_array_interface__` without `__dlpack_device__`).
pub(crate) fn export(obj: &Bound<'_, PyAny>, device: Option<i32>) -> PyResult<Exported> {
    if let Some(cai) = optional_attr(obj, "__cuda_array_interface__")? {
        return cuda_array_interface(obj, &cai, device);
    }
    // `PyUntypedBuffer::get` asks for any layout, read-only allowed; the flags say which.
    if let Ok(buf) = PyUntypedBuffer::get(obj) {
        if !(buf.is_c_contiguous() || buf.is_fortran_contiguous()) {
            return Err(invalid(
                "register: the buffer is not contiguous (copy it, e.g. numpy.ascontiguousarray)",
            ));
        }
        return Ok(Exported {
            ptr: buf.buf_ptr() as u64,
            len: buf.len_bytes(),
            memory: Memory::Host,
            readonly: buf.readonly(),
            owner: Owner::Buffer(buf),
            via: "buffer",
        });
    }
    if optional_attr(obj, "__dlpack__")?.is_some() {
        return dlpack(obj, device);
    }
    Err(PyTypeError::new_err(format!(
        "register: {} exposes neither the buffer protocol, __cuda_array_interface__ nor \
         __dlpack__",
        obj.get_type().name()?
    )))
}

/// `obj.name`, or `None` where the attribute is missing (torch raises `AttributeError` for
/// `__cuda_array_interface__` on CPU tensors).
fn optional_attr<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match obj.getattr(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<PyAttributeError>(obj.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bytes of a C-contiguous array of `shape` with elements of `item` bytes, if `strides`
/// (in bytes; `None` = C-contiguous) say it is one: a region is one run of bytes.
fn contiguous_bytes(shape: &[u64], strides: Option<&[i64]>, item: u64) -> PyResult<u64> {
    let count = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid("register: the array's size overflows"))?;
    if let Some(strides) = strides {
        if strides.len() != shape.len() {
            return Err(invalid("register: strides and shape differ in length"));
        }
        let mut want = item as i64;
        for (&d, &s) in shape.iter().zip(strides).rev() {
            // A dimension of one element may carry any stride.
            if d != 1 && s != want {
                return Err(invalid(
                    "register: the array is not C-contiguous (call .contiguous() or copy it)",
                ));
            }
            want = want.saturating_mul(d as i64);
        }
    }
    count
        .checked_mul(item)
        .ok_or_else(|| invalid("register: the array's size overflows"))
}

/// The CUDA device of an object that says it through DLPack, else `fallback`.
fn cuda_device(obj: &Bound<'_, PyAny>, fallback: Option<i32>) -> PyResult<i32> {
    if let Some(d) = fallback {
        return Ok(d);
    }
    if optional_attr(obj, "__dlpack_device__")?.is_some() {
        let (kind, id): (i32, i32) = obj.call_method0("__dlpack_device__")?.extract()?;
        if kind == DL_CUDA {
            return Ok(id);
        }
    }
    Err(invalid(
        "register: cannot tell the CUDA device of this object (no __dlpack_device__): pass device=",
    ))
}

/// Version 2 or 3 of the interface: `data` (pointer, read-only), `shape`, `typestr`,
/// optional `strides` and `mask`.
fn cuda_array_interface(
    obj: &Bound<'_, PyAny>,
    cai: &Bound<'_, PyAny>,
    device: Option<i32>,
) -> PyResult<Exported> {
    let d = cai.cast::<PyDict>()?;
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(k)?
            .ok_or_else(|| invalid(format!("register: __cuda_array_interface__ lacks {k:?}")))
    };
    if d.get_item("mask")?.is_some_and(|m| !m.is_none()) {
        return Err(invalid("register: masked CUDA arrays are not supported"));
    }
    let (ptr, readonly): (u64, bool) = get("data")?.extract()?;
    let shape: Vec<u64> = get("shape")?.extract()?;
    let typestr: String = get("typestr")?.extract()?;
    let item: u64 = typestr
        .get(2..)
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid(format!("register: typestr {typestr:?} has no element size")))?;
    let strides: Option<Vec<i64>> = match d.get_item("strides")? {
        Some(s) if !s.is_none() => Some(s.extract()?),
        _ => None,
    };
    let len = contiguous_bytes(&shape, strides.as_deref(), item)?;
    let device = cuda_device(obj, device)?;
    Ok(Exported {
        ptr,
        len: len as usize,
        memory: Memory::Cuda { device },
        readonly,
        owner: Owner::Object(obj.clone().unbind()),
        via: "__cuda_array_interface__",
    })
}

// DLPack's C ABI (dlpack.h, the unversioned "dltensor" capsule every producer offers).
const DL_CPU: i32 = 1;
const DL_CUDA: i32 = 2;
const DL_CUDA_HOST: i32 = 3;

#[repr(C)]
struct DlDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DlDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device: DlDevice,
    ndim: i32,
    dtype: DlDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DlManagedTensor {
    dl_tensor: DlTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensor)>,
}

fn dlpack(obj: &Bound<'_, PyAny>, device: Option<i32>) -> PyResult<Exported> {
    let capsule = obj.call_method0("__dlpack__")?;
    let cap = capsule.cast::<PyCapsule>()?;
    let p = cap.pointer_checked(Some(c"dltensor"))?;
    // SAFETY: a "dltensor" capsule holds a DLManagedTensor that lives as long as the capsule
    // is not consumed; this one is held (unconsumed) as long as the registration.
    let t = unsafe { &p.cast::<DlManagedTensor>().as_ref().dl_tensor };
    let ndim = usize::try_from(t.ndim).map_err(|_| invalid("register: DLPack ndim < 0"))?;
    let (shape, strides) = if ndim == 0 {
        (Vec::new(), None)
    } else {
        // SAFETY: DLPack gives `ndim` shape entries, and `ndim` strides unless NULL.
        unsafe {
            (
                std::slice::from_raw_parts(t.shape, ndim)
                    .iter()
                    .map(|&d| d as u64)
                    .collect::<Vec<_>>(),
                (!t.strides.is_null()).then(|| std::slice::from_raw_parts(t.strides, ndim)),
            )
        }
    };
    let bits = u64::from(t.dtype.bits) * u64::from(t.dtype.lanes);
    if bits == 0 || bits % 8 != 0 {
        return Err(invalid(format!(
            "register: DLPack elements of {bits} bits are not whole bytes"
        )));
    }
    let item = bits / 8;
    // DLPack strides count elements, not bytes.
    let strides: Option<Vec<i64>> = strides.map(|s| s.iter().map(|&e| e * item as i64).collect());
    let len = contiguous_bytes(&shape, strides.as_deref(), item)?;
    let memory = match t.device.device_type {
        DL_CPU | DL_CUDA_HOST => Memory::Host,
        DL_CUDA => Memory::Cuda {
            device: device.unwrap_or(t.device.device_id),
        },
        other => {
            return Err(raise(
                "UnsupportedError",
                format!(
                    "unsupported: register: DLPack device type {other} (host or CUDA memory only)"
                ),
            ))
        }
    };
    Ok(Exported {
        ptr: (t.data as u64).wrapping_add(t.byte_offset),
        len: len as usize,
        memory,
        readonly: false,
        owner: Owner::DlPack {
            capsule: capsule.clone().unbind(),
            object: obj.clone().unbind(),
        },
        via: "__dlpack__",
    })
}
