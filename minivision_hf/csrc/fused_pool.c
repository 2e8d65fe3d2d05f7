/* Fused 2x2 stride-2 max-pool + ReLU, forward and backward, for channels_last tensors (memory order N, H, W, C).
 * Built and loaded by minivision_hf/fast_kernels.py (gcc -O3 -march=native -fopenmp where available, called through
 * ctypes). Also here: the first block's fused conv + max-pool + ReLU, and the second block's Winograd conv with the
 * max-pool + ReLU in its output transform (below).
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

static inline v16f load_bf16_16(const uint16_t *p) {
    v16u16 h;
    memcpy(&h, p, sizeof h);
    return (v16f)(__builtin_convertvector(h, v16u) << 16);
}
static inline v16u round_bf16_16(v16f f) { /* fp32 -> bf16 bits (in the low half), nearest even; NaN stays NaN */
    v16u u = (v16u)f;
    v16u rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    v16i nan = (v16i)((u & 0x7fffffffu) > 0x7f800000u);
    return ((v16u)nan & ((u >> 16) | 0x40u)) | (~(v16u)nan & rounded);
}
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
/* round_bf16_16 in one instruction (vcvtneps2bf16: nearest even; denormals flush to zero, as in oneDNN's bf16) */
static inline v16u round_bf16_fast(v16f f) {
    return (v16u)_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh((__m512)f));
}
#else
#define round_bf16_fast round_bf16_16
#endif
static inline void store_bf16_16(uint16_t *p, v16u bits) {
    v16u16 h = __builtin_convertvector(bits, v16u16);
    memcpy(p, &h, sizeof h);
}
static inline v16f load_f32_16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store_f32_16(float *p, v16f v) { memcpy(p, &v, sizeof v); }

/* Rounds the 4 conv outputs of a 2x2 window to bf16 and stores relu(max) and its code (as pool_relu: first maximum,
 * NaN wins, 4 where ReLU closes). */
static inline void pool_relu_16(const v16f out[4], uint16_t *y, int16_t *code) {
    v16u best = round_bf16_fast(out[0]);
    v16f top = (v16f)(best << 16);
    v16i idx = (v16i){0};
    for (int q = 1; q < 4; ++q) {
        v16u bits = round_bf16_fast(out[q]);
        v16f v = (v16f)(bits << 16);
        v16i up = (v > top) | (v != v);
        top = (v16f)(((v16i)v & up) | ((v16i)top & ~up));
        best = (bits & (v16u)up) | (best & ~(v16u)up);
        idx = (q & up) | (idx & ~up);
    }
    v16i open = ~(top <= 0.0f); /* ReLU keeps it (and its gradient) unless <= 0; NaN passes */
    store_bf16_16(y, best & (v16u)open);
    v16i16 c16 = __builtin_convertvector((idx & open) | (4 & ~open), v16i16);
    memcpy(code, &c16, sizeof c16);
}

/* Winograd output transform of one tile for 16 channels: A^T M A + bias, then pool_relu_16. */
static inline void output_tile(const v16f m[16], v16f bias, uint16_t *y, int16_t *code) {
    v16f s0[4], s1[4];
    for (int v = 0; v < 4; ++v) s0[v] = m[v] + m[4 + v] + m[8 + v], s1[v] = m[4 + v] - m[8 + v] - m[12 + v];
    v16f out[4] = {s0[0] + s0[1] + s0[2] + bias, s0[1] - s0[2] - s0[3] + bias, s1[0] + s1[1] + s1[2] + bias,
                   s1[1] - s1[2] - s1[3] + bias}; /* window order (0,0) (0,1) (1,0) (1,1) */
    pool_relu_16(out, y, code);
}

/* The 16 input rows under image n's tile t (zeros outside the image), for input_tile. */
static inline void tile_pointers(const uint16_t *x, const uint16_t *zeros, long n, long t, long H, long W, long C,
                                 const uint16_t *p[16]) {
    const long W2 = W / 2, ty = t / W2, tx = t % W2;
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            long yy = 2 * ty - 1 + a, xx = 2 * tx - 1 + b;
            p[4 * a + b] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x + ((n * H + yy) * W + xx) * C : zeros;
        }
}

/* The input tile transform (as winograd_input): out[4e + v] = (B^T d B)[e][v] for 16 channels at k. */
static inline void input_tile(const uint16_t *const p[16], long k, v16f out[16]) {
    v16f r[4][4];
    for (int b = 0; b < 4; ++b) {
        v16f d0 = load_bf16_16(p[b] + k), d1 = load_bf16_16(p[4 + b] + k);
        v16f d2 = load_bf16_16(p[8 + b] + k), d3 = load_bf16_16(p[12 + b] + k);
        r[0][b] = d0 - d2, r[1][b] = d1 + d2, r[2][b] = d2 - d1, r[3][b] = d1 - d3;
    }
    for (int e = 0; e < 4; ++e) {
        out[4 * e + 0] = r[e][0] - r[e][2], out[4 * e + 1] = r[e][1] + r[e][2];
        out[4 * e + 2] = r[e][2] - r[e][1], out[4 * e + 3] = r[e][1] - r[e][3];
    }
}

/* Backward of input_tile: adds B dV B^T (dV: d[4e + v] for 16 channels) to the tile's 4x4 input window, whose top-left
 * element is at `at` in an fp32 image of row stride `row` (floats) and C channels. */
static inline void input_tile_backward(const v16f d[16], float *at, long row, long C) {
    v16f q[4][4];
    for (int v = 0; v < 4; ++v) /* B dV: along the rows */
        q[0][v] = d[v], q[1][v] = d[4 + v] - d[8 + v] + d[12 + v], q[2][v] = d[4 + v] + d[8 + v] - d[v],
        q[3][v] = -d[12 + v];
    for (int a = 0; a < 4; ++a) { /* (B dV) B^T: along the columns */
        float *r = at + a * row;
        v16f dd[4] = {q[a][0], q[a][1] - q[a][2] + q[a][3], q[a][1] + q[a][2] - q[a][0], -q[a][3]};
        for (int b = 0; b < 4; ++b) store_f32_16(r + b * C, load_f32_16(r + b * C) + dd[b]);
    }
}

/* dM of one tile for 16 channels at k (as winograd_output_backward); returns the gradient that passes (for dbias). */
static inline v16f output_tile_backward(const uint16_t *grad, const int16_t *code, long at, v16f out[16]) {
    const float a_rows[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}}; /* A^T */
    v16i16 c16;
    memcpy(&c16, code + at, sizeof c16);
    v16i which = __builtin_convertvector(c16, v16i);
    v16f g = (v16f)((v16i)load_bf16_16(grad + at) & (which < 4));
    v16i row1 = (which >> 1) == 1, col1 = (which & 1) == 1;
    v16f gi[4], cj[4];
    for (int e = 0; e < 4; ++e) {
        v16f r0 = (v16f){0} + a_rows[0][e], r1 = (v16f){0} + a_rows[1][e];
        gi[e] = g * (v16f)(((v16i)r1 & row1) | ((v16i)r0 & ~row1));
        cj[e] = (v16f)(((v16i)r1 & col1) | ((v16i)r0 & ~col1));
    }
    for (int e = 0; e < 4; ++e)
        for (int v = 0; v < 4; ++v) out[4 * e + v] = gi[e] * cj[v];
    return g;
}



/* One image, zero-padded by 1 and in fp32: the patch under a window is read without bounds checks. */
static void pad_image(const uint16_t *img, long H, long W, float *pad) {
    const long Wp = W + 2;
    memset(pad, 0, sizeof(float) * (H + 2) * Wp);
    for (long yy = 0; yy < H; ++yy)
        for (long xx = 0; xx < W; ++xx) pad[(yy + 1) * Wp + xx + 1] = bf16_to_float(img[yy * W + xx]);
}

/* conv_pool_relu_forward for C % 16 == 0: 16 channels per vector, the 9 taps and the bias in registers, the patch
 * from the padded image. Same operations in the same order, so the same bits. */
static void forward_16_channels(const uint16_t *x, const float *w, const float *bias, uint16_t *y, int16_t *code,
                                long r0, long r1, long H, long W, long C, float *pad) {
    const long H2 = H / 2, W2 = W / 2, Wp = W + 2;
    long current = -1;
    for (long r = r0; r < r1; ++r) {
        const long n = r / H2, i = r % H2;
        if (n != current) pad_image(x + n * H * W, H, W, pad), current = n;
        for (long k0 = 0; k0 < C; k0 += 16) {
            v16f taps[9];
            for (int t = 0; t < 9; ++t) taps[t] = load_f32_16(w + t * C + k0);
            const v16f b = load_f32_16(bias + k0);
            for (long j = 0; j < W2; ++j) {
                const float *p = pad + 2 * i * Wp + 2 * j;
                v16f out[4];
                for (int q = 0; q < 4; ++q) {
                    const float *pq = p + (q >> 1) * Wp + (q & 1);
                    v16f acc = {0};
                    for (int t = 0; t < 9; ++t) acc += taps[t] * pq[(t / 3) * Wp + t % 3];
                    out[q] = acc + b;
                }
                const long at = (r * W2 + j) * C + k0;
                pool_relu_16(out, y + at, code + at);
            }
        }
    }
}

static void backward_16_channels(const uint16_t *x, const uint16_t *grad, const int16_t *code, float *dw, long r0,
                                 long r1, long H, long W, long C, long k0, float *pad) {
    const long H2 = H / 2, W2 = W / 2, Wp = W + 2;
    v16f acc[10] = {0};
    long current = -1;
    for (long r = r0; r < r1; ++r) {
        const long n = r / H2, i = r % H2;
        if (n != current) pad_image(x + n * H * W, H, W, pad), current = n;
        for (long j = 0; j < W2; ++j) {
            const float *p = pad + 2 * i * Wp + 2 * j;
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
                for (int b = 0; b < 3; ++b) {
                    const float *q = p + a * Wp + b;
                    acc[3 * a + b] += g0 * q[0] + g1 * q[1] + g2 * q[Wp] + g3 * q[Wp + 1];
                }
            acc[9] += g0 + g1 + g2 + g3;
        }
    }
    for (int t = 0; t < 10; ++t) memcpy(dw + t * C + k0, &acc[t], sizeof acc[t]);
}

/* Accumulates d(loss)/d(w) into dw[0 .. 9C) (tap-major) and d(loss)/d(bias) into dw[9C .. 10C). */
static void conv_pool_relu_backward(const uint16_t *x, const uint16_t *grad, const int16_t *code, float *dw, long r0,
                                    long r1, long H, long W, long C, float *pad) {
    if (C % 16 == 0) {
        for (long k0 = 0; k0 < C; k0 += 16) backward_16_channels(x, grad, code, dw, r0, r1, H, W, C, k0, pad);
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
    float *partial = 0, *pads = malloc(sizeof(float) * threads * (H + 2) * (W + 2));
    if (kind == 1) partial = calloc((size_t)threads * 10 * C, sizeof(float));
    if (!pads || (kind == 1 && !partial)) {
        free(pads);
        free(partial);
        return 1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        long r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        float *pad = pads + (size_t)t * (H + 2) * (W + 2);
        if (kind == 0 && C % 16 == 0) forward_16_channels(x, w, bias, y, code, r0, r1, H, W, C, pad);
        else if (kind == 0) conv_pool_relu_forward(x, w, bias, y, code, r0, r1, H, W, C);
        else conv_pool_relu_backward(x, grad, code, partial + (size_t)t * 10 * C, r0, r1, H, W, C, pad);
    }
    if (kind == 1) {
        memset(dw, 0, sizeof(float) * 10 * C);
        for (int t = 0; t < threads; ++t)
            for (long e = 0; e < 10 * C; ++e) dw[e] += partial[(size_t)t * 10 * C + e];
        free(partial);
    }
    free(pads);
    return 0;
}

/* ---- the other blocks: 3x3 convolution (stride 1, padding 1) as Winograd F(2x2, 3x3), with the 2x2 max-pool and
 * ReLU fused into its output transform (each Winograd output tile is exactly one 2x2 pooling window).
 *
 * y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A over 4x4 input tiles d at stride 2 (Lavin & Gray 2016): 16 products
 * per 2x2 outputs instead of 36. The transforms run here; the 16 channel-mixing matrix products (Winograd domain,
 * bf16 in, fp32 sums) run in torch.bmm (oneDNN), which is what the convolution's 2.25x fewer multiplications buy.
 * Layouts: images NHWC; Winograd-domain arrays (16, T, C) with T = N * H/2 * W/2 tiles in (n, tile row, tile column)
 * order, which is also the pooled output's NHWC position order. Channel counts are multiples of 16 (one AVX-512
 * vector); fast_kernels.py checks it. */

/* V = B^T d B for tiles t0..t1: x (N, H, W, C) bf16 -> V (16, T, C) bf16. */
static void winograd_input(const uint16_t *x, uint16_t *V, const uint16_t *zeros, long t0, long t1, long T, long H,
                           long W, long C) {
    const long tiles = (H / 2) * (W / 2);
    for (long t = t0; t < t1; ++t) {
        const uint16_t *p[16];
        tile_pointers(x, zeros, t / tiles, t % tiles, H, W, C, p);
        for (long k = 0; k < C; k += 16) {
            v16f out[16];
            input_tile(p, k, out);
            for (int e = 0; e < 16; ++e) store_bf16_16(V + (e * T + t) * C + k, round_bf16_fast(out[e]));
        }
    }
}

/* M (16, T, C) bf16 -> y = relu(max over the tile of bf16(A^T M A + bias)) (T, C) bf16 and its code (as pool_relu). */
static void winograd_output_pool_relu(const uint16_t *M, const float *bias, uint16_t *y, int16_t *code, long t0,
                                      long t1, long T, long C) {
    for (long t = t0; t < t1; ++t)
        for (long k = 0; k < C; k += 16) {
            v16f m[16];
            for (int e = 0; e < 16; ++e) m[e] = load_bf16_16(M + (e * T + t) * C + k);
            output_tile(m, load_f32_16(bias + k), y + t * C + k, code + t * C + k);
        }
}

/* Backward of the above: grad (T, C) bf16 and code -> dM = A g_tile A^T (16, T, C) bf16, where g_tile holds the
 * gradient at the window input that won (exact: every entry is 0 or +-g); dbias (C) += the gradients that pass. */
static void winograd_output_backward(const uint16_t *grad, const int16_t *code, uint16_t *dM, float *dbias, long t0,
                                     long t1, long T, long C) {
    for (long t = t0; t < t1; ++t)
        for (long k = 0; k < C; k += 16) {
            v16f d[16];
            store_f32_16(dbias + k, load_f32_16(dbias + k) + output_tile_backward(grad, code, t * C + k, d));
            for (int e = 0; e < 16; ++e) store_bf16_16(dM + (e * T + t) * C + k, (v16u)d[e] >> 16); /* exact */
        }
}

/* Backward of winograd_input for images n0..n1: dV (16, T, C) bf16 -> grad_x = sum over tiles of B dV B^T placed at
 * each tile's input window (N, H, W, C) bf16, summed in fp32 in `scratch` ((H + 2) * (W + 2) * C floats). */
static void winograd_input_backward(const uint16_t *dV, uint16_t *grad_x, float *scratch, long n0, long n1, long T,
                                    long H, long W, long C) {
    const long H2 = H / 2, W2 = W / 2, Wp = W + 2;
    for (long n = n0; n < n1; ++n) {
        memset(scratch, 0, sizeof(float) * (H + 2) * Wp * C);
        for (long ty = 0; ty < H2; ++ty)
            for (long tx = 0; tx < W2; ++tx) {
                const long t = (n * H2 + ty) * W2 + tx;
                for (long k = 0; k < C; k += 16) {
                    v16f d[16];
                    for (int e = 0; e < 16; ++e) d[e] = load_bf16_16(dV + (e * T + t) * C + k);
                    input_tile_backward(d, scratch + (2 * ty * Wp + 2 * tx) * C + k, Wp * C, C);
                }
            }
        for (long yy = 0; yy < H; ++yy)
            for (long xx = 0; xx < W; ++xx)
                for (long k = 0; k < C; k += 16)
                    store_bf16_16(grad_x + ((n * H + yy) * W + xx) * C + k,
                                  round_bf16_16(load_f32_16(scratch + ((yy + 1) * Wp + xx + 1) * C + k)));
    }
}

/* kind 0: input transform (a = x -> c = V); 1: output transform + pool + ReLU (a = M, b = bias -> c = y, d = code);
 * 2: its backward (a = grad y, b = code -> c = dM, dbias: (C) fp32, added to); 3: the input transform's backward
 * (a = dV -> c = grad x). N images of H x W (even) with C channels (a multiple of 16). Returns nonzero on failure. */
int winograd(int kind, const void *a, const void *b, void *c, void *d, float *dbias, long N, long H, long W, long C,
             int threads) {
    if (threads < 1) threads = 1;
    if (C % 16 || H % 2 || W % 2) return 2;
    const long T = N * (H / 2) * (W / 2);
    void *scratch = 0;
    if (kind == 0) scratch = calloc((size_t)C, sizeof(uint16_t)); /* the zero padding */
    if (kind == 2) scratch = calloc((size_t)threads * C, sizeof(float));
    if (kind == 3) scratch = malloc((size_t)threads * (H + 2) * (W + 2) * C * sizeof(float));
    if (kind != 1 && !scratch) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) {
        long t0 = T * i / threads, t1 = T * (i + 1) / threads;
        if (kind == 0) winograd_input(a, c, scratch, t0, t1, T, H, W, C);
        else if (kind == 1) winograd_output_pool_relu(a, b, c, d, t0, t1, T, C);
        else if (kind == 2) winograd_output_backward(a, b, c, (float *)scratch + (size_t)i * C, t0, t1, T, C);
        else winograd_input_backward(a, c, (float *)scratch + (size_t)i * (H + 2) * (W + 2) * C, N * i / threads,
                                     N * (i + 1) / threads, T, H, W, C);
    }
    if (kind == 2) {
        for (int i = 0; i < threads; ++i)
            for (long k = 0; k < C; ++k) dbias[k] += ((float *)scratch)[(size_t)i * C + k];
    }
    free(scratch);
    return 0;
}

/* ---- the same Winograd block in one pass per image, with its own bf16 matrix products (AVX-512 BF16 dot products,
 * fp32 sums): every transformed array of an image stays in the thread's cache, the channel-mixing products are kept
 * in fp32 until the output transform, and there is one parallel region per pass. Built where the compiler targets
 * AVX-512 BF16 (-march=native on such a CPU); elsewhere `winograd_fused` returns -1 and fast_kernels.py uses the
 * torch.bmm path above. */
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>
int winograd_fused_built(void) { return 1; }

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

static inline void store_bf16_native(uint16_t *p, v16f f) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh((__m512)f));
}
static inline v16u bf16_pair(v16f lo, v16f hi) { /* dword = bf16(lo) | bf16(hi) << 16 */
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
            v16f out[16];
            input_tile(p, k, out);
            for (int e = 0; e < 16; ++e) store_bf16_native(w->v + (e * TP + t) * CI + k, out[e]);
        }
    }
    for (int e = 0; e < 16; ++e)
        gemm((const uint32_t *)(w->v + e * TP * CI), CI / 2, 1, up + e * (CI / 2) * CO, CO, CI / 2, w->m + e * TP * CO,
             CO, T, CO, 0);
    for (long t = 0; t < T; ++t)
        for (long k = 0; k < CO; k += 16) {
            v16f m[16];
            for (int e = 0; e < 16; ++e) m[e] = load_f32_16(w->m + (e * TP + t) * CO + k);
            output_tile(m, load_f32_16(bias + k), y + (n * T + t) * CO + k, code + (n * T + t) * CO + k);
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
            v16f d0[16], d1[16];
            v16f g = output_tile_backward(grad, code, (n * T + t) * CO + k, d0);
            if (pair) g += output_tile_backward(grad, code, (n * T + t + 1) * CO + k, d1);
            else
                for (int e = 0; e < 16; ++e) d1[e] = (v16f){0};
            store_f32_16(w->dbias + k, load_f32_16(w->dbias + k) + g);
            for (int e = 0; e < 16; ++e) {
                store_bf16_16(w->dm + (e * TP + t) * CO + k, (v16u)d0[e] >> 16); /* exact: 0 or +-g */
                if (pair) store_bf16_16(w->dm + (e * TP + t + 1) * CO + k, (v16u)d1[e] >> 16);
                v16u both = ((v16u)d0[e] >> 16) | ((v16u)d1[e] & 0xffff0000u);
                memcpy(w->dmp + (e * (TP / 2) + t / 2) * CO + k, &both, sizeof both);
            }
        }
        const uint16_t *p0[16], *p1[16];
        tile_pointers(x, zeros, n, t, H, W, CI, p0);
        if (pair) tile_pointers(x, zeros, n, t + 1, H, W, CI, p1);
        for (long k = 0; k < CI; k += 16) {
            v16f v0[16], v1[16];
            input_tile(p0, k, v0);
            if (pair) input_tile(p1, k, v1);
            else
                for (int e = 0; e < 16; ++e) v1[e] = (v16f){0};
            for (int e = 0; e < 16; ++e) {
                v16u both = bf16_pair(v0[e], v1[e]);
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
            v16f d[16];
            for (int e = 0; e < 16; ++e) d[e] = load_f32_16(w->m + (e * TP + t) * CI + k);
            input_tile_backward(d, w->image + (2 * ty * Wp + 2 * tx) * CI + k, Wp * CI, CI);
        }
    }
    for (long yy = 0; yy < H; ++yy)
        for (long xx = 0; xx < W; ++xx)
            for (long k = 0; k < CI; k += 16)
                store_bf16_native(grad_x + ((n * H + yy) * W + xx) * CI + k,
                                  load_f32_16(w->image + ((yy + 1) * Wp + xx + 1) * CI + k));
}

/* kind 0: forward (x, up: (16, CI/2, CO) bf16 pairs along CI, bias -> y, code); kind 1: backward (x, grad y, code,
 * utp: (16, CO/2, CI) bf16 pairs along CO -> grad x (when grad_x is not NULL), du: (16, CI, CO) fp32 and dbias: (CO)
 * fp32, both overwritten). Returns 0, 1 when out of memory, 2 on unsupported shapes. */
int winograd_fused(int kind, const void *x, const void *weights, const float *bias, const void *grad, const void *code,
                   void *out, void *out_code, float *du, float *dbias, long N, long H, long W, long CI, long CO,
                   int threads) {
    if (threads < 1) threads = 1;
    if (CI % 16 || CO % 16 || H % 2 || W % 2) return 2;
    const long T = (H / 2) * (W / 2), TP = (T + 7) / 8 * 8, CM = CI > CO ? CI : CO;
    const size_t per_thread = sizeof(uint16_t) * 16 * TP * CI + sizeof(uint32_t) * 16 * (TP / 2) * CI +
                              sizeof(float) * 16 * TP * CM + sizeof(uint16_t) * 16 * TP * CO +
                              sizeof(uint32_t) * 16 * (TP / 2) * CO + sizeof(float) * (H + 2) * (W + 2) * CI +
                              sizeof(float) * 16 * CI * CO + sizeof(float) * CO;
    char *arena = calloc((size_t)threads, per_thread);
    uint16_t *zeros = calloc((size_t)CI, sizeof(uint16_t));
    if (!arena || !zeros) {
        free(arena);
        free(zeros);
        return 1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) {
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
        for (long n = N * i / threads; n < N * (i + 1) / threads; ++n) {
            if (kind == 0) fused_forward_image(x, weights, bias, out, out_code, zeros, &w, n, H, W, CI, CO, TP);
            else fused_backward_image(x, grad, code, weights, out, zeros, &w, n, H, W, CI, CO, TP, out != 0);
        }
    }
    if (kind == 1) { /* the threads' partial sums, in thread order (deterministic) */
        memset(du, 0, sizeof(float) * 16 * CI * CO);
        memset(dbias, 0, sizeof(float) * CO);
        for (int i = 0; i < threads; ++i) {
            const char *p = arena + (size_t)i * per_thread + per_thread - sizeof(float) * (16 * CI * CO + CO);
            const float *part_du = (const float *)p, *part_db = part_du + 16 * CI * CO;
            for (long e = 0; e < 16 * CI * CO; ++e) du[e] += part_du[e];
            for (long k = 0; k < CO; ++k) dbias[k] += part_db[k];
        }
    }
    free(arena);
    free(zeros);
    return 0;
}
#else
int winograd_fused_built(void) { return 0; }
int winograd_fused(int kind, const void *x, const void *weights, const float *bias, const void *grad, const void *code,
                   void *out, void *out_code, float *du, float *dbias, long N, long H, long W, long CI, long CO,
                   int threads) {
    (void)kind, (void)x, (void)weights, (void)bias, (void)grad, (void)code, (void)out, (void)out_code, (void)du;
    (void)dbias, (void)N, (void)H, (void)W, (void)CI, (void)CO, (void)threads;
    return -1; /* not built for AVX-512 BF16: use the torch.bmm path */
}
#endif
