/* Fused BD-LRU scan for the `cpu` backend of recblr (plain C99, OpenMP when available).
 *
 *   a_t = exp(-softplus(lam) * sigmoid(r_t)),  b_t = sqrt(1 - a_t^2 + 1e-8) * sigmoid(i_t),
 *   h_t = a_t h_{t-1} + b_t x_t,               h_{-1} = h0 (zeros when h0 == NULL).
 *
 * Layout: x, r, i, grad_h, h are (B, T, C) with unit stride along C; their batch and time
 * strides are passed in elements, so r and i may be the two halves of one (B, T, 2C) tensor
 * (the model's `gate_proj(x).chunk(2, -1)`) without a copy. Outputs h, dx, dr, di are
 * contiguous (B, T, C); h0 and dh0 contiguous (B, C); lam and dlam (C).
 *
 * The backward walks t from T-1 down to 0 and recomputes a and b from the saved
 * pre-activations (only the inputs and h are kept). With G_t the total gradient of h_t:
 *   G_t = dL/dh_t + a_{t+1} G_{t+1},  dx = G b,  db = G x,
 *   da  = G h_{t-1} - db si a / q                (q = sqrt(1 - a^2 + 1e-8), si = sigmoid(i)),
 *   e   = da a                                   (dL/d log a, with log a = -s sr),
 *   dr  = -e s sr (1 - sr),  di = db q si (1 - si),  dlam = -sigmoid(lam) sum_{b,t} e sr,
 *   dh0 = a_0 G_0.
 * Work is split into (batch row, channel block) tasks over OpenMP threads; each thread sums
 * its share of dlam in double into its own row, and the rows are added at the end.
 *
 * float32 uses an inlined exp (range reduction + degree-7 Taylor polynomial, about 1 ulp)
 * that gcc vectorises at -O3 -fno-math-errno; float64 uses libm's exp. The typed part of the
 * file is written once and included twice (once per element type) by name, from its own directory.
 */
#ifndef BDLRU_REAL

#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise under -std=c99 */
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define BDLRU_EPS 1e-8
#ifndef BDLRU_TB
#define BDLRU_TB 16 /* time steps per tile */
#endif
#define BDLRU_CAT2(a, b) a##b
#define BDLRU_CAT(a, b) BDLRU_CAT2(a, b)

/* exp for float32, branch-free so that the loops calling it vectorise. */
static inline float bdlru_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;      /* few mantissa bits: n * ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;   /* ln2 - ln2_hi */
    const float shifter = 12582912.0f;      /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float t = xc * log2e + shifter;
    float n = t - shifter;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t ni = ti - 0x4B400000;           /* n as an integer, read from t's mantissa */
    float f = (xc - n * ln2_hi) - n * ln2_lo; /* |f| <= ln2 / 2 */
    /* exp(f) - 1 = sum_{1<=k<=7} f^k / k!, grouped (Estrin) for a short dependency chain */
    float f2 = f * f;
    float f4 = f2 * f2;
    float p23 = 0.5f + f * (1.0f / 6.0f);
    float p45 = (1.0f / 24.0f) + f * (1.0f / 120.0f);
    float p67 = (1.0f / 720.0f) + f * (1.0f / 5040.0f);
    float em1 = (f + f2 * p23) + f4 * (p45 + f2 * p67);
    uint32_t bits = (uint32_t)(ni + 127) << 23; /* 2^n for n in [-126, 127] (unsigned: no UB
                                                 * for the garbage n of a NaN input) */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float r = scale + scale * em1;          /* one rounding of 2^n (1 + em1): < 1 ulp */
    r = x < -87.0f ? 0.0f : r;              /* true value is subnormal or 0 */
    r = x > 88.0f ? (float)INFINITY : r;
    return r;                               /* NaN in: both clamps keep it, NaN out */
}

static inline double bdlru_exp(double x) { return exp(x); }

static inline double bdlru_softplus(double x)
{
    return log1p(exp(-fabs(x))) + (x > 0.0 ? x : 0.0);
}

static int bdlru_threads(int requested)
{
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

/* Tasks: B rows times nblk channel blocks, enough blocks to keep every thread busy when B
 * is small, each block a multiple of 16 channels (whole vectors). */
static int64_t bdlru_channel_block(int64_t B, int64_t C, int nthreads)
{
    if (B >= 2 * (int64_t)nthreads || C <= 16)
        return C;
    int64_t want = (2 * (int64_t)nthreads + B - 1) / B;
    int64_t cb = (C + want - 1) / want;
    cb = (cb + 15) / 16 * 16;
    return cb < C ? cb : C;
}

int bdlru_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int bdlru_abi_version(void) { return 2; }

/* Ask Linux for transparent huge pages on the 2 MiB-aligned interior of a freshly allocated,
 * not yet touched buffer (an output). glibc maps every allocation above 32 MiB anew, and its
 * first write then takes one page fault per 4 KiB page, which costs about as much as the
 * kernel's own work; with huge pages it is one fault per 2 MiB. Only an advice: returns 0
 * when given, 1 when the platform has no such advice or the buffer holds no aligned 2 MiB,
 * -1 when madvise refused it (a kernel built without THP); the buffer is usable either way. */
int bdlru_advise_hugepages(void *p, int64_t nbytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t hi = ((uintptr_t)p + (uintptr_t)(nbytes > 0 ? nbytes : 0)) & ~(huge - 1);
    if (hi <= lo)
        return 1;
    return madvise((void *)lo, (size_t)(hi - lo), MADV_HUGEPAGE) == 0 ? 0 : -1;
#else
    (void)p;
    (void)nbytes;
    return 1;
#endif
}

#define BDLRU_REAL float
#define BDLRU_SFX f32
#define BDLRU_EXP bdlru_expf
#define BDLRU_SQRT sqrtf
#include "bd_lru.c" /* this file, typed part */
#undef BDLRU_REAL
#undef BDLRU_SFX
#undef BDLRU_EXP
#undef BDLRU_SQRT

#define BDLRU_REAL double
#define BDLRU_SFX f64
#define BDLRU_EXP bdlru_exp
#define BDLRU_SQRT sqrt
#include "bd_lru.c" /* this file, typed part */
#undef BDLRU_REAL
#undef BDLRU_SFX
#undef BDLRU_EXP
#undef BDLRU_SQRT

#else /* ------------------------------------------------------------ typed part */

#define R BDLRU_REAL
#define FN(name) BDLRU_CAT(name, BDLRU_SFX)

/* One task of the forward: batch row (pointers already offset), channels [c0, c1).
 * One pass per time step: the gates and the update of every channel in one vectorised loop
 * (the lanes are channels, so the recurrence through t is no dependency inside the loop; a
 * tiled variant that stored the gates first measured 7% slower). */
static void FN(bdlru_fwd_task_)(int64_t T, int64_t C, int64_t c0, int64_t c1,
                                const R *restrict x, int64_t sxt,
                                const R *restrict r, int64_t srt,
                                const R *restrict ip, int64_t sit,
                                const R *restrict neg_s, const R *restrict h0,
                                R *restrict out)
{
    const int64_t n = c1 - c0;
    const R *ns = neg_s + c0;
    for (int64_t t = 0; t < T; t++) {
        const R *rt = r + t * srt + c0, *it = ip + t * sit + c0, *xt = x + t * sxt + c0;
        R *ot = out + t * C + c0;
        const R *hp = t > 0 ? ot - C : (h0 ? h0 + c0 : NULL);
        if (hp) {
            for (int64_t k = 0; k < n; k++) {
                R sr = (R)1 / ((R)1 + BDLRU_EXP(-rt[k]));
                R si = (R)1 / ((R)1 + BDLRU_EXP(-it[k]));
                R a = BDLRU_EXP(ns[k] * sr);
                R q = BDLRU_SQRT((R)1 - a * a + (R)BDLRU_EPS);
                ot[k] = a * hp[k] + (q * si) * xt[k];
            }
        } else {
            for (int64_t k = 0; k < n; k++) {
                R sr = (R)1 / ((R)1 + BDLRU_EXP(-rt[k]));
                R si = (R)1 / ((R)1 + BDLRU_EXP(-it[k]));
                R a = BDLRU_EXP(ns[k] * sr);
                R q = BDLRU_SQRT((R)1 - a * a + (R)BDLRU_EPS);
                ot[k] = (q * si) * xt[k];
            }
        }
    }
}

/* Forward: out (B, T, C) contiguous. Returns 0, or -1 when memory ran out. */
int FN(bdlru_forward_)(int64_t B, int64_t T, int64_t C,
                       const R *x, int64_t sxb, int64_t sxt,
                       const R *r, int64_t srb, int64_t srt,
                       const R *ip, int64_t sib, int64_t sit,
                       const R *lam, const R *h0, R *out, int nthreads)
{
    R *neg_s = (R *)malloc((size_t)(C > 0 ? C : 1) * sizeof(R));
    if (!neg_s)
        return -1;
    for (int64_t c = 0; c < C; c++)
        neg_s[c] = (R)(-bdlru_softplus((double)lam[c]));
    int nt = bdlru_threads(nthreads);
    int64_t cb = bdlru_channel_block(B, C, nt);
    int64_t nblk = C > 0 ? (C + cb - 1) / cb : 0;
    int64_t ntask = B * nblk;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && ntask > 1)
#endif
    for (int64_t task = 0; task < ntask; task++) {
        int64_t b = task / nblk, c0 = (task % nblk) * cb;
        int64_t c1 = c0 + cb < C ? c0 + cb : C;
        FN(bdlru_fwd_task_)(T, C, c0, c1, x + b * sxb, sxt, r + b * srb, srt,
                            ip + b * sib, sit, neg_s, h0 ? h0 + b * C : NULL,
                            out + b * T * C);
    }
    free(neg_s);
    return 0;
}

/* One task of the backward: batch row (pointers already offset), channels [c0, c1).
 * Tiles of BDLRU_TB steps from the last: gates of the tile (independent), the reverse
 * recurrence for G over the tile, then every gradient of the tile (independent).
 * `carry` (c1 - c0): a_{t+1} G_{t+1} between tiles; `sc`: scratch of 5 * BDLRU_TB * n. */
static void FN(bdlru_bwd_task_)(int64_t T, int64_t C, int64_t c0, int64_t c1,
                                const R *restrict g, int64_t sgt,
                                const R *restrict h,
                                const R *restrict x, int64_t sxt,
                                const R *restrict r, int64_t srt,
                                const R *restrict ip, int64_t sit,
                                const R *restrict neg_s, const R *restrict h0,
                                R *restrict dx, R *restrict dr, R *restrict di,
                                double *restrict dlam_acc, R *restrict dh0,
                                R *restrict carry, R *restrict sc, const R *restrict zeros)
{
    const int64_t n = c1 - c0;
    const int64_t tile = BDLRU_TB * n;
    R *gsr = sc, *gsi = sc + tile, *ga = sc + 2 * tile, *gq = sc + 3 * tile, *gG = sc + 4 * tile;
    const R *ns = neg_s + c0;
    double *acc = dlam_acc + c0;
    for (int64_t k = 0; k < n; k++)
        carry[k] = 0;
    const int64_t ntile = (T + BDLRU_TB - 1) / BDLRU_TB;
    for (int64_t j = ntile - 1; j >= 0; j--) {
        const int64_t t0 = j * BDLRU_TB;
        const int64_t t1 = t0 + BDLRU_TB < T ? t0 + BDLRU_TB : T;
        for (int64_t t = t0; t < t1; t++) {
            const R *rt = r + t * srt + c0, *it = ip + t * sit + c0;
            R *srt_ = gsr + (t - t0) * n, *sit_ = gsi + (t - t0) * n;
            for (int64_t k = 0; k < n; k++) {
                srt_[k] = (R)1 / ((R)1 + BDLRU_EXP(-rt[k]));
                sit_[k] = (R)1 / ((R)1 + BDLRU_EXP(-it[k]));
            }
        }
        for (int64_t t = t0; t < t1; t++) {
            const R *srt_ = gsr + (t - t0) * n;
            R *at = ga + (t - t0) * n, *qt = gq + (t - t0) * n;
            for (int64_t k = 0; k < n; k++) {
                R a = BDLRU_EXP(ns[k] * srt_[k]);
                at[k] = a;
                qt[k] = BDLRU_SQRT((R)1 - a * a + (R)BDLRU_EPS);
            }
        }
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const R *gt = g + t * sgt + c0, *at = ga + (t - t0) * n;
            R *Gt = gG + (t - t0) * n;
            for (int64_t k = 0; k < n; k++) {
                R G = gt[k] + carry[k];
                Gt[k] = G;
                carry[k] = at[k] * G;
            }
        }
        for (int64_t t = t0; t < t1; t++) {
            const int64_t o = (t - t0) * n;
            const R *sr = gsr + o, *si = gsi + o, *at = ga + o, *qt = gq + o, *Gt = gG + o;
            const R *xt = x + t * sxt + c0;
            const R *hp = t > 0 ? h + (t - 1) * C + c0 : (h0 ? h0 + c0 : zeros);
            R *dxt = dx + t * C + c0, *drt = dr + t * C + c0, *dit = di + t * C + c0;
            for (int64_t k = 0; k < n; k++) {
                R G = Gt[k], a = at[k], q = qt[k], s_r = sr[k], s_i = si[k];
                R db = G * xt[k];
                dxt[k] = G * (s_i * q);
                R da = G * hp[k] - db * s_i * a / q;
                R e = da * a;  /* dL / d log a */
                acc[k] += (double)(e * s_r);
                drt[k] = e * ns[k] * (s_r - s_r * s_r);
                dit[k] = db * q * (s_i - s_i * s_i);
            }
        }
    }
    for (int64_t k = 0; k < n; k++)
        dh0[c0 + k] = carry[k];
}

/* Backward: dx, dr, di (B, T, C) and dh0 (B, C) contiguous, dlam (C); h contiguous.
 * Returns 0, or -1 when memory ran out. */
int FN(bdlru_backward_)(int64_t B, int64_t T, int64_t C,
                        const R *g, int64_t sgb, int64_t sgt,
                        const R *h,
                        const R *x, int64_t sxb, int64_t sxt,
                        const R *r, int64_t srb, int64_t srt,
                        const R *ip, int64_t sib, int64_t sit,
                        const R *lam, const R *h0,
                        R *dx, R *dr, R *di, R *dlam, R *dh0, int nthreads)
{
    int nt = bdlru_threads(nthreads);
    size_t Cs = (size_t)(C > 0 ? C : 1);
    R *neg_s = (R *)malloc(Cs * sizeof(R));
    double *total = (double *)calloc(Cs, sizeof(double));
    R *zeros = (R *)calloc(Cs, sizeof(R));
    if (!neg_s || !total || !zeros) {
        free(neg_s);
        free(total);
        free(zeros);
        return -1;
    }
    for (int64_t c = 0; c < C; c++)
        neg_s[c] = (R)(-bdlru_softplus((double)lam[c]));
    int64_t cb = bdlru_channel_block(B, C, nt);
    int64_t nblk = C > 0 ? (C + cb - 1) / cb : 0;
    int64_t ntask = B * nblk;
    size_t cbs = (size_t)(cb > 0 ? cb : 1);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && ntask > 1)
#endif
    {
        /* Per thread: its dlam partial sums (all C), the carry and the tile scratch. */
        double *acc = (double *)calloc(Cs, sizeof(double));
        R *carry = (R *)malloc(cbs * (1 + 5 * BDLRU_TB) * sizeof(R));
        if (!acc || !carry) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t task = 0; task < ntask; task++) {
            if (!acc || !carry)
                continue;
            int64_t b = task / nblk, c0 = (task % nblk) * cb;
            int64_t c1 = c0 + cb < C ? c0 + cb : C;
            FN(bdlru_bwd_task_)(T, C, c0, c1, g + b * sgb, sgt, h + b * T * C,
                                x + b * sxb, sxt, r + b * srb, srt, ip + b * sib, sit,
                                neg_s, h0 ? h0 + b * C : NULL,
                                dx + b * T * C, dr + b * T * C, di + b * T * C,
                                acc, dh0 + b * C, carry, carry + cbs, zeros);
        }
        if (acc) {
#ifdef _OPENMP
#pragma omp critical(bdlru_dlam)
#endif
            for (int64_t c = 0; c < C; c++)
                total[c] += acc[c];
        }
        free(acc);
        free(carry);
    }
    for (int64_t c = 0; c < C; c++) {
        double sig = 1.0 / (1.0 + exp(-(double)lam[c]));
        dlam[c] = (R)(-sig * total[c]);
    }
    free(neg_s);
    free(total);
    free(zeros);
    return failed ? -1 : 0;
}

#undef FN
#undef R

#endif
