"""Count device-to-host transfers (synchronisation points) in a block of PyTorch code.

On a GPU, `torch.cuda.set_sync_debug_mode("warn")` reports synchronising calls; this counter gives a
device-independent view for tests and benchmarks, including CPU runs:

    with HostTransferCounter() as counter:
        loss, _ = criterion(logits, boxes, labels)
    counter.calls  # e.g. ["cpu"]
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


class HostTransferCounter(TorchFunctionMode):
    """Records tensor methods that copy device data to the host or wait on it.

    On the CPU every tensor is on the host, so the counter follows the data flow: results of `.cpu()`
    and tensors made from host data (numpy arrays, Python numbers) are host copies, and calls on them
    (`.numpy()`, ...) are not counted. `.to(device)` is not watched: a move to the accelerator cannot
    be told apart from a move to the host on a CPU run. Boolean-mask indexing and assigning a Python
    number to indexed elements are counted (`MASK_INDEX`, `NUMBER_ASSIGNMENT`): both wait on CUDA.
    """

    WATCHED = frozenset({"cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "nonzero"})
    # on CUDA these wait too (torch.cuda.set_sync_debug_mode reports them): indexing with a boolean
    # mask counts its True entries on the host; assigning a Python number to indexed elements copies
    # it from pageable host memory
    MASK_INDEX, NUMBER_ASSIGNMENT = "boolean mask index", "number assigned to indexed elements"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        # id -> tensor: holding the tensors keeps their ids from being reused by new tensors
        self._host_copies: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        on_host_copy = bool(args) and id(args[0]) in self._host_copies
        if not on_host_copy and name in self.WATCHED:
            self.calls.append(name)
        elif not on_host_copy and name in ("__getitem__", "__setitem__") and len(args) >= 2:
            indices = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self.calls.append(self.MASK_INDEX)
            elif name == "__setitem__" and len(args) == 3 and isinstance(args[2], (int, float, bool)):
                self.calls.append(self.NUMBER_ASSIGNMENT)
        result = func(*args, **kwargs)
        made_from_host_data = (
            name in ("as_tensor", "tensor") and bool(args) and not isinstance(args[0], torch.Tensor)
        )
        if (name == "cpu" or made_from_host_data) and isinstance(result, torch.Tensor):
            self._host_copies[id(result)] = result
        return result


__all__ = ["HostTransferCounter"]
