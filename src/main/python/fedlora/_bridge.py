"""numpy / torch tensors to fedlora Tensors by address, and fedlora's results into numpy memory.

Inputs are wrapped in place: Java reads the array's own memory for as long as the call runs. For
aggregate and truncate the views live in a shared arena that the call closes when it returns
(CallScope), so Java cannot read an input after the call, even by mistake: it would get an
IllegalStateException, not freed memory. Round.add uses global-scope views instead: fedlora's
Round treats memory that an arena could close as faultable and keeps an undo copy of the sums it
touches for every add (a copy of the global adapter per client), which the bridge does not need,
since nothing closes the arena during the call; Round.add keeps no reference to its inputs once it
returns (DESIGN §8). An array that is not C-contiguous, or not little-endian, is made so
once (one copy) before it is wrapped. Outputs are numpy arrays that own their memory; Java writes
the result straight into them (one copy, from fedlora's float32 result).
"""

import numpy as np

from . import _jvm

try:  # torch is optional; bfloat16 needs it (numpy has no bfloat16 of its own)
    import torch as _torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    _torch = None


def _is_torch(value):
    return _torch is not None and isinstance(value, _torch.Tensor)


class CallScope:
    """One bridge call: the arrays that must stay alive during it and the arena its views live in."""

    def __init__(self, c, scoped=True):
        self.keep = []
        self.arena = c.Arena.ofShared() if scoped else c.Arena.global_()
        self.scoped = scoped

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.scoped:
            self.arena.close()
        self.keep.clear()


def java_tensor(c, value, client_id, key, scope):
    """A fedlora Tensor over ``value``'s memory, valid until ``scope`` closes."""
    keep = scope.keep
    if _is_torch(value):
        if value.device.type != "cpu":
            raise TypeError(f"client '{client_id}', tensor '{key}': on {value.device}, fedlora reads CPU tensors;"
                            " move it with .cpu()")
        if value.dtype == _torch.float32:
            dtype, flat = c.DType.F32, value
        elif value.dtype == _torch.bfloat16:
            dtype, flat = c.DType.BF16, value
        elif value.dtype == _torch.float16:
            dtype, flat = c.DType.F16, value
        else:
            raise TypeError(f"client '{client_id}', tensor '{key}': dtype {value.dtype}, fedlora reads"
                            " float32, bfloat16 and float16")
        flat = flat.detach()
        if not flat.is_contiguous():
            flat = flat.contiguous()  # the one copy a strided view costs
        if flat.dtype != _torch.float32:
            flat = flat.view(_torch.int16)  # bfloat16 / float16 travel as their 16-bit patterns
        shape = tuple(flat.shape)
        address = flat.data_ptr()
        keep.append(flat)
    else:
        arr = np.asarray(value)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))  # fedlora reads little-endian
        kind = arr.dtype
        if kind == np.float32:
            dtype = c.DType.F32
        elif kind == np.float16:
            dtype = c.DType.F16
        elif kind.name == "bfloat16" and kind.itemsize == 2:  # ml_dtypes' numpy bfloat16
            dtype = c.DType.BF16
        else:
            raise TypeError(f"client '{client_id}', tensor '{key}': dtype {kind}, fedlora reads"
                            " float32, bfloat16 and float16")
        arr = np.ascontiguousarray(arr)  # no copy when already C-contiguous
        shape = arr.shape
        address = arr.ctypes.data
        keep.append(arr)
    jshape = c.JLongArray(list(shape))
    count = 1
    for d in shape:
        count *= d
    if count == 0:  # an empty array may have no address
        return c.Tensor.ofBytes(c.jpype.JArray(c.jpype.JByte)(0), dtype, jshape)
    return c.Tensor.ofAddress(address, dtype, scope.arena, jshape)


def java_tensors(c, tensors, client_id, scope):
    """A Java LinkedHashMap name -> Tensor over ``tensors`` (a mapping), in its order."""
    if not hasattr(tensors, "items"):
        raise TypeError(f"client '{client_id}': tensors must map PEFT names to arrays, got {type(tensors).__name__}")
    out = c.LinkedHashMap()
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"client '{client_id}': tensor names must be str, got {key!r}")
        out.put(key, java_tensor(c, value, client_id, key, scope))
    return out


def numpy_tensors(c, jmap):
    """fedlora's result (a Java Map name -> Tensor) as a dict of float32 numpy arrays that own their memory."""
    out = {}
    for entry in jmap.entrySet():
        tensor = entry.getValue()
        if tensor.dtype() != c.DType.F32:
            tensor = tensor.to(c.DType.F32)
        shape = tuple(int(d) for d in tensor.shape())
        arr = np.empty(shape, dtype=np.float32)
        if arr.nbytes:
            tensor.copyToAddress(arr.ctypes.data, arr.nbytes)
        out[str(entry.getKey())] = arr
    return out
