"""The one place that chooses a scan backend, and the `recblr::bd_lru` custom op.

Backends:
  reference  pure PyTorch oracle (`recblr.kernels.reference`), autograd through the gates.
  cpu        fused (`recblr.kernels.cpu`): a compiled C kernel for CPU tensors (built with the
             system compiler on first use), else cache-blocked PyTorch; runs on any device.
  triton     fused Triton kernels (`recblr.kernels.triton_scan`); CUDA tensors, or CPU
             tensors when TRITON_INTERPRET=1 was set before the kernels were imported.

Default: `triton` for CUDA tensors when Triton is installed, `cpu` otherwise.
`RECBLR_SCAN_BACKEND=reference|cpu|triton` forces one; a choice that cannot run raises
`ScanBackendError` naming the variable and the valid choices.

`cpu` and `triton` go through one `torch.library` custom op (`recblr::bd_lru`, with its
backward `recblr::bd_lru_backward`, autograd and fake implementations), so torch.compile
sees a single op, and backward saves only the inputs plus the states h.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from recblr.errors import RecblrError
from recblr.kernels import cpu as _cpu
from recblr.kernels import reference as _reference

ENV_VAR = "RECBLR_SCAN_BACKEND"
BACKENDS = ("reference", "cpu", "triton")


class ScanBackendError(RecblrError, ValueError):
    """A scan backend was asked for that does not exist or cannot run on these tensors."""


# Looked up once: torch.compile traces the dispatch, and cannot trace importlib or Triton's knobs.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def triton_interpret() -> bool:
    """Whether TRITON_INTERPRET asks Triton to run kernels in its CPU interpreter.

    Triton reads the variable when it decorates the kernels, i.e. when
    `recblr.kernels.triton_scan` is first imported: set it before that.
    """
    value = os.environ.get("TRITON_INTERPRET", "")
    return _TRITON_INSTALLED and value.strip().lower() in ("1", "true", "on", "yes")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on tensors of `device`."""
    device = torch.device(device)
    out = ["reference", "cpu"]
    if triton_installed() and (device.type == "cuda" or triton_interpret()):
        out.append("triton")
    return out


def _why_unavailable(name: str, device: torch.device) -> str:
    if not triton_installed():
        return "triton is not installed"
    return f"triton needs CUDA tensors (got {device.type}) or TRITON_INTERPRET=1"


def get_backend(device: torch.device | str = "cpu") -> str:
    """The backend `bd_lru` uses for tensors on `device` (honours RECBLR_SCAN_BACKEND)."""
    device = torch.device(device)
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        return check_backend(forced, device, source=f"{ENV_VAR}={forced!r}")
    if device.type == "cuda" and triton_installed():
        return "triton"
    return "cpu"


def check_backend(name: str, device: torch.device | str, source: str | None = None) -> str:
    device = torch.device(device)
    source = source or f"backend {name!r}"
    if name not in BACKENDS:
        raise ScanBackendError(
            f"{source}: unknown scan backend; set {ENV_VAR} to one of {', '.join(BACKENDS)} "
            f"(or unset it to choose automatically)"
        )
    if name not in available_backends(device):
        raise ScanBackendError(
            f"{source}: the {name} scan backend is not available here "
            f"({_why_unavailable(name, device)}); set {ENV_VAR} to one of "
            f"{', '.join(available_backends(device))} (valid choices: {', '.join(BACKENDS)}), "
            f"or unset it to choose automatically"
        )
    return name


def _impl(backend: str):
    if backend == "cpu":
        return _cpu
    if backend == "triton":
        from recblr.kernels import triton_scan

        return triton_scan
    raise ScanBackendError(f"backend {backend!r} has no fused implementation")


# ----------------------------------------------------------------------------- custom op


@torch.library.custom_op("recblr::bd_lru", mutates_args=())
def bd_lru_op(
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """Every state h (B, T, C), dtype of x, from a fused backend ('cpu' or 'triton')."""
    return _impl(backend).forward(x, r_pre, i_pre, lam, h0)


@bd_lru_op.register_fake
def _bd_lru_fake(x, r_pre, i_pre, lam, h0, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("recblr::bd_lru_backward", mutates_args=())
def bd_lru_backward_op(
    grad_h: torch.Tensor,
    h: torch.Tensor,
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dr_pre, di_pre, dlam, dh0), each in the dtype of its input (dh0: h0's or x's)."""
    dx, dr, di, dlam, dh0 = _impl(backend).backward(grad_h, h, x, r_pre, i_pre, lam, h0)
    dh0 = dh0.to(x.dtype if h0 is None else h0.dtype)
    return dx, dr, di, dlam.to(lam.dtype), dh0


@bd_lru_backward_op.register_fake
def _bd_lru_backward_fake(grad_h, h, x, r_pre, i_pre, lam, h0, backend):
    B, _, C = x.shape
    dh0_dtype = x.dtype if h0 is None else h0.dtype
    return (
        x.new_empty(x.shape),
        r_pre.new_empty(r_pre.shape),
        i_pre.new_empty(i_pre.shape),
        lam.new_empty(lam.shape),
        x.new_empty((B, C), dtype=dh0_dtype),
    )


def _setup_context(ctx, inputs, output):
    x, r_pre, i_pre, lam, h0, backend = inputs
    ctx.backend = backend
    ctx.has_h0 = h0 is not None
    # Only the inputs and the states: a and b are recomputed in the backward.
    ctx.save_for_backward(x, r_pre, i_pre, lam, h0, output)


def _backward(ctx, grad_h):
    x, r_pre, i_pre, lam, h0, h = ctx.saved_tensors
    dx, dr, di, dlam, dh0 = bd_lru_backward_op(grad_h, h, x, r_pre, i_pre, lam, h0, ctx.backend)
    return dx, dr, di, dlam, (dh0 if ctx.has_h0 else None), None


torch.library.register_autograd("recblr::bd_lru", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API


def _check_shapes(x, r_pre, i_pre, lam, h0):
    if x.dim() != 3 or r_pre.shape != x.shape or i_pre.shape != x.shape:
        raise ValueError(
            f"bd_lru wants x, r_pre, i_pre of one shape (B, T, C); got "
            f"{tuple(x.shape)}, {tuple(r_pre.shape)}, {tuple(i_pre.shape)}"
        )
    B, T, C = x.shape
    if T < 1:
        raise ValueError("bd_lru needs at least one time step (T >= 1)")
    if lam.shape != (C,):
        raise ValueError(f"bd_lru wants lam of shape ({C},), got {tuple(lam.shape)}")
    if h0 is not None and h0.shape != (B, C):
        raise ValueError(f"bd_lru wants h0 of shape ({B}, {C}), got {tuple(h0.shape)}")


def bd_lru(
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-LRU over (B, T, C) inputs: (every h_t, the last h), gradients to all five inputs.

    a = exp(-softplus(lam) * sigmoid(r_pre)), b = sqrt(1 - a^2 + 1e-8) * sigmoid(i_pre),
    h_t = a_t h_{t-1} + b_t x_t with h_0 = h0 (zeros when None). `backend` overrides the
    automatic choice (tests, benchmarks); the model leaves it None.
    """
    _check_shapes(x, r_pre, i_pre, lam, h0)
    if backend is None:
        backend = get_backend(x.device)
    else:
        check_backend(backend, x.device)
    if backend == "reference":
        return _reference.bd_lru(x, r_pre, i_pre, lam, h0)
    h = bd_lru_op(x, r_pre, i_pre, lam, h0, backend)
    return h, h[:, -1]


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + b_t for (B, T, C) tensors (b already includes x)."""
    return _reference.linear_scan(a, b, h0)
