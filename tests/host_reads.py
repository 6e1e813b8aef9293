"""Catch every read of a tensor's value by the host, on the CPU.

On a GPU such a read makes the host wait until the device has finished all queued work
(CUDA's sync debug mode reports it). A CPU run cannot wait for anything, so it is caught
where it starts instead:

* at the ATen level, in a ``TorchDispatchMode``: ``_local_scalar_dense`` (``.item()``,
  ``bool()``, ``int()``, ``float()``, ``if tensor:``), and the operations whose output size
  depends on the values (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing,
  ``repeat_interleave`` with a tensor of repeats and no ``output_size``, ...);
* at the Python level, where values leave without an ATen call: ``tolist``, ``numpy``,
  ``__array__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

READS = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten.masked_select,
    aten.is_nonzero,
    aten.equal,
    aten._unique,
    aten._unique2,
    aten.unique_consecutive,
    aten.unique_dim,
    aten.bincount,
}
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
PYTHON_READS = ("tolist", "numpy", "__array__")


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class HostReads(TorchDispatchMode):
    """Records (in ``reads``) every operation that needs a tensor's value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in READS:
            self.reads.append(str(func))
        elif packet in INDEXING and _has_bool_index(args):
            self.reads.append(f"{func} with a boolean mask")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.reads.append(f"{func} without output_size")
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_reads() -> Iterator[list[str]]:
    """``with host_reads() as reads: ...``; afterwards ``reads`` names each read."""
    mode = HostReads()
    originals = {name: getattr(torch.Tensor, name) for name in PYTHON_READS}

    def trap(name: str):
        def read(self, *args, **kwargs):
            mode.reads.append(f"Tensor.{name}")
            return originals[name](self, *args, **kwargs)

        return read

    for name in PYTHON_READS:
        setattr(torch.Tensor, name, trap(name))
    try:
        with mode:
            yield mode.reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
