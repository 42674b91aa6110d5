"""Fused BD-LRU in plain PyTorch, blocked for the CPU cache (the `cpu` backend).

Forward and backward are gradient-free functions; `recblr.kernels.dispatch` wires them into one
custom op with autograd. The tensors are walked in blocks of (Bb batch rows, c time steps, C
channels) small enough to stay in cache: for each block the gates are computed from the
pre-activations in a few vectorised passes, then the recurrence is a sequential in-place
`addcmul_` over the c steps of the block (one PyTorch op per step, every step a contiguous
(Bb, C) slab). A state carried from block to block makes any T work, and nothing divides by a
cumulative product of a (which underflows), so the result is as exact as the reference loop.

The backward recomputes a and b from the saved pre-activations (only the inputs and the
states h are saved) and walks the same blocks in reverse order:

    G_t  = dL/dh_t + a_{t+1} G_{t+1}            (total gradient of h_t)
    dx_t = G_t b_t,  db_t = G_t x_t,  da_t = G_t h_{t-1} + db_t * d b_t / d a_t
    then the chain rule through sigmoid, exp(-softplus(lam) * .) and sqrt; dh0 = a_1 G_1.

Arithmetic is float32 for float32/bfloat16/float16 inputs (float64 for float64 inputs, so
gradcheck can run); outputs take the dtype of their input.

Native path. `forward` and `backward` first try a compiled C kernel (`csrc/bd_lru.c`, built
with the system C compiler on first use and cached, see `recblr.kernels.cbuild`): one pass
over the inputs per direction, vectorised over C, OpenMP over (batch row, channel block) with
`torch.get_num_threads()` threads. It runs float32 and float64; bfloat16/float16 inputs are
converted to float32 around the call (one copy each way) and the results converted back.
r_pre and i_pre may be strided views (the model's `chunk(2, -1)` halves): their row strides
go to the kernel, no copy. Without a compiler, or when the build fails, one RuntimeWarning
says why and the PyTorch blocked path below runs instead; `native_available()` and
`native_status()` tell which path is in use. `RECBLR_CPU_NATIVE=0` forces the PyTorch path.
Outputs of 32 MiB and more are advised onto transparent huge pages before the kernel writes
them (Linux, THP in `madvise` or `always` mode): glibc maps such allocations anew on every
call, and faulting them in 4 KiB at a time otherwise costs as much as the scan itself.
`RECBLR_CPU_HUGEPAGES=0` turns the advice off (the results are the same either way).
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from recblr.kernels import cbuild
from recblr.kernels.reference import EPS

NATIVE_ENV = "RECBLR_CPU_NATIVE"
HUGEPAGES_ENV = "RECBLR_CPU_HUGEPAGES"
# Outputs from this size up get the huge-page advice: glibc maps every allocation above
# 32 MiB anew (smaller ones are recycled from its heap, already faulted in).
HUGEPAGE_MIN_BYTES = 32 << 20
NATIVE_SOURCE = Path(__file__).resolve().parent / "csrc" / "bd_lru.c"

# Elements of one (Bb, C) slab: large enough that one op amortises PyTorch's per-call cost,
# small enough that a block of CHUNK_T steps of every temporary stays in L2.
SLAB = 1 << 15
CHUNK_T = 8


def _blocks(B: int, T: int, C: int):
    bb = max(1, min(B, SLAB // max(C, 1)))
    for b0 in range(0, B, bb):
        b1 = min(B, b0 + bb)
        yield b0, b1, [(t0, min(T, t0 + CHUNK_T)) for t0 in range(0, T, CHUNK_T)]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype: float64 for float64 inputs (gradcheck), float32 for all others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gates(r: torch.Tensor, i: torch.Tensor, neg_s: torch.Tensor):
    """(sigmoid(r), sigmoid(i), a, q = sqrt(1 - a^2 + EPS)) of one block, in neg_s's dtype."""
    sr = torch.sigmoid(r.to(neg_s.dtype))
    si = torch.sigmoid(i.to(neg_s.dtype))
    a = torch.mul(sr, neg_s).exp_()
    # (1 - a*a) + EPS rounded exactly as the reference rounds it (this matters as a -> 1).
    q = torch.mul(a, a).neg_().add_(1.0).add_(EPS).sqrt_()
    return sr, si, a, q


@torch.no_grad()
def forward_torch(
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every state h_t (B, T, C) in x's dtype."""
    B, T, C = x.shape
    acc = acc_dtype(x.dtype)
    neg_s = -F.softplus(lam.to(acc))
    out = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    direct = out.dtype == acc
    for b0, b1, chunks in _blocks(B, T, C):
        if h0 is None:
            prev = torch.zeros((b1 - b0, C), dtype=acc, device=x.device)
        else:
            prev = h0[b0:b1].to(acc)
        for t0, t1 in chunks:
            sl = (slice(b0, b1), slice(t0, t1))
            _, si, a, q = _gates(r_pre[sl], i_pre[sl], neg_s)
            u = out[sl] if direct else torch.empty_like(si)
            torch.mul(si, q, out=u)
            u.mul_(x[sl])  # u = b * x
            for k in range(t1 - t0):
                hk = u[:, k]
                hk.addcmul_(a[:, k], prev)
                prev = hk
            if not direct:
                out[sl] = u
    return out


@torch.no_grad()
def backward_torch(
    grad_h: torch.Tensor,
    h: torch.Tensor,
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None = None,
):
    """(dx, dr_pre, di_pre, dlam, dh0) given dL/dh for every state; dlam, dh0 in acc dtype."""
    B, T, C = x.shape
    acc = acc_dtype(x.dtype)
    lam_a = lam.to(acc)
    s = F.softplus(lam_a)
    neg_s = -s
    dx = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    dr = torch.empty((B, T, C), dtype=r_pre.dtype, device=x.device)
    di = torch.empty((B, T, C), dtype=i_pre.dtype, device=x.device)
    dlam = torch.zeros(C, dtype=acc, device=x.device)
    dh0 = torch.empty((B, C), dtype=acc, device=x.device)
    for b0, b1, chunks in _blocks(B, T, C):
        carry = torch.zeros((b1 - b0, C), dtype=acc, device=x.device)  # a_{t+1} G_{t+1}
        for t0, t1 in reversed(chunks):
            sl = (slice(b0, b1), slice(t0, t1))
            sr, si, a, q = _gates(r_pre[sl], i_pre[sl], neg_s)
            g = grad_h[sl].to(acc, copy=True)  # becomes G, then db's memory
            n = t1 - t0
            g[:, n - 1].add_(carry)
            for k in range(n - 2, -1, -1):
                g[:, k].addcmul_(a[:, k + 1], g[:, k + 1])
            carry = a[:, 0] * g[:, 0]
            # h_{t-1} for the block's steps.
            if t0 > 0:
                h_prev = h[b0:b1, t0 - 1 : t1 - 1].to(acc)
            else:
                first = (
                    torch.zeros((b1 - b0, 1, C), dtype=acc, device=x.device)
                    if h0 is None
                    else h0[b0:b1, None].to(acc)
                )
                h_prev = torch.cat([first, h[b0:b1, : t1 - 1].to(acc)], dim=1)
            db = g * x[sl]
            dx[sl] = g * (si * q)
            da = g.mul_(h_prev)  # G h_{t-1}; G itself is not needed any more
            da.sub_(torch.mul(db, si).mul_(a).div_(q))  # + db * d(q si)/da = -db si a / q
            e = da.mul_(a)  # dL/d(log a)
            dlam.add_(torch.mul(e, sr).sum((0, 1)))
            dr[sl] = e.mul_(neg_s).mul_(torch.addcmul(sr, sr, sr, value=-1))
            di[sl] = db.mul_(q).mul_(torch.addcmul(si, si, si, value=-1))
        dh0[b0:b1] = carry
    dlam.mul_(-torch.sigmoid(lam_a))
    return dx, dr, di, dlam, dh0


# ----------------------------------------------------------------------------- native path

_native_lock = threading.Lock()
_native: dict = {"tried": False, "built": None, "error": None}


def _switched_on(env: str) -> bool:
    """An on-by-default switch: off when the variable is 0, false, off or no."""
    return os.environ.get(env, "").strip().lower() not in ("0", "false", "off", "no")


def native_enabled() -> bool:
    """False when RECBLR_CPU_NATIVE=0 (or false/off/no) forces the PyTorch path."""
    return _switched_on(NATIVE_ENV)


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    strided = [ptr, i64, i64]
    for sfx in ("f32", "f64"):
        fwd = getattr(lib, f"bdlru_forward_{sfx}")
        fwd.argtypes = [i64, i64, i64, *strided * 3, ptr, ptr, ptr, cint]
        fwd.restype = cint
        bwd = getattr(lib, f"bdlru_backward_{sfx}")
        bwd.argtypes = [i64, i64, i64, *strided, ptr, *strided * 3, ptr, ptr, *[ptr] * 5, cint]
        bwd.restype = cint
    lib.bdlru_advise_hugepages.argtypes = [ptr, i64]
    lib.bdlru_advise_hugepages.restype = cint
    lib.bdlru_abi_version.restype = cint
    if lib.bdlru_abi_version() != 2:
        raise cbuild.BuildError("kernel library has an unexpected ABI version")


def _library():
    """The loaded native library, or None (after one warning saying why)."""
    if _native["tried"]:
        return _native["built"].lib if _native["built"] is not None else None
    with _native_lock:
        if not _native["tried"]:
            try:
                built = cbuild.build(NATIVE_SOURCE)
                _declare(built.lib)
                _native["built"] = built
            except (cbuild.BuildError, OSError, AttributeError) as e:
                _native["error"] = str(e)
                warnings.warn(
                    f"recblr: native cpu scan kernel unavailable, using the slower PyTorch "
                    f"path ({e})",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _native["tried"] = True
    return _native["built"].lib if _native["built"] is not None else None


def native_available() -> bool:
    """Whether the compiled kernel is built and loaded (builds it on the first call)."""
    return _library() is not None


def native_status() -> str:
    """One line: which path `cpu` uses, the library path, or why the native path is off."""
    if not native_enabled():
        return f"PyTorch path ({NATIVE_ENV}=0)"
    if _library() is None:
        return f"PyTorch path (native kernel unavailable: {_native['error']})"
    b = _native["built"]
    threads = "OpenMP" if b.openmp else "one thread (no OpenMP)"
    return f"native kernel {b.path} ({threads})"


def reset_native() -> None:
    """Forget the loaded library so the next call builds/loads again (tests)."""
    with _native_lock:
        _native.update(tried=False, built=None, error=None)


def _use_native(x: torch.Tensor):
    if x.device.type != "cpu" or not native_enabled():
        return None
    return _library()


def _rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype` with unit stride along C (a strided view is kept as is)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t


def hugepages_enabled() -> bool:
    """False when RECBLR_CPU_HUGEPAGES=0 (or false/off/no) turns the output advice off."""
    return _switched_on(HUGEPAGES_ENV)


def _empty_out(lib, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A fresh output; a large one is advised onto transparent huge pages before its first
    write (one page fault per 2 MiB instead of per 4 KiB: a third of the forward's time at
    the benchmark's 64 MiB outputs). Only an advice: where the kernel refuses it, nothing
    changes."""
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if nbytes >= HUGEPAGE_MIN_BYTES and hugepages_enabled():
        lib.bdlru_advise_hugepages(out.data_ptr(), nbytes)
    return out


def _strided(t: torch.Tensor):
    return t.data_ptr(), t.stride(0), t.stride(1)


def _native_forward(lib, x, r_pre, i_pre, lam, h0):
    B, T, C = x.shape
    acc = acc_dtype(x.dtype)
    xs, rs, is_ = (_rows(t, acc) for t in (x, r_pre, i_pre))
    lam_c = lam.to(acc).contiguous()
    h0_c = None if h0 is None else h0.to(acc).contiguous()
    out = _empty_out(lib, (B, T, C), acc)
    fn = lib.bdlru_forward_f64 if acc == torch.float64 else lib.bdlru_forward_f32
    rc = fn(B, T, C, *_strided(xs), *_strided(rs), *_strided(is_), lam_c.data_ptr(),
            None if h0_c is None else h0_c.data_ptr(), out.data_ptr(),
            torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise MemoryError("bd_lru native forward: out of memory")
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _native_backward(lib, grad_h, h, x, r_pre, i_pre, lam, h0):
    B, T, C = x.shape
    acc = acc_dtype(x.dtype)
    gs, xs, rs, is_ = (_rows(t, acc) for t in (grad_h, x, r_pre, i_pre))
    h_c = h.to(acc).contiguous()
    lam_c = lam.to(acc).contiguous()
    h0_c = None if h0 is None else h0.to(acc).contiguous()
    dx, dr, di = (_empty_out(lib, (B, T, C), acc) for _ in range(3))
    dlam = torch.empty(C, dtype=acc)
    dh0 = torch.empty((B, C), dtype=acc)
    fn = lib.bdlru_backward_f64 if acc == torch.float64 else lib.bdlru_backward_f32
    rc = fn(B, T, C, *_strided(gs), h_c.data_ptr(), *_strided(xs), *_strided(rs),
            *_strided(is_), lam_c.data_ptr(), None if h0_c is None else h0_c.data_ptr(),
            dx.data_ptr(), dr.data_ptr(), di.data_ptr(), dlam.data_ptr(), dh0.data_ptr(),
            torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise MemoryError("bd_lru native backward: out of memory")
    return dx.to(x.dtype), dr.to(r_pre.dtype), di.to(i_pre.dtype), dlam, dh0


@torch.no_grad()
def forward(
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every state h_t (B, T, C) in x's dtype: native kernel when available, else PyTorch."""
    lib = _use_native(x)
    if lib is not None:
        return _native_forward(lib, x, r_pre, i_pre, lam, h0)
    return forward_torch(x, r_pre, i_pre, lam, h0)


@torch.no_grad()
def backward(
    grad_h: torch.Tensor,
    h: torch.Tensor,
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None = None,
):
    """(dx, dr_pre, di_pre, dlam, dh0): native kernel when available, else PyTorch."""
    lib = _use_native(x)
    if lib is not None:
        return _native_backward(lib, grad_h, h, x, r_pre, i_pre, lam, h0)
    return backward_torch(grad_h, h, x, r_pre, i_pre, lam, h0)
