/* The Winograd block's transforms: a 3x3 convolution (stride 1, padding 1) as Winograd F(2x2, 3x3), with the 2x2
 * max-pool and ReLU fused into its output transform (each output tile is exactly one pooling window).
 *
 * y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A over 4x4 input tiles d at stride 2 (Lavin & Gray 2016): 16 products
 * per 2x2 outputs instead of 36. The transforms run here; the 16 channel-mixing matrix products (Winograd domain)
 * run in torch.bmm between them: the "c+bmm" path. Two storage types, one set of transforms (fp32 arithmetic):
 * - bf16 (the *_transform / *_pool_relu functions): bf16 arrays, bf16 products with fp32 sums (oneDNN), for CPUs
 *   with native bf16 whose library has no AVX-512 BF16 products of its own (winograd_avx512bf16.c);
 * - fp32 (the *_f32 functions): fp32 throughout, for CPUs without native bf16 (AVX2-only: bf16 is emulated there).
 * Layouts: images NHWC; Winograd-domain arrays (16, T, C) with T = N * H/2 * W/2 tiles in (n, tile row, tile column)
 * order, which is also the pooled output's NHWC position order. Channel counts are multiples of 16 (whole VL-lane
 * vector); minivision_hf/fast/modules.py only routes such convolutions here. */
#include <stdlib.h>

#include "minivision_kernels.h"
#include "winograd_tiles.h"

/* V = B^T d B for tiles t0..t1: x (N, H, W, C) -> V (16, T, C), both of the storage type; bf16 V rounded to nearest
 * even. */
static void winograd_input(const void *x, void *V, long t0, long t1, long T, long H, long W, long C, int f32) {
    const long tiles = (H / 2) * (W / 2);
    const vf zero = {0};
    for (long t = t0; t < t1; ++t) {
        long offset[16];
        tile_offsets(t / tiles, t % tiles, H, W, C, offset);
        for (long k = 0; k < C; k += VL) {
            vf d[16], out[16];
            for (int e = 0; e < 16; ++e) d[e] = offset[e] < 0 ? zero : load_v(x, offset[e] + k, f32);
            input_transform(d, out);
            for (int e = 0; e < 16; ++e) {
                const long at = (e * T + t) * C + k;
                if (f32) store_f32_v((float *)V + at, out[e]);
                else store_bf16_v((uint16_t *)V + at, round_bf16_fast(out[e]));
            }
        }
    }
}

/* M (16, T, C) -> y = relu(max over the tile of (A^T M A + bias)) (T, C) and its codes; bf16 rounds each conv output
 * before the max (pool_relu_v), fp32 does not (pool_relu_v_f32). */
static void winograd_output_pool_relu(const void *M, const float *bias, void *y, int16_t *code, long t0, long t1,
                                      long T, long C, int f32) {
    for (long t = t0; t < t1; ++t)
        for (long k = 0; k < C; k += VL) {
            vf m[16], out[4];
            for (int e = 0; e < 16; ++e) m[e] = load_v(M, (e * T + t) * C + k, f32);
            output_window(m, load_f32_v(bias + k), out);
            if (f32) pool_relu_v_f32(out, (float *)y + t * C + k, code + t * C + k);
            else pool_relu_v(out, (uint16_t *)y + t * C + k, code + t * C + k);
        }
}

/* Backward of the above: grad (T, C) and code -> dM = A g_tile A^T (16, T, C), where g_tile holds the gradient at the
 * window input that won (exact: every entry is 0 or +-g, so the bf16 store is a shift); dbias (C) += the gradients
 * that pass. */
static void winograd_output_backward(const void *grad, const int16_t *code, void *dM, float *dbias, long t0, long t1,
                                     long T, long C, int f32) {
    for (long t = t0; t < t1; ++t)
        for (long k = 0; k < C; k += VL) {
            vf d[16];
            vf g = output_window_backward(load_v(grad, t * C + k, f32), load_codes_v(code + t * C + k), d);
            store_f32_v(dbias + k, load_f32_v(dbias + k) + g);
            for (int e = 0; e < 16; ++e) {
                const long at = (e * T + t) * C + k;
                if (f32) store_f32_v((float *)dM + at, d[e]);
                else store_bf16_v((uint16_t *)dM + at, (vu)d[e] >> 16);
            }
        }
}

/* Backward of winograd_input for images n0..n1: dV (16, T, C) -> grad_x = sum over tiles of B dV B^T placed at each
 * tile's input window (N, H, W, C), summed in fp32 in `scratch` ((H + 2) * (W + 2) * C floats); bf16 grad_x rounded
 * to nearest even. */
static void winograd_input_backward(const void *dV, void *grad_x, float *scratch, long n0, long n1, long T, long H,
                                    long W, long C, int f32) {
    const long H2 = H / 2, W2 = W / 2, Wp = W + 2;
    for (long n = n0; n < n1; ++n) {
        memset(scratch, 0, sizeof(float) * (H + 2) * Wp * C);
        for (long ty = 0; ty < H2; ++ty)
            for (long tx = 0; tx < W2; ++tx) {
                const long t = (n * H2 + ty) * W2 + tx;
                for (long k = 0; k < C; k += VL) {
                    vf d[16];
                    for (int e = 0; e < 16; ++e) d[e] = load_v(dV, (e * T + t) * C + k, f32);
                    input_tile_backward(d, scratch + (2 * ty * Wp + 2 * tx) * C + k, Wp * C, C);
                }
            }
        for (long yy = 0; yy < H; ++yy)
            for (long xx = 0; xx < W; ++xx)
                for (long k = 0; k < C; k += VL) {
                    const long at = ((n * H + yy) * W + xx) * C + k;
                    vf sum = load_f32_v(scratch + ((yy + 1) * Wp + xx + 1) * C + k);
                    if (f32) store_f32_v((float *)grad_x + at, sum);
                    else store_bf16_v((uint16_t *)grad_x + at, round_bf16_v(sum));
                }
    }
}

/* Tiles (or, for the input backward, images) are split evenly over the OpenMP threads. */
#define SHARE(total, i, threads) ((total) * (i) / (threads)), ((total) * ((i) + 1) / (threads))

static int unsupported(long height, long width, long channels) { return channels % 16 || height % 2 || width % 2; }

static int input_transform_all(const void *x, void *v, long images, long height, long width, long channels,
                               int threads, int f32) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) winograd_input(x, v, SHARE(T, i, threads), T, height, width, channels, f32);
    return 0;
}

static int output_pool_relu_all(const void *m, const float *bias, void *y, int16_t *code, long images, long height,
                                long width, long channels, int threads, int f32) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        winograd_output_pool_relu(m, bias, y, code, SHARE(T, i, threads), T, channels, f32);
    return 0;
}

/* Each thread sums its own bias gradient; the partials are added in thread order (deterministic). */
static int output_backward_all(const void *grad_y, const int16_t *code, void *grad_m, float *grad_bias, long images,
                               long height, long width, long channels, int threads, int f32) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2);
    float *partial = calloc((size_t)threads * channels, sizeof(float));
    if (!partial) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        winograd_output_backward(grad_y, code, grad_m, partial + (size_t)i * channels, SHARE(T, i, threads), T,
                                 channels, f32);
    for (int i = 0; i < threads; ++i)
        for (long k = 0; k < channels; ++k) grad_bias[k] += partial[(size_t)i * channels + k];
    free(partial);
    return 0;
}

/* Each thread sums its images' input gradients in its own fp32 (H + 2) x (W + 2) buffer. */
static int input_backward_all(const void *grad_v, void *grad_x, long images, long height, long width, long channels,
                              int threads, int f32) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2), per_thread = (height + 2) * (width + 2) * channels;
    float *scratch = malloc((size_t)threads * per_thread * sizeof(float));
    if (!scratch) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        winograd_input_backward(grad_v, grad_x, scratch + (size_t)i * per_thread, SHARE(images, i, threads), T,
                                height, width, channels, f32);
    free(scratch);
    return 0;
}

/* ---- the exported functions: bf16 storage, then fp32 ---- */

int mv_winograd_input_transform(const uint16_t *x, uint16_t *v, long images, long height, long width, long channels,
                                int threads) {
    return input_transform_all(x, v, images, height, width, channels, threads, 0);
}

int mv_winograd_output_pool_relu(const uint16_t *m, const float *bias, uint16_t *y, int16_t *code, long images,
                                 long height, long width, long channels, int threads) {
    return output_pool_relu_all(m, bias, y, code, images, height, width, channels, threads, 0);
}

int mv_winograd_output_pool_relu_backward(const uint16_t *grad_y, const int16_t *code, uint16_t *grad_m,
                                          float *grad_bias, long images, long height, long width, long channels,
                                          int threads) {
    return output_backward_all(grad_y, code, grad_m, grad_bias, images, height, width, channels, threads, 0);
}

int mv_winograd_input_transform_backward(const uint16_t *grad_v, uint16_t *grad_x, long images, long height,
                                         long width, long channels, int threads) {
    return input_backward_all(grad_v, grad_x, images, height, width, channels, threads, 0);
}

int mv_winograd_input_transform_f32(const float *x, float *v, long images, long height, long width, long channels,
                                    int threads) {
    return input_transform_all(x, v, images, height, width, channels, threads, 1);
}

int mv_winograd_output_pool_relu_f32(const float *m, const float *bias, float *y, int16_t *code, long images,
                                     long height, long width, long channels, int threads) {
    return output_pool_relu_all(m, bias, y, code, images, height, width, channels, threads, 1);
}

int mv_winograd_output_pool_relu_backward_f32(const float *grad_y, const int16_t *code, float *grad_m,
                                              float *grad_bias, long images, long height, long width, long channels,
                                              int threads) {
    return output_backward_all(grad_y, code, grad_m, grad_bias, images, height, width, channels, threads, 1);
}

int mv_winograd_input_transform_backward_f32(const float *grad_v, float *grad_x, long images, long height,
                                             long width, long channels, int threads) {
    return input_backward_all(grad_v, grad_x, images, height, width, channels, threads, 1);
}
