"""Data-parallel training (``torch.distributed``, launched with ``torchrun``) and mixed precision.

Data parallelism
----------------
Every rank draws the SAME global batch order (same seed, same
:class:`~cryoviz.train.data.ParticleBatches` generator) and takes its own
contiguous slice of each global batch of ``B`` particles
(:func:`split_batch`: ``numpy.array_split`` sizes, the first ``B mod W``
ranks get one particle more). The models are wrapped in
:class:`torch.nn.parallel.DistributedDataParallel`, which averages gradients
over the ``W`` ranks. The per-rank loss is a mean over its ``n_r`` local
particles, so before ``backward`` it is multiplied by
``gradient_weight = n_r W / B``: the averaged gradient is then
``(1 / W) sum_r (n_r W / B) grad mean_r = (1 / B) sum_i grad loss_i``, the
gradient of the single-process loss on the global batch, also for an uneven
last batch. A rank whose slice would be empty (``B < W``) processes the first
particle of the batch with weight 0 (DDP needs every rank in every step).
The latent noise is drawn for the whole global batch on every rank and each
rank keeps its rows (:meth:`BatchPart.rows`), so a DDP run samples the same
noise as a single-process run.

Mixed precision
---------------
``precision = 'bf16'`` or ``'fp16'`` runs the networks (the encoder's forward
and the volume's ``slices``) under :func:`torch.autocast` and casts their
outputs back to float32 / complex64 (:class:`ModelCall`); the FFTs of the
images, the CTF and shifts and the loss stay float32. ``fp16`` needs CUDA
and uses a :class:`torch.amp.GradScaler` (a disabled one otherwise, so the
step is the plain optimizer step).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cryoviz.errors import InputError
from cryoviz.train.data import ParticleBatches

__all__ = ["DistInfo", "dist_info", "init_distributed", "shutdown_distributed",
           "exit_if_left_group", "BatchPart",
           "split_batch", "local_batches", "ModelCall", "wrap_model", "all_sum", "barrier",
           "PRECISIONS", "autocast_dtype", "make_grad_scaler", "bf16_is_fast"]

PRECISIONS = ("fp32", "bf16", "fp16")
_OWN_GROUP = False  # True when init_distributed created the process group


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run.

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes, rank on this machine.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files)."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """The current process group's ranks (``DistInfo()`` when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the process group that ``torchrun`` describes in the environment.

    With ``RANK`` and ``WORLD_SIZE`` set (``torchrun``) and no group yet, the
    group is initialised with the ``gloo`` backend for CPU devices and
    ``nccl`` for CUDA. A CUDA device without an index becomes
    ``cuda:LOCAL_RANK``.

    Parameters
    ----------
    device
        The requested device (``'cpu'``, ``'cuda'``, ``'cuda:1'``).

    Returns
    -------
    (DistInfo, str)
        The ranks and this process's device.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return dist_info(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type
    if kind == "cuda" and torch.device(device).index is None:
        device = f"cuda:{local_rank}"
    if kind == "cuda":
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        global _OWN_GROUP  # noqa: PLW0603 - one process group per process
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        _OWN_GROUP = True
    return dist_info(), device


def shutdown_distributed() -> int:
    """Leave the process group if :func:`init_distributed` created it.

    Returns
    -------
    int
        The number of ranks of the group left (0 when none was).
    """
    global _OWN_GROUP  # noqa: PLW0603
    left = 0
    if _OWN_GROUP and dist.is_available() and dist.is_initialized():
        left = dist.get_world_size()
        dist.destroy_process_group()
    _OWN_GROUP = False
    return left


def exit_if_left_group(status: int, world_size: int) -> None:
    """End the process now with ``status`` if it left a group of several ranks.

    A ``torchrun`` worker that has written its outputs and left its process group
    sometimes aborted in the interpreter's final teardown ("terminate called without
    an active exception", SIGABRT, 2 of 40 two-process CPU runs), so ``torchrun``
    reported a failed run whose outputs were complete. Such a worker flushes its
    streams and logs and exits here with ``os._exit``, skipping that teardown
    (0 of 80 runs aborted). Returns without effect for ``world_size`` 0 or 1, so
    in-process callers (tests, notebooks) go on.

    Parameters
    ----------
    status
        The exit status.
    world_size
        What :func:`shutdown_distributed` returned.
    """
    if world_size > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


@dataclass(frozen=True)
class BatchPart:
    """One rank's slice ``[start, stop)`` of a global batch of ``total`` particles.

    Attributes
    ----------
    start, stop
        Rows of the global batch this rank processes.
    total
        Particles in the global batch ``B``.
    counted
        Particles this slice counts for (``stop - start``, or 0 for the stand-in
        particle of a rank with nothing to do).
    world_size
        ``W``.
    """

    start: int
    stop: int
    total: int
    counted: int
    world_size: int = 1

    @property
    def share(self) -> float:
        """``n_r / B``: this slice's weight in the global batch mean."""
        return self.counted / self.total

    @property
    def gradient_weight(self) -> float:
        """``n_r W / B``: the factor on the local mean loss (DDP divides by ``W``)."""
        return self.counted * self.world_size / self.total

    def rows(self, values):
        """This slice's rows of a global-batch array or tensor ``(B, ...)``."""
        return values[self.start:self.stop]


def split_batch(total: int, rank: int = 0, world_size: int = 1) -> BatchPart:
    """Rank ``rank``'s slice of a global batch of ``total`` particles.

    Sizes follow :func:`numpy.array_split`: ``total // W`` each, one more for
    the first ``total % W`` ranks. An empty slice (``total < W``) becomes the
    first particle with ``counted = 0``.
    """
    if total < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad batch split: total={total} rank={rank} world={world_size}")
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    if stop == start:
        return BatchPart(0, 1, total, 0, world_size)
    return BatchPart(start, stop, total, stop - start, world_size)


def local_batches(batches: ParticleBatches, info: DistInfo | None = None
                  ) -> Iterator[tuple[BatchPart, np.ndarray, torch.Tensor]]:
    """One epoch of ``(part, local indices (n_r,), local images (n_r, d, d))``.

    Like :meth:`ParticleBatches.epoch` (the order is drawn when this is called,
    so the generator's state after the call is the state to checkpoint), but
    each rank reads only its slice of each global batch.
    """
    info = dist_info() if info is None else info
    order = batches.epoch_order()

    def parts() -> Iterator[tuple[BatchPart, np.ndarray, torch.Tensor]]:
        for start in range(0, batches.n, batches.batch_size):
            global_index = order[start:start + batches.batch_size]
            part = split_batch(len(global_index), info.rank, info.world_size)
            index = part.rows(global_index)
            yield part, index, batches.read(index)

    return parts()


def _to_float32(value):
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            return value.to(torch.complex64)
        if value.is_floating_point():
            return value.to(torch.float32)
    return value


_NETWORK_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class ModelCall(torch.nn.Module):
    """``module.method(*args)`` as a module's ``forward``, networks under autocast if asked.

    DDP synchronises gradients only of calls through ``forward``; this lets
    the loop call ``volume.slices`` through DDP. With an autocast dtype, only
    the model's *networks* run in low precision: the outermost called submodule
    holding a linear or convolution layer (``ImplicitVolume.mlp``,
    ``MLPEncoder.hidden`` / ``head``, the Gaussian mixture's ``decoder``; at any
    depth, so a method that calls a grandchild directly, as
    ``JointPoseLatentEncoder.joint`` calls its pose encoder's ``features``, is
    covered too) runs under :func:`torch.autocast` and its output is cast back
    to float32, so
    coordinates, rotations, Hartley/Fourier conversion, projections and
    everything after run in float32 (autocasting the whole call would also
    put the rotation ``einsum`` of the frequency coordinates in bfloat16, and
    ``torch.complex`` refuses bfloat16 parts). Outputs of the call are float32
    (complex64).

    Parameters
    ----------
    module
        The wrapped model (its ``state_dict`` keys are unchanged: save ``module``).
    method
        Name of the method to call.
    autocast
        Autocast dtype (``None``: none).
    """

    def __init__(self, module: torch.nn.Module, method: str = "forward",
                 autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.module = module
        self.method = method
        self.autocast = autocast
        self._active = False
        self._depth = 0  # nesting of hooked submodules being called
        self._contexts: list[torch.autocast] = []
        self.networks = [] if autocast is None else [
            name for name, child in module.named_modules()
            if name and any(isinstance(m, _NETWORK_LAYERS) for m in child.modules())]
        for name in self.networks:
            child = module.get_submodule(name)
            child.register_forward_pre_hook(self._enter)
            child.register_forward_hook(self._exit)

    def _enter(self, _module, _args) -> None:
        if not self._active:
            return
        if self._depth == 0:  # the outermost network: autocast until it returns
            device_type = next(self.module.parameters()).device.type
            ctx = torch.autocast(device_type=device_type, dtype=self.autocast)
            ctx.__enter__()
            self._contexts.append(ctx)
        self._depth += 1

    def _exit(self, _module, _args, output):
        if not (self._active and self._depth):
            return None
        self._depth -= 1
        if self._depth or not self._contexts:
            return None
        self._contexts.pop().__exit__(None, None, None)
        return _to_float32(output)

    def forward(self, *args):
        """``module.method(*args)`` with outputs in float32 / complex64."""
        self._active = self.autocast is not None
        try:
            out = getattr(self.module, self.method)(*args)
        finally:
            self._active = False
            self._depth = 0
            while self._contexts:  # an exception inside a network
                self._contexts.pop().__exit__(None, None, None)
        return _to_float32(out)


def wrap_model(module: torch.nn.Module, method: str, precision: str,
               device: torch.device, info: DistInfo | None = None) -> torch.nn.Module:
    """The callable the loop trains through: :class:`ModelCall`, in DDP when distributed.

    Call it after the weights are final for the start of training (loaded
    from a checkpoint or initialised): DDP broadcasts rank 0's parameters.
    """
    info = dist_info() if info is None else info
    call = ModelCall(module, method, autocast_dtype(precision, device))
    if not info.enabled:
        return call
    ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    # buffers (input / output scales) are equal on every rank: no sync per forward
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
               inspect.signature(ddp.__init__).parameters else "broadcast_buffers")
    return ddp(call, device_ids=ids, **{no_sync: False})


def all_sum(*values: float, info: DistInfo | None = None) -> tuple[float, ...]:
    """Sum floats over ranks (returned unchanged in a single process)."""
    info = dist_info() if info is None else info
    if not info.enabled:
        return tuple(values)
    backend = dist.get_backend()
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(float(v) for v in t.cpu())


def barrier(info: DistInfo | None = None) -> None:
    """Wait for every rank (no-op in a single process)."""
    info = dist_info() if info is None else info
    if info.enabled:
        dist.barrier()


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None`` for fp32).

    Raises
    ------
    InputError
        For an unknown precision, or ``fp16`` off CUDA (use ``bf16`` on CPU).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise InputError(None, "precision", f"one of {', '.join(PRECISIONS)}", precision)
    if precision == "fp16" and device.type != "cuda":
        raise InputError(None, "precision",
                         "fp16 only on a CUDA device (use bf16 on CPU)", f"fp16 on {device}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products run natively on ``device``.

    CUDA: :func:`torch.cuda.is_bf16_supported`. CPU: oneDNN's bfloat16 support
    (AVX512-BF16 or AMX; without it bfloat16 is emulated and slower than float32).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (disabled: ``step`` is ``optimizer.step``).

    Raises
    ------
    InputError
        As :func:`autocast_dtype` (checked here, before any training work).
    """
    autocast_dtype(precision, device)
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
