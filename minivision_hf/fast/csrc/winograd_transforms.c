/* The Winograd block's transforms: a 3x3 convolution (stride 1, padding 1) as Winograd F(2x2, 3x3), with the 2x2
 * max-pool and ReLU fused into its output transform (each output tile is exactly one pooling window).
 *
 * y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A over 4x4 input tiles d at stride 2 (Lavin & Gray 2016): 16 products
 * per 2x2 outputs instead of 36. The transforms run here; the 16 channel-mixing matrix products (Winograd domain,
 * bf16 in, fp32 sums) run in torch.bmm (oneDNN) between them: the "c+bmm" path, for CPUs whose library has no
 * AVX-512 BF16 products of its own (winograd_avx512bf16.c).
 * Layouts: images NHWC; Winograd-domain arrays (16, T, C) with T = N * H/2 * W/2 tiles in (n, tile row, tile column)
 * order, which is also the pooled output's NHWC position order. Channel counts are multiples of 16 (one 16-lane
 * vector); minivision_hf/fast/modules.py only routes such convolutions here. */
#include <stdlib.h>

#include "minivision_kernels.h"
#include "winograd_tiles.h"

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

/* M (16, T, C) bf16 -> y = relu(max over the tile of bf16(A^T M A + bias)) (T, C) bf16 and its codes. */
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

/* Tiles (or, for the input backward, images) are split evenly over the OpenMP threads. */
#define SHARE(total, i, threads) ((total) * (i) / (threads)), ((total) * ((i) + 1) / (threads))

static int unsupported(long height, long width, long channels) { return channels % 16 || height % 2 || width % 2; }

int mv_winograd_input_transform(const uint16_t *x, uint16_t *v, long images, long height, long width, long channels,
                                int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2);
    uint16_t *zeros = calloc((size_t)channels, sizeof(uint16_t)); /* the zero padding */
    if (!zeros) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) winograd_input(x, v, zeros, SHARE(T, i, threads), T, height, width, channels);
    free(zeros);
    return 0;
}

int mv_winograd_output_pool_relu(const uint16_t *m, const float *bias, uint16_t *y, int16_t *code, long images,
                                 long height, long width, long channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) winograd_output_pool_relu(m, bias, y, code, SHARE(T, i, threads), T, channels);
    return 0;
}

/* Each thread sums its own bias gradient; the partials are added in thread order (deterministic). */
int mv_winograd_output_pool_relu_backward(const uint16_t *grad_y, const int16_t *code, uint16_t *grad_m,
                                          float *grad_bias, long images, long height, long width, long channels,
                                          int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2);
    float *partial = calloc((size_t)threads * channels, sizeof(float));
    if (!partial) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        winograd_output_backward(grad_y, code, grad_m, partial + (size_t)i * channels, SHARE(T, i, threads), T,
                                 channels);
    for (int i = 0; i < threads; ++i)
        for (long k = 0; k < channels; ++k) grad_bias[k] += partial[(size_t)i * channels + k];
    free(partial);
    return 0;
}

/* Each thread sums its images' input gradients in its own fp32 (H + 2) x (W + 2) buffer. */
int mv_winograd_input_transform_backward(const uint16_t *grad_v, uint16_t *grad_x, long images, long height,
                                         long width, long channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = images * (height / 2) * (width / 2), per_thread = (height + 2) * (width + 2) * channels;
    float *scratch = malloc((size_t)threads * per_thread * sizeof(float));
    if (!scratch) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        winograd_input_backward(grad_v, grad_x, scratch + (size_t)i * per_thread, SHARE(images, i, threads), T,
                                height, width, channels);
    free(scratch);
    return 0;
}
