/* Fused 2x2 stride-2 max-pool + ReLU, forward and backward, for channels_last tensors (memory order N, H, W, C).
 * Built and loaded by minivision_hf/fast_kernels.py (gcc -O3 -march=native -fopenmp where available, called through
 * ctypes). Also here: the first block's fused conv + max-pool + ReLU (below).
 *
 * Forward: y = relu(max of each 2x2 window), and a code per output: which window input won (0..3, first maximum in
 * the order (0,0) (0,1) (1,0) (1,1), NaN wins, as PyTorch's max_pool2d) or 4 where ReLU passes no gradient (y <= 0).
 * Backward: each input gradient is the output gradient where the code names it, else 0 (every element written once,
 * no zero fill). Codes have the element's width (int16 for bf16, int32 for fp32): same-width lanes vectorise best.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float f32_to_float(float f) { return f; }

/* rows r0..r1 of the output (row r = image r / H2, output line r % H2); W2 output columns; C channels. */
#define POOL_RELU_KERNELS(NAME, T, TO_FLOAT)                                                                    \
    static void NAME##_forward(const T *restrict x, T *restrict y, T *restrict code, long r0, long r1, long W2,  \
                               long C) {                                                                        \
        const long W = 2 * W2;                                                                                  \
        for (long r = r0; r < r1; ++r) {                                                                        \
            const T *top = x + 2 * r * W * C, *bottom = top + W * C;                                            \
            for (long j = 0; j < W2; ++j) {                                                                     \
                const T *restrict p0 = top + 2 * j * C, *restrict p1 = p0 + C;                                  \
                const T *restrict p2 = bottom + 2 * j * C, *restrict p3 = p2 + C;                               \
                T *restrict out = y + (r * W2 + j) * C, *restrict out_code = code + (r * W2 + j) * C;          \
                for (long k = 0; k < C; ++k) {                                                                  \
                    float m = TO_FLOAT(p0[k]), v;                                                               \
                    T best = p0[k], idx = 0;                                                                    \
                    int up;                                                                                     \
                    v = TO_FLOAT(p1[k]), up = (v > m) | (v != v);                                               \
                    m = up ? v : m, best = up ? p1[k] : best, idx = up ? 1 : idx;                               \
                    v = TO_FLOAT(p2[k]), up = (v > m) | (v != v);                                               \
                    m = up ? v : m, best = up ? p2[k] : best, idx = up ? 2 : idx;                               \
                    v = TO_FLOAT(p3[k]), up = (v > m) | (v != v);                                               \
                    m = up ? v : m, best = up ? p3[k] : best, idx = up ? 3 : idx;                               \
                    int open = !(m <= 0.0f); /* ReLU keeps x (and its gradient) unless x <= 0; NaN passes */    \
                    out[k] = open ? best : (T)0;                                                                \
                    out_code[k] = open ? idx : 4;                                                               \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    static void NAME##_backward(const T *restrict grad, const T *restrict code, T *restrict grad_x, long r0,     \
                                long r1, long W2, long C) {                                                     \
        const long W = 2 * W2;                                                                                  \
        for (long r = r0; r < r1; ++r) {                                                                        \
            T *top = grad_x + 2 * r * W * C, *bottom = top + W * C;                                             \
            for (long j = 0; j < W2; ++j) {                                                                     \
                T *restrict p0 = top + 2 * j * C, *restrict p1 = p0 + C;                                        \
                T *restrict p2 = bottom + 2 * j * C, *restrict p3 = p2 + C;                                     \
                const T *restrict g = grad + (r * W2 + j) * C, *restrict c = code + (r * W2 + j) * C;           \
                for (long k = 0; k < C; ++k) {                                                                  \
                    T v = g[k], which = c[k];                                                                   \
                    p0[k] = which == 0 ? v : (T)0;                                                              \
                    p1[k] = which == 1 ? v : (T)0;                                                              \
                    p2[k] = which == 2 ? v : (T)0;                                                              \
                    p3[k] = which == 3 ? v : (T)0;                                                              \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }

POOL_RELU_KERNELS(bf16, uint16_t, bf16_to_float)
POOL_RELU_KERNELS(f32, float, f32_to_float)

/* kind 0: forward (a = x, c = y, d = code); kind 1: backward (a = grad y, b = code, c = grad x). dtype 0: bf16,
 * 1: fp32. Output rows are split over OpenMP threads: the library links libgomp.so.1, which resolves to the one torch
 * already loaded, so these loops run on torch's own (already spinning) worker threads. */
int pool_relu(int kind, int dtype, const void *a, const void *b, void *c, void *d, long rows, long W2, long C,
              int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        long r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        if (kind == 0 && dtype == 0) bf16_forward(a, c, d, r0, r1, W2, C);
        else if (kind == 0) f32_forward(a, c, d, r0, r1, W2, C);
        else if (dtype == 0) bf16_backward(a, b, c, r0, r1, W2, C);
        else f32_backward(a, b, c, r0, r1, W2, C);
    }
    return 0;
}

/* ---- first block: 3x3 convolution (1 input channel, padding 1) + 2x2 max-pool + ReLU, never writing the
 * full-resolution map. bf16 autocast numerics: bf16 inputs and weights, fp32 sums, each conv output rounded to bf16
 * (nearest even) before the max, as oneDNN's bf16 convolution and max_pool2d on its output do. */

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded; /* NaN stays NaN */
}

/* The 4x4 input patch under output (i, j)'s 2x2 window: rows 2i-1..2i+2, columns 2j-1..2j+2, zeros outside. */
static inline void load_patch(const uint16_t *img, long H, long W, long i, long j, float patch[4][4]) {
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) { /* 16 loads per 2x2 window: cheap next to the C-channel loops below */
            long yy = 2 * i - 1 + a, xx = 2 * j - 1 + b;
            patch[a][b] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? bf16_to_float(img[yy * W + xx]) : 0.0f;
        }
}

/* x: (N, H, W) bf16; w: (9, C) fp32 holding bf16 values (tap-major); bias: (C); y, code: (N, H/2, W/2, C). */
static void conv_pool_relu_forward(const uint16_t *restrict x, const float *restrict w, const float *restrict bias,
                                   uint16_t *restrict y, int16_t *restrict code, long r0, long r1, long H, long W,
                                   long C) {
    const long H2 = H / 2, W2 = W / 2;
    for (long r = r0; r < r1; ++r) {
        const uint16_t *img = x + (r / H2) * H * W;
        for (long j = 0; j < W2; ++j) {
            float patch[4][4];
            load_patch(img, H, W, r % H2, j, patch);
            uint16_t *restrict out = y + (r * W2 + j) * C;
            int16_t *restrict out_code = code + (r * W2 + j) * C;
            for (long k = 0; k < C; ++k) {
                float m = 0.0f;
                uint16_t best = 0;
                int16_t idx = 0;
#pragma GCC unroll 4
                for (int p = 0; p < 4; ++p) {
                    const int di = p >> 1, dj = p & 1;
                    float acc = 0.0f;
#pragma GCC unroll 9
                    for (int t = 0; t < 9; ++t) acc += w[t * C + k] * patch[di + t / 3][dj + t % 3];
                    uint16_t bits = float_to_bf16(acc + bias[k]);
                    float v = bf16_to_float(bits);
                    int up = (p == 0) | (v > m) | (v != v);
                    m = up ? v : m, best = up ? bits : best, idx = up ? (int16_t)p : idx;
                }
                int open = !(m <= 0.0f);
                out[k] = open ? best : 0;
                out_code[k] = open ? idx : 4;
            }
        }
    }
}

/* One 2x2 window's share of d(loss)/d(w): tap t's gradient row is d[t] (the 9 rows and the bias row `db` passed as
 * separate restrict pointers, and not inlined: what gcc needs to vectorise the channel loop). */
static __attribute__((noinline)) void accumulate_window(
    const uint16_t *restrict g, const int16_t *restrict code, const float patch[4][4], float *restrict d0,
    float *restrict d1, float *restrict d2, float *restrict d3, float *restrict d4, float *restrict d5,
    float *restrict d6, float *restrict d7, float *restrict d8, float *restrict db, long C) {
    for (long k = 0; k < C; ++k) {
        float v = bf16_to_float(g[k]);
        int which = code[k]; /* the window input that won (0..3), or 4: ReLU closed, no gradient */
        float g0 = which == 0 ? v : 0.0f, g1 = which == 1 ? v : 0.0f;
        float g2 = which == 2 ? v : 0.0f, g3 = which == 3 ? v : 0.0f;
#define TAP(d, a, b) d[k] += g0 * patch[a][b] + g1 * patch[a][b + 1] + g2 * patch[a + 1][b] + g3 * patch[a + 1][b + 1]
        TAP(d0, 0, 0); TAP(d1, 0, 1); TAP(d2, 0, 2);
        TAP(d3, 1, 0); TAP(d4, 1, 1); TAP(d5, 1, 2);
        TAP(d6, 2, 0); TAP(d7, 2, 1); TAP(d8, 2, 2);
#undef TAP
        db[k] += g0 + g1 + g2 + g3;
    }
}

/* 16 channels at a time with GCC vector extensions: the 10 gradient rows stay in registers over all windows. */
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef int16_t v16i16 __attribute__((vector_size(32)));

static void backward_16_channels(const uint16_t *x, const uint16_t *grad, const int16_t *code, float *dw, long r0,
                                 long r1, long H, long W, long C, long k0) {
    const long H2 = H / 2, W2 = W / 2;
    v16f acc[10] = {0};
    for (long r = r0; r < r1; ++r) {
        const uint16_t *img = x + (r / H2) * H * W;
        for (long j = 0; j < W2; ++j) {
            float patch[4][4];
            load_patch(img, H, W, r % H2, j, patch);
            const long at = (r * W2 + j) * C + k0;
            v16u16 g16;
            v16i16 c16;
            memcpy(&g16, grad + at, sizeof g16);
            memcpy(&c16, code + at, sizeof c16);
            v16u bits = __builtin_convertvector(g16, v16u) << 16; /* bf16 -> fp32 bits */
            v16i which = __builtin_convertvector(c16, v16i);      /* 0..3: the window input that won; 4: none */
            v16f g0 = (v16f)(bits & (v16u)(which == 0)), g1 = (v16f)(bits & (v16u)(which == 1));
            v16f g2 = (v16f)(bits & (v16u)(which == 2)), g3 = (v16f)(bits & (v16u)(which == 3));
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b)
                    acc[3 * a + b] += g0 * patch[a][b] + g1 * patch[a][b + 1] + g2 * patch[a + 1][b] +
                                      g3 * patch[a + 1][b + 1];
            acc[9] += g0 + g1 + g2 + g3;
        }
    }
    for (int t = 0; t < 10; ++t) memcpy(dw + t * C + k0, &acc[t], sizeof acc[t]);
}

/* Accumulates d(loss)/d(w) into dw[0 .. 9C) (tap-major) and d(loss)/d(bias) into dw[9C .. 10C). */
static void conv_pool_relu_backward(const uint16_t *x, const uint16_t *grad, const int16_t *code, float *dw, long r0,
                                    long r1, long H, long W, long C) {
    if (C % 16 == 0) {
        for (long k0 = 0; k0 < C; k0 += 16) backward_16_channels(x, grad, code, dw, r0, r1, H, W, C, k0);
        return;
    }
    const long H2 = H / 2, W2 = W / 2;
    for (long r = r0; r < r1; ++r) {
        const uint16_t *img = x + (r / H2) * H * W;
        for (long j = 0; j < W2; ++j) {
            float patch[4][4];
            load_patch(img, H, W, r % H2, j, patch);
            const long at = (r * W2 + j) * C;
            accumulate_window(grad + at, code + at, patch, dw, dw + C, dw + 2 * C, dw + 3 * C, dw + 4 * C,
                              dw + 5 * C, dw + 6 * C, dw + 7 * C, dw + 8 * C, dw + 9 * C, C);
        }
    }
}

/* kind 0: forward (x, w, bias -> y, code); kind 1: backward (x, grad y, code -> dw: (10, C) fp32, overwritten).
 * rows = N * H/2. Each thread sums its own partial dw; the partials are added in thread order (deterministic). */
int conv_pool_relu(int kind, const void *x, const void *w, const void *bias, const void *grad, void *y, void *code,
                   float *dw, long rows, long H, long W, long C, int threads) {
    if (threads < 1) threads = 1;
    float *partial = 0;
    if (kind == 1) {
        partial = calloc((size_t)threads * 10 * C, sizeof(float));
        if (!partial) return 1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        long r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        if (kind == 0) conv_pool_relu_forward(x, w, bias, y, code, r0, r1, H, W, C);
        else conv_pool_relu_backward(x, grad, code, partial + (size_t)t * 10 * C, r0, r1, H, W, C);
    }
    if (kind == 1) {
        memset(dw, 0, sizeof(float) * 10 * C);
        for (int t = 0; t < threads; ++t)
            for (long e = 0; e < 10 * C; ++e) dw[e] += partial[(size_t)t * 10 * C + e];
        free(partial);
    }
    return 0;
}
