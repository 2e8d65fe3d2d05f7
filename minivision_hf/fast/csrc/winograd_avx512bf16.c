/* The Winograd block in one pass per image, with its own bf16 matrix products (AVX-512 BF16 dot products, vdpbf16ps,
 * fp32 sums): every transformed array of an image stays in the thread's cache, the channel-mixing products are kept in
 * fp32 until the output transform, and there is one parallel region per pass: the "c-one-pass" path of the Winograd
 * block. The tile transforms are winograd_tiles.h's, as in the "c+bmm" path (winograd_transforms.c).
 *
 * Compiled at every ISA level, but only a level with AVX-512 BF16 (x86-64-v4-bf16: -march=x86-64-v4 -mavx512bf16)
 * gets the kernels; elsewhere mv_winograd_one_pass_built() returns 0, the other functions -1, and
 * minivision_hf/fast chooses the c+bmm path. */
#include <stdlib.h>

#include "minivision_kernels.h"
#include "winograd_tiles.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>
_Static_assert(VL == 16, "the one-pass kernels step through channels 16 at a time, one AVX-512 register");
int mv_winograd_one_pass_built(void) { return 1; }

/* C[r][16v..] (+)= sum_k A(r, k) . B[k][16v..], over k-pairs: A(r, k) is the bf16 pair at dword A[r * lda + k * ldk],
 * B is packed [K2][ldb dwords] (bf16 pairs along k), C rows at stride ldc (fp32). R rows x NV vectors of 16 columns. */
#define WINOGRAD_GEMM(R, NV)                                                                                          \
    static __attribute__((noinline)) void gemm_##R##x##NV(const uint32_t *A, long lda, long ldk, const uint32_t *B,   \
                                                          long ldb, long K2, float *C, long ldc, int accumulate) {  \
        __m512 acc[R][NV];                                                                                          \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v)    \
            acc[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();                   \
        for (long k = 0; k < K2; ++k) {                                                                             \
            __m512bh b[NV];                                                                                         \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) b[v] =                                             \
                (__m512bh)_mm512_loadu_si512(B + k * ldb + 16 * v);                                                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {                                                   \
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[r * lda + k * ldk]);                                \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]); \
            }                                                                                                       \
        }                                                                                                           \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v)    \
            _mm512_storeu_ps(C + r * ldc + 16 * v, acc[r][v]);                                                      \
    }
WINOGRAD_GEMM(4, 4)
WINOGRAD_GEMM(8, 2)
WINOGRAD_GEMM(8, 1)
WINOGRAD_GEMM(1, 4)
WINOGRAD_GEMM(1, 2)
WINOGRAD_GEMM(1, 1)

/* rows x cols (a multiple of 16): blocks of 4 or 8 rows, the rest one row at a time */
static void gemm(const uint32_t *A, long lda, long ldk, const uint32_t *B, long ldb, long K2, float *C, long ldc,
                 long rows, long cols, int accumulate) {
    long c0 = 0, r;
    for (; c0 + 64 <= cols; c0 += 64) {
        for (r = 0; r + 4 <= rows; r += 4)
            gemm_4x4(A + r * lda, lda, ldk, B + c0, ldb, K2, C + r * ldc + c0, ldc, accumulate);
        for (; r < rows; ++r) gemm_1x4(A + r * lda, lda, ldk, B + c0, ldb, K2, C + r * ldc + c0, ldc, accumulate);
    }
    for (; c0 + 32 <= cols; c0 += 32) {
        for (r = 0; r + 8 <= rows; r += 8)
            gemm_8x2(A + r * lda, lda, ldk, B + c0, ldb, K2, C + r * ldc + c0, ldc, accumulate);
        for (; r < rows; ++r) gemm_1x2(A + r * lda, lda, ldk, B + c0, ldb, K2, C + r * ldc + c0, ldc, accumulate);
    }
    for (; c0 < cols; c0 += 16) {
        for (r = 0; r + 8 <= rows; r += 8)
            gemm_8x1(A + r * lda, lda, ldk, B + c0, ldb, K2, C + r * ldc + c0, ldc, accumulate);
        for (; r < rows; ++r) gemm_1x1(A + r * lda, lda, ldk, B + c0, ldb, K2, C + r * ldc + c0, ldc, accumulate);
    }
}

static inline void store_bf16_native(uint16_t *p, vf f) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh((__m512)f));
}
static inline vu bf16_pair(vf lo, vf hi) { /* dword = bf16(lo) | bf16(hi) << 16 */
    return round_bf16_fast(lo) | (round_bf16_fast(hi) << 16);
}

/* Per-thread work arrays for one image: TP = tiles rounded up to a multiple of 8 (rows past the tiles stay zero). */
typedef struct {
    uint16_t *v;     /* (16, TP, CI) bf16: transformed input, rows = tiles (forward product's A) */
    uint32_t *vp;    /* (16, TP/2, CI) bf16 pairs along tiles (weight-gradient product's A) */
    float *m;        /* (16, TP, max(CI, CO)) fp32: the products (forward M, backward dV) */
    uint16_t *dm;    /* (16, TP, CO) bf16: dM, rows = tiles (input-gradient product's A) */
    uint32_t *dmp;   /* (16, TP/2, CO) bf16 pairs along tiles (weight-gradient product's B) */
    float *image;    /* (H + 2, W + 2, CI) fp32: the input gradient being summed */
    float *du;       /* (16, CI, CO) fp32: this thread's weight-gradient sum */
    float *dbias;    /* (CO) */
} winograd_work;

static void fused_forward_image(const uint16_t *x, const uint32_t *up, const float *bias, uint16_t *y, int16_t *code,
                                const uint16_t *zeros, winograd_work *w, long n, long H, long W, long CI, long CO,
                                long TP) {
    const long T = (H / 2) * (W / 2);
    for (long t = 0; t < T; ++t) {
        const uint16_t *p[16];
        tile_pointers(x, zeros, n, t, H, W, CI, p);
        for (long k = 0; k < CI; k += 16) {
            vf out[16];
            input_tile(p, k, out);
            for (int e = 0; e < 16; ++e) store_bf16_native(w->v + (e * TP + t) * CI + k, out[e]);
        }
    }
    for (int e = 0; e < 16; ++e)
        gemm((const uint32_t *)(w->v + e * TP * CI), CI / 2, 1, up + e * (CI / 2) * CO, CO, CI / 2, w->m + e * TP * CO,
             CO, T, CO, 0);
    for (long t = 0; t < T; ++t)
        for (long k = 0; k < CO; k += 16) {
            vf m[16];
            for (int e = 0; e < 16; ++e) m[e] = load_f32_v(w->m + (e * TP + t) * CO + k);
            output_tile(m, load_f32_v(bias + k), y + (n * T + t) * CO + k, code + (n * T + t) * CO + k);
        }
}

static void fused_backward_image(const uint16_t *x, const uint16_t *grad, const int16_t *code, const uint32_t *utp,
                                 uint16_t *grad_x, const uint16_t *zeros, winograd_work *w, long n, long H, long W,
                                 long CI, long CO, long TP, int want_grad_x) {
    const long T = (H / 2) * (W / 2), Wp = W + 2;
    /* dM (both layouts) and the recomputed input transform (tile pairs), two tiles at a time */
    for (long t = 0; t < T; t += 2) {
        const int pair = t + 1 < T;
        for (long k = 0; k < CO; k += 16) {
            vf d0[16], d1[16];
            vf g = output_tile_backward(grad, code, (n * T + t) * CO + k, d0);
            if (pair) g += output_tile_backward(grad, code, (n * T + t + 1) * CO + k, d1);
            else
                for (int e = 0; e < 16; ++e) d1[e] = (vf){0};
            store_f32_v(w->dbias + k, load_f32_v(w->dbias + k) + g);
            for (int e = 0; e < 16; ++e) {
                store_bf16_v(w->dm + (e * TP + t) * CO + k, (vu)d0[e] >> 16); /* exact: 0 or +-g */
                if (pair) store_bf16_v(w->dm + (e * TP + t + 1) * CO + k, (vu)d1[e] >> 16);
                vu both = ((vu)d0[e] >> 16) | ((vu)d1[e] & 0xffff0000u);
                memcpy(w->dmp + (e * (TP / 2) + t / 2) * CO + k, &both, sizeof both);
            }
        }
        const uint16_t *p0[16], *p1[16];
        tile_pointers(x, zeros, n, t, H, W, CI, p0);
        if (pair) tile_pointers(x, zeros, n, t + 1, H, W, CI, p1);
        for (long k = 0; k < CI; k += 16) {
            vf v0[16], v1[16];
            input_tile(p0, k, v0);
            if (pair) input_tile(p1, k, v1);
            else
                for (int e = 0; e < 16; ++e) v1[e] = (vf){0};
            for (int e = 0; e < 16; ++e) {
                vu both = bf16_pair(v0[e], v1[e]);
                memcpy(w->vp + (e * (TP / 2) + t / 2) * CI + k, &both, sizeof both);
            }
        }
    }
    /* dU[e] += V[e]^T dM[e] (pairs along tiles) */
    for (int e = 0; e < 16; ++e)
        gemm(w->vp + e * (TP / 2) * CI, 1, CI, w->dmp + e * (TP / 2) * CO, CO, (T + 1) / 2, w->du + e * CI * CO, CO,
             CI, CO, 1);
    if (!want_grad_x) return;
    /* dV[e] = dM[e] U[e]^T, then grad x = sum over tiles of B dV B^T */
    for (int e = 0; e < 16; ++e)
        gemm((const uint32_t *)(w->dm + e * TP * CO), CO / 2, 1, utp + e * (CO / 2) * CI, CI, CO / 2,
             w->m + e * TP * CI, CI, T, CI, 0);
    memset(w->image, 0, sizeof(float) * (H + 2) * Wp * CI);
    const long W2 = W / 2;
    for (long t = 0; t < T; ++t) {
        const long ty = t / W2, tx = t % W2;
        for (long k = 0; k < CI; k += 16) {
            vf d[16];
            for (int e = 0; e < 16; ++e) d[e] = load_f32_v(w->m + (e * TP + t) * CI + k);
            input_tile_backward(d, w->image + (2 * ty * Wp + 2 * tx) * CI + k, Wp * CI, CI);
        }
    }
    for (long yy = 0; yy < H; ++yy)
        for (long xx = 0; xx < W; ++xx)
            for (long k = 0; k < CI; k += 16)
                store_bf16_native(grad_x + ((n * H + yy) * W + xx) * CI + k,
                                  load_f32_v(w->image + ((yy + 1) * Wp + xx + 1) * CI + k));
}

/* One arena of per-thread work arrays (winograd_work) for both passes; NULL when out of memory. */
static char *work_arena(int threads, long H, long W, long CI, long CO, size_t *per_thread) {
    const long T = (H / 2) * (W / 2), TP = (T + 7) / 8 * 8, CM = CI > CO ? CI : CO;
    *per_thread = sizeof(uint16_t) * 16 * TP * CI + sizeof(uint32_t) * 16 * (TP / 2) * CI +
                  sizeof(float) * 16 * TP * CM + sizeof(uint16_t) * 16 * TP * CO +
                  sizeof(uint32_t) * 16 * (TP / 2) * CO + sizeof(float) * (H + 2) * (W + 2) * CI +
                  sizeof(float) * 16 * CI * CO + sizeof(float) * CO;
    return calloc((size_t)threads, *per_thread);
}

/* Thread i's work arrays inside the arena (the weight-gradient sums last: mv_winograd_one_pass_backward adds them). */
static winograd_work thread_work(char *arena, size_t per_thread, int i, long H, long W, long CI, long CO) {
    const long T = (H / 2) * (W / 2), TP = (T + 7) / 8 * 8, CM = CI > CO ? CI : CO;
    char *p = arena + (size_t)i * per_thread;
    winograd_work w;
    w.v = (uint16_t *)p, p += sizeof(uint16_t) * 16 * TP * CI;
    w.vp = (uint32_t *)p, p += sizeof(uint32_t) * 16 * (TP / 2) * CI;
    w.m = (float *)p, p += sizeof(float) * 16 * TP * CM;
    w.dm = (uint16_t *)p, p += sizeof(uint16_t) * 16 * TP * CO;
    w.dmp = (uint32_t *)p, p += sizeof(uint32_t) * 16 * (TP / 2) * CO;
    w.image = (float *)p, p += sizeof(float) * (H + 2) * (W + 2) * CI;
    w.du = (float *)p, p += sizeof(float) * 16 * CI * CO;
    w.dbias = (float *)p;
    return w;
}

static int unsupported(long height, long width, long in_channels, long out_channels) {
    return in_channels % 16 || out_channels % 16 || height % 2 || width % 2;
}

int mv_winograd_one_pass_forward(const uint16_t *x, const uint32_t *weight_pairs, const float *bias, uint16_t *y,
                                 int16_t *code, long images, long height, long width, long in_channels,
                                 long out_channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, in_channels, out_channels)) return 2;
    const long T = (height / 2) * (width / 2), TP = (T + 7) / 8 * 8;
    size_t per_thread;
    char *arena = work_arena(threads, height, width, in_channels, out_channels, &per_thread);
    uint16_t *zeros = calloc((size_t)in_channels, sizeof(uint16_t)); /* the zero padding */
    if (!arena || !zeros) {
        free(arena);
        free(zeros);
        return 1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) {
        winograd_work w = thread_work(arena, per_thread, i, height, width, in_channels, out_channels);
        for (long n = images * i / threads; n < images * (i + 1) / threads; ++n)
            fused_forward_image(x, weight_pairs, bias, y, code, zeros, &w, n, height, width, in_channels,
                                out_channels, TP);
    }
    free(arena);
    free(zeros);
    return 0;
}

int mv_winograd_one_pass_backward(const uint16_t *x, const uint32_t *weight_pairs_t, const uint16_t *grad_y,
                                  const int16_t *code, uint16_t *grad_x, float *grad_u, float *grad_bias,
                                  long images, long height, long width, long in_channels, long out_channels,
                                  int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, in_channels, out_channels)) return 2;
    const long T = (height / 2) * (width / 2), TP = (T + 7) / 8 * 8, CI = in_channels, CO = out_channels;
    size_t per_thread;
    char *arena = work_arena(threads, height, width, CI, CO, &per_thread);
    uint16_t *zeros = calloc((size_t)CI, sizeof(uint16_t));
    if (!arena || !zeros) {
        free(arena);
        free(zeros);
        return 1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) {
        winograd_work w = thread_work(arena, per_thread, i, height, width, CI, CO);
        for (long n = images * i / threads; n < images * (i + 1) / threads; ++n)
            fused_backward_image(x, grad_y, code, weight_pairs_t, grad_x, zeros, &w, n, height, width, CI, CO, TP,
                                 grad_x != 0);
    }
    /* the threads' partial sums, in thread order (deterministic) */
    memset(grad_u, 0, sizeof(float) * 16 * CI * CO);
    memset(grad_bias, 0, sizeof(float) * CO);
    for (int i = 0; i < threads; ++i) {
        const winograd_work w = thread_work(arena, per_thread, i, height, width, CI, CO);
        for (long e = 0; e < 16 * CI * CO; ++e) grad_u[e] += w.du[e];
        for (long k = 0; k < CO; ++k) grad_bias[k] += w.dbias[k];
    }
    free(arena);
    free(zeros);
    return 0;
}
#else
int mv_winograd_one_pass_built(void) { return 0; }

int mv_winograd_one_pass_forward(const uint16_t *x, const uint32_t *weight_pairs, const float *bias, uint16_t *y,
                                 int16_t *code, long images, long height, long width, long in_channels,
                                 long out_channels, int threads) {
    (void)x, (void)weight_pairs, (void)bias, (void)y, (void)code, (void)images, (void)height, (void)width;
    (void)in_channels, (void)out_channels, (void)threads;
    return -1; /* not built at this ISA level */
}

int mv_winograd_one_pass_backward(const uint16_t *x, const uint32_t *weight_pairs_t, const uint16_t *grad_y,
                                  const int16_t *code, uint16_t *grad_x, float *grad_u, float *grad_bias,
                                  long images, long height, long width, long in_channels, long out_channels,
                                  int threads) {
    (void)x, (void)weight_pairs_t, (void)grad_y, (void)code, (void)grad_x, (void)grad_u, (void)grad_bias;
    (void)images, (void)height, (void)width, (void)in_channels, (void)out_channels, (void)threads;
    return -1; /* not built at this ISA level */
}
#endif
