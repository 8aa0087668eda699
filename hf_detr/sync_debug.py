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
    be told apart from a move to the host on a CPU run.
    """

    WATCHED = frozenset({"cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "nonzero"})

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
        result = func(*args, **kwargs)
        made_from_host_data = (
            name in ("as_tensor", "tensor") and bool(args) and not isinstance(args[0], torch.Tensor)
        )
        if (name == "cpu" or made_from_host_data) and isinstance(result, torch.Tensor):
            self._host_copies[id(result)] = result
        return result


__all__ = ["HostTransferCounter"]
