/* The first block: relu(max_pool2d(conv2d(x, w, bias, padding=1), 2)) for a 3x3 convolution with ONE input channel,
 * forward and backward, never writing the full-resolution (N, C, H, W) conv output; weight gradients summed in
 * registers. bf16 autocast numerics: bf16 inputs and weights, fp32 sums, each conv output rounded to bf16 (nearest
 * even) before the max, as oneDNN's bf16 convolution and max_pool2d on its output do: the forward is bit-identical to
 * PyTorch's under bf16 autocast, the gradients equal to bf16 rounding (summed in fp32 here).
 * C % 16 == 0 takes the vector kernels (forward_vectorised, backward_vectorised: VL channels a vector), other
 * counts the scalar loops; both do the same operations in the same order.
 * The *_f32 functions are the same block in fp32 (fp32 x, weights and outputs, no rounding), for CPUs without native
 * bf16; they take C % 16 == 0 only. */
#include <stdlib.h>

#include "minivision_kernels.h"
#include "vec.h"

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

/* Image n of x (bf16 bits, or fp32 when f32), zero-padded by 1 and in fp32: the patch under a window is read without
 * bounds checks. */
static void pad_image(const void *x, long n, long H, long W, float *pad, int f32) {
    const long Wp = W + 2;
    memset(pad, 0, sizeof(float) * (H + 2) * Wp);
    for (long yy = 0; yy < H; ++yy)
        for (long xx = 0; xx < W; ++xx) {
            const long at = (n * H + yy) * W + xx;
            pad[(yy + 1) * Wp + xx + 1] = f32 ? ((const float *)x)[at] : bf16_to_float(((const uint16_t *)x)[at]);
        }
}

/* conv_pool_relu_forward for C % 16 == 0: VL channels per vector, the 9 taps and the bias in registers, the patch
 * from the padded image. Same operations in the same order, so the same bits. With f32: fp32 x and y, no rounding
 * before the max (pool_relu_v_f32). */
static void forward_vectorised(const void *x, const float *w, const float *bias, void *y, int16_t *code, long r0,
                                long r1, long H, long W, long C, float *pad, int f32) {
    const long H2 = H / 2, W2 = W / 2, Wp = W + 2;
    long current = -1;
    for (long r = r0; r < r1; ++r) {
        const long n = r / H2, i = r % H2;
        if (n != current) pad_image(x, n, H, W, pad, f32), current = n;
        for (long k0 = 0; k0 < C; k0 += VL) {
            vf taps[9];
            for (int t = 0; t < 9; ++t) taps[t] = load_f32_v(w + t * C + k0);
            const vf b = load_f32_v(bias + k0);
            for (long j = 0; j < W2; ++j) {
                const float *p = pad + 2 * i * Wp + 2 * j;
                vf out[4];
                for (int q = 0; q < 4; ++q) {
                    const float *pq = p + (q >> 1) * Wp + (q & 1);
                    vf acc = {0};
                    for (int t = 0; t < 9; ++t) acc += taps[t] * pq[(t / 3) * Wp + t % 3];
                    out[q] = acc + b;
                }
                const long at = (r * W2 + j) * C + k0;
                if (f32) pool_relu_v_f32(out, (float *)y + at, code + at);
                else pool_relu_v(out, (uint16_t *)y + at, code + at);
            }
        }
    }
}

static void backward_vectorised(const void *x, const void *grad, const int16_t *code, float *dw, long r0, long r1,
                                 long H, long W, long C, long k0, float *pad, int f32) {
    const long H2 = H / 2, W2 = W / 2, Wp = W + 2;
    vf acc[10] = {0};
    long current = -1;
    for (long r = r0; r < r1; ++r) {
        const long n = r / H2, i = r % H2;
        if (n != current) pad_image(x, n, H, W, pad, f32), current = n;
        for (long j = 0; j < W2; ++j) {
            const float *p = pad + 2 * i * Wp + 2 * j;
            const long at = (r * W2 + j) * C + k0;
            vu bits = (vu)load_v(grad, at, f32);
            vi which = load_codes_v(code + at); /* 0..3: the window input that won; 4: none */
            vf g0 = (vf)(bits & (vu)(which == 0));
            vf g1 = (vf)(bits & (vu)(which == 1));
            vf g2 = (vf)(bits & (vu)(which == 2));
            vf g3 = (vf)(bits & (vu)(which == 3));
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
        for (long k0 = 0; k0 < C; k0 += VL) backward_vectorised(x, grad, code, dw, r0, r1, H, W, C, k0, pad, 0);
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

/* Output rows (row r = image r / (H/2), output line r % (H/2)) are split evenly over the OpenMP threads; each
 * thread pads its current image into its own (H + 2) x (W + 2) fp32 buffer. f32: fp32 x and y (C % 16 == 0 only). */
static int forward_all(const void *x, const float *taps, const float *bias, void *y, int16_t *code, long images,
                       long height, long width, long channels, int threads, int f32) {
    if (threads < 1) threads = 1;
    if (f32 && channels % 16) return 2;
    const long rows = images * (height / 2);
    float *pads = malloc(sizeof(float) * threads * (height + 2) * (width + 2));
    if (!pads) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        const long r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        float *pad = pads + (size_t)t * (height + 2) * (width + 2);
        if (channels % 16 == 0)
            forward_vectorised(x, taps, bias, y, code, r0, r1, height, width, channels, pad, f32);
        else conv_pool_relu_forward(x, taps, bias, y, code, r0, r1, height, width, channels);
    }
    free(pads);
    return 0;
}

/* Each thread sums its own partial gradient rows (9 taps, then the bias); the partials are added in thread order, so
 * the result does not depend on scheduling. */
static int backward_all(const void *x, const void *grad_y, const int16_t *code, float *grad_taps, float *grad_bias,
                        long images, long height, long width, long channels, int threads, int f32) {
    if (threads < 1) threads = 1;
    if (f32 && channels % 16) return 2;
    const long rows = images * (height / 2), C = channels;
    float *pads = malloc(sizeof(float) * threads * (height + 2) * (width + 2));
    float *partial = calloc((size_t)threads * 10 * C, sizeof(float));
    if (!pads || !partial) {
        free(pads);
        free(partial);
        return 1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        const long r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        float *pad = pads + (size_t)t * (height + 2) * (width + 2), *part = partial + (size_t)t * 10 * C;
        if (f32)
            for (long k0 = 0; k0 < C; k0 += VL)
                backward_vectorised(x, grad_y, code, part, r0, r1, height, width, C, k0, pad, 1);
        else conv_pool_relu_backward(x, grad_y, code, part, r0, r1, height, width, C, pad);
    }
    memset(grad_taps, 0, sizeof(float) * 9 * C);
    memset(grad_bias, 0, sizeof(float) * C);
    for (int t = 0; t < threads; ++t) {
        const float *part = partial + (size_t)t * 10 * C;
        for (long e = 0; e < 9 * C; ++e) grad_taps[e] += part[e];
        for (long k = 0; k < C; ++k) grad_bias[k] += part[9 * C + k];
    }
    free(partial);
    free(pads);
    return 0;
}

int mv_conv1_pool_relu_forward(const uint16_t *x, const float *taps, const float *bias, uint16_t *y, int16_t *code,
                               long images, long height, long width, long channels, int threads) {
    return forward_all(x, taps, bias, y, code, images, height, width, channels, threads, 0);
}

int mv_conv1_pool_relu_backward(const uint16_t *x, const uint16_t *grad_y, const int16_t *code, float *grad_taps,
                                float *grad_bias, long images, long height, long width, long channels, int threads) {
    return backward_all(x, grad_y, code, grad_taps, grad_bias, images, height, width, channels, threads, 0);
}

int mv_conv1_pool_relu_forward_f32(const float *x, const float *taps, const float *bias, float *y, int16_t *code,
                                   long images, long height, long width, long channels, int threads) {
    return forward_all(x, taps, bias, y, code, images, height, width, channels, threads, 1);
}

int mv_conv1_pool_relu_backward_f32(const float *x, const float *grad_y, const int16_t *code, float *grad_taps,
                                    float *grad_bias, long images, long height, long width, long channels,
                                    int threads) {
    return backward_all(x, grad_y, code, grad_taps, grad_bias, images, height, width, channels, threads, 1);
}
