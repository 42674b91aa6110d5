"""Fused BD-LRU Triton kernels (the `triton` backend).

One program owns a block of up to 128 channels of one batch row (one thread per channel, see
`launch_config`) and walks T sequentially in registers, CHUNK_T steps per loop iteration (the
chunk is unrolled, so the loads of a chunk are independent of the recurrence and can be issued
together). Loads are contiguous along C, the last dim of the model's (B, T, C) layout; any
strides over B and T are taken as they are (the model's r_pre/i_pre are halves of one Linear
output). Any T works: a step t >= T inside the last chunk is made the identity explicitly
(a = 1, b = 0, no store).

The gates are computed in the kernel from the pre-activations, in float32 whatever the input
dtype. The backward recomputes a and b from r_pre, i_pre, lam (only the inputs and h are
saved) and walks T in reverse by index arithmetic (no reverse associative scan):

    G_t = dL/dh_t + a_{t+1} G_{t+1};  dx = G b;  db = G x;  da = G h_{t-1} - db sig(i) a / q

dlam is reduced over T in registers and over B on the host; dh0 = a_1 G_1.

Launches name every argument. A missing h0 is passed as None: `HAS_H0` (a constexpr set by
`triton.heuristics`) compiles the variant that starts from zeros and never touches h0_ptr.

With TRITON_INTERPRET=1 in the environment *before this module is imported*, the kernels run
on CPU tensors in Triton's interpreter (slow: tests only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from recblr.kernels.reference import EPS

CHUNK_T = 8
MAX_BLOCK_C = 128


def launch_config(C: int) -> tuple[int, int]:
    """(channels per program, warps per program): one thread per channel, up to 4 warps.

    A GPU keeps a bounded number of programs per SM (32 on Hopper), so 1-warp programs fill
    at most half of its 64 warp slots. On an H200 at C=128, T=200, 4-warp programs ran the
    forward at 1.17x the memory floor against 1.60x for 1-warp ones
    (benchmarks/results/triton_configs.json).
    """
    block = min(MAX_BLOCK_C, max(32, triton.next_power_of_2(C)))
    return block, block // 32


@triton.jit
def _softplus(v):
    # torch.nn.functional.softplus with its default threshold of 20.
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def _program_start(lam_ptr, h0_ptr, C, HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    """This program's batch row, channels and their mask, Lambda, and h0 (zeros without one)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = offs_c < C
    lam = tl.load(lam_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    if HAS_H0:
        h0 = tl.load(h0_ptr + pid_b * C + offs_c, mask=cmask, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK], dtype=tl.float32)
    return pid_b, offs_c, cmask, lam, h0


@triton.heuristics({"HAS_H0": lambda args: args["h0_ptr"] is not None})
@triton.jit
def _bd_lru_fwd_kernel(
    x_ptr, r_ptr, i_ptr, lam_ptr, h0_ptr, h_ptr,
    T, C,
    sxb, sxt, srb, srt, sib, sit, shb, sht,
    HAS_H0: tl.constexpr, EPS_: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_b, offs_c, cmask, lam, h = _program_start(lam_ptr, h0_ptr, C, HAS_H0, BLOCK)
    neg_s = -_softplus(lam)
    zero_c = tl.zeros([BLOCK], dtype=tl.int32)
    x_row = x_ptr + pid_b * sxb + offs_c
    r_row = r_ptr + pid_b * srb + offs_c
    i_row = i_ptr + pid_b * sib + offs_c
    h_row = h_ptr + pid_b * shb + offs_c
    for t0 in range(0, T, CHUNK):
        for k in tl.static_range(CHUNK):
            t = t0 + k
            valid = (zero_c + t) < T  # a vector: the interpreter wants tensor masks
            m = cmask & valid
            xv = tl.load(x_row + t * sxt, mask=m, other=0.0).to(tl.float32)
            rv = tl.load(r_row + t * srt, mask=m, other=0.0).to(tl.float32)
            iv = tl.load(i_row + t * sit, mask=m, other=0.0).to(tl.float32)
            a = tl.exp(neg_s * tl.sigmoid(rv))
            b = tl.sqrt(1.0 - a * a + EPS_) * tl.sigmoid(iv)
            # Past the end: the identity step, whatever the masked loads gave.
            a = tl.where(valid, a, 1.0)
            b = tl.where(valid, b, 0.0)
            h = a * h + b * xv
            tl.store(h_row + t * sht, h.to(h_ptr.dtype.element_ty), mask=m)


@triton.heuristics({"HAS_H0": lambda args: args["h0_ptr"] is not None})
@triton.jit
def _bd_lru_bwd_kernel(
    gh_ptr, h_ptr, x_ptr, r_ptr, i_ptr, lam_ptr, h0_ptr,
    dx_ptr, dr_ptr, di_ptr, dlam_ptr, dh0_ptr,
    T, C,
    sgb, sgt, shb, sht, sxb, sxt, srb, srt, sib, sit,
    HAS_H0: tl.constexpr, EPS_: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_b, offs_c, cmask, lam, h0 = _program_start(lam_ptr, h0_ptr, C, HAS_H0, BLOCK)
    neg_s = -_softplus(lam)
    zero_c = tl.zeros([BLOCK], dtype=tl.int32)
    g_row = gh_ptr + pid_b * sgb + offs_c
    h_row = h_ptr + pid_b * shb + offs_c
    x_row = x_ptr + pid_b * sxb + offs_c
    r_row = r_ptr + pid_b * srb + offs_c
    i_row = i_ptr + pid_b * sib + offs_c
    # Gradient outputs are contiguous (B, T, C).
    d_row = pid_b * T * C + offs_c
    carry = tl.zeros([BLOCK], dtype=tl.float32)  # a_{t+1} G_{t+1}
    dlam_acc = tl.zeros([BLOCK], dtype=tl.float32)
    n_chunks = tl.cdiv(T, CHUNK)
    for j in range(0, n_chunks):
        t0 = (n_chunks - 1 - j) * CHUNK
        for kk in tl.static_range(CHUNK):
            t = t0 + (CHUNK - 1 - kk)
            valid = (zero_c + t) < T  # a vector: the interpreter wants tensor masks
            m = cmask & valid
            g = tl.load(g_row + t * sgt, mask=m, other=0.0).to(tl.float32)
            xv = tl.load(x_row + t * sxt, mask=m, other=0.0).to(tl.float32)
            rv = tl.load(r_row + t * srt, mask=m, other=0.0).to(tl.float32)
            iv = tl.load(i_row + t * sit, mask=m, other=0.0).to(tl.float32)
            not_first = (zero_c + t) > 0
            hp = tl.load(h_row + (t - 1) * sht, mask=m & not_first, other=0.0).to(tl.float32)
            hp = tl.where(not_first, hp, h0)
            sr = tl.sigmoid(rv)
            si = tl.sigmoid(iv)
            a = tl.exp(neg_s * sr)
            q = tl.sqrt(1.0 - a * a + EPS_)
            a = tl.where(valid, a, 1.0)
            b = tl.where(valid, q * si, 0.0)
            G = g + carry
            db = G * xv
            da = G * hp - db * si * a / q
            e = tl.where(valid, da * a, 0.0)  # dL/d(log a)
            dlam_acc += e * sr
            tl.store(dx_ptr + d_row + t * C, (G * b).to(dx_ptr.dtype.element_ty), mask=m)
            tl.store(
                dr_ptr + d_row + t * C,
                (e * neg_s * sr * (1.0 - sr)).to(dr_ptr.dtype.element_ty),
                mask=m,
            )
            tl.store(
                di_ptr + d_row + t * C,
                (db * q * si * (1.0 - si)).to(di_ptr.dtype.element_ty),
                mask=m,
            )
            carry = a * G
    tl.store(dlam_ptr + pid_b * C + offs_c, -dlam_acc * tl.sigmoid(lam), mask=cmask)
    tl.store(dh0_ptr + pid_b * C + offs_c, carry, mask=cmask)


def _c_contig(t: torch.Tensor) -> torch.Tensor:
    """Channels must be stride 1; other strides are passed to the kernel as they are."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _grid(B: int, C: int, block: int):
    return (B, triton.cdiv(C, block))


@torch.no_grad()
def forward(x, r_pre, i_pre, lam, h0=None):
    """Every state h_t (B, T, C) in x's dtype."""
    B, T, C = x.shape
    x, r_pre, i_pre = _c_contig(x), _c_contig(r_pre), _c_contig(i_pre)
    lam = lam.contiguous()
    h = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    block, warps = launch_config(C)
    _bd_lru_fwd_kernel[_grid(B, C, block)](
        x_ptr=x, r_ptr=r_pre, i_ptr=i_pre, lam_ptr=lam,
        h0_ptr=None if h0 is None else h0.contiguous(), h_ptr=h,
        T=T, C=C,
        sxb=x.stride(0), sxt=x.stride(1), srb=r_pre.stride(0), srt=r_pre.stride(1),
        sib=i_pre.stride(0), sit=i_pre.stride(1), shb=h.stride(0), sht=h.stride(1),
        EPS_=EPS, BLOCK=block, CHUNK=CHUNK_T, num_warps=warps,
    )  # fmt: skip
    return h


@torch.no_grad()
def backward(grad_h, h, x, r_pre, i_pre, lam, h0=None):
    """(dx, dr_pre, di_pre, dlam, dh0) given dL/dh; dlam and dh0 are float32."""
    B, T, C = x.shape
    grad_h, h = _c_contig(grad_h), _c_contig(h)
    x, r_pre, i_pre = _c_contig(x), _c_contig(r_pre), _c_contig(i_pre)
    lam = lam.contiguous()
    dx = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    dr = torch.empty((B, T, C), dtype=r_pre.dtype, device=x.device)
    di = torch.empty((B, T, C), dtype=i_pre.dtype, device=x.device)
    dlam_part = torch.empty((B, C), dtype=torch.float32, device=x.device)
    dh0 = torch.empty((B, C), dtype=torch.float32, device=x.device)
    block, warps = launch_config(C)
    _bd_lru_bwd_kernel[_grid(B, C, block)](
        gh_ptr=grad_h, h_ptr=h, x_ptr=x, r_ptr=r_pre, i_ptr=i_pre, lam_ptr=lam,
        h0_ptr=None if h0 is None else h0.contiguous(),
        dx_ptr=dx, dr_ptr=dr, di_ptr=di, dlam_ptr=dlam_part, dh0_ptr=dh0,
        T=T, C=C,
        sgb=grad_h.stride(0), sgt=grad_h.stride(1), shb=h.stride(0), sht=h.stride(1),
        sxb=x.stride(0), sxt=x.stride(1), srb=r_pre.stride(0), srt=r_pre.stride(1),
        sib=i_pre.stride(0), sit=i_pre.stride(1),
        EPS_=EPS, BLOCK=block, CHUNK=CHUNK_T, num_warps=warps,
    )  # fmt: skip
    return dx, dr, di, dlam_part.sum(0), dh0
