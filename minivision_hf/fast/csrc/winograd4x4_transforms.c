/* The fp32 Winograd block's transforms with 4x4 output tiles: a 3x3 convolution (stride 1, padding 1) as Winograd
 * F(4x4, 3x3), the 2x2 max-pool and ReLU fused into its output transform (a 4x4 output tile is four whole pooling
 * windows).
 *
 * y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A over 6x6 input tiles d at stride 4 (Lavin & Gray 2016, interpolation
 * points 0, +-1, +-2, infinity): 36 products per 4x4 outputs, against 64 for F(2x2, 3x3) over the same outputs. On a
 * 14x14 map (MiniVision's second conv) the tiles cover 16x16 (the outputs past the map are dropped), so per image
 * 16 tiles x 36 = 576 products per channel pair instead of 49 x 16 = 784: 27% less work in the torch.bmm between
 * these transforms, and 27% less Winograd-domain data to move. fp32 only (the bf16 path keeps F(2x2, 3x3): bf16
 * storage of these larger transform values would lose accuracy). Layouts as in winograd_transforms.c, with 36
 * Winograd-domain rows that end in one spare tile: arrays (36, T + 1, C), T = N * ceil(H/4) * ceil(W/4) tiles in (n,
 * tile row, tile column) order, then the spare. The spare keeps the 36 rows a tile writes off the same cache sets (T x
 * C floats is a multiple of 4 KiB whenever N is even; the transforms ran 2-4x slower on the aliased rows), and it is
 * zero in the arrays these functions write for the products (V, dM), so torch.bmm can run over whole contiguous
 * arrays: the spare adds zeros to dU = V^T dM, and its rows of M and dV are never read. Images NHWC; channel counts
 * multiples of 16; H and W even. */
#include <stdlib.h>

#include "minivision_kernels.h"
#include "vec.h"

/* B^T (6x6) applied to six vectors z[0], z[s], ..., z[5s] (a column or a row of a tile): out[e] = sum_a B^T[e][a] z */
static inline void bt6(const vf *z, int s, vf out[6]) {
    const vf z0 = z[0], z1 = z[s], z2 = z[2 * s], z3 = z[3 * s], z4 = z[4 * s], z5 = z[5 * s];
    out[0] = 4.0f * z0 - 5.0f * z2 + z4;
    out[1] = z3 + z4 - 4.0f * (z1 + z2);
    out[2] = z4 - z3 + 4.0f * (z1 - z2);
    out[3] = z4 - z2 + 2.0f * (z3 - z1);
    out[4] = z4 - z2 + 2.0f * (z1 - z3);
    out[5] = 4.0f * z1 - 5.0f * z3 + z5;
}

/* B (= (B^T)^T) applied to six vectors w[0], w[s], ..., w[5s]: out[a] = sum_e B^T[e][a] w[e] (the input backward). */
static inline void b6(const vf *w, int s, vf out[6]) {
    const vf w0 = w[0], w1 = w[s], w2 = w[2 * s], w3 = w[3 * s], w4 = w[4 * s], w5 = w[5 * s];
    out[0] = 4.0f * w0;
    out[1] = 4.0f * (w2 - w1 + w5) + 2.0f * (w4 - w3);
    out[2] = -5.0f * w0 - 4.0f * (w1 + w2) - w3 - w4;
    out[3] = w1 - w2 + 2.0f * (w3 - w4) - 5.0f * w5;
    out[4] = w0 + w1 + w2 + w3 + w4;
    out[5] = w5;
}

/* A^T (4x6) applied to six vectors z[0], z[s], ..., z[5s]: out[i] = sum_e A^T[i][e] z[e]. */
static inline void at6(const vf *z, int s, vf out[4]) {
    const vf z0 = z[0], z1 = z[s], z2 = z[2 * s], z3 = z[3 * s], z4 = z[4 * s], z5 = z[5 * s];
    const vf p = z1 + z2, m = z1 - z2, p2 = z3 + z4, m2 = z3 - z4;
    out[0] = z0 + p + p2;
    out[1] = m + 2.0f * m2;
    out[2] = p + 4.0f * p2;
    out[3] = m + 8.0f * m2 + z5;
}

/* A (6x4) applied to four vectors q[0], q[s], q[2s], q[3s]: out[e] = sum_i A^T[i][e] q[i] (the output backward). */
static inline void a4(const vf *q, int s, vf out[6]) {
    const vf q0 = q[0], q1 = q[s], q2 = q[2 * s], q3 = q[3 * s];
    out[0] = q0;
    out[1] = q0 + q1 + q2 + q3;
    out[2] = q0 - q1 + q2 - q3;
    out[3] = q0 + 2.0f * q1 + 4.0f * q2 + 8.0f * q3;
    out[4] = q0 - 2.0f * q1 + 4.0f * q2 - 8.0f * q3;
    out[5] = q3;
}

/* Tile t of the (n, tile row, tile column) order: its image, and its top-left output (row, column). */
static inline void tile_origin(long t, long TH, long TW, long *n, long *oy, long *ox) {
    *n = t / (TH * TW);
    *oy = 4 * ((t / TW) % TH);
    *ox = 4 * (t % TW);
}

/* A tile's four 2x2 pooling windows q = 0..3, in the order (0,0) (0,1) (1,0) (1,1): window q's top-left output in
 * the tile's 4x4 outputs (row-major), and its four outputs at that + WINDOW_INPUT[0..3], in pooling order. */
static const int WINDOW_CORNER[4] = {0, 2, 8, 10}, WINDOW_INPUT[4] = {0, 1, 4, 5};

/* Where tile t's windows pool to, in elements of an (N, H/2, W/2, C) map; -1 for a window past the map's end. */
static inline void tile_windows(long t, long TH, long TW, long H, long W, long C, long pooled[4]) {
    const long H2 = H / 2, W2 = W / 2;
    long n, oy, ox;
    tile_origin(t, TH, TW, &n, &oy, &ox);
    for (int q = 0; q < 4; ++q) {
        const long py = oy / 2 + q / 2, px = ox / 2 + q % 2;
        pooled[q] = py < H2 && px < W2 ? ((n * H2 + py) * W2 + px) * C : -1;
    }
}

/* V = B^T d B for tiles t0..t1: x (N, H, W, C) fp32 -> V (36, T, C) fp32; the tile's 6x6 input window starts one row
 * and one column above and left of its outputs (zeros outside the image: the padding, and past the map's end). */
static void input4(const float *x, float *V, long t0, long t1, long T, long H, long W, long C) {
    const long TH = (H + 3) / 4, TW = (W + 3) / 4;
    for (long t = t0; t < t1; ++t) {
        long n, oy, ox;
        tile_origin(t, TH, TW, &n, &oy, &ox);
        long offset[36];
        for (int a = 0; a < 6; ++a)
            for (int b = 0; b < 6; ++b) {
                const long yy = oy - 1 + a, xx = ox - 1 + b;
                offset[6 * a + b] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? ((n * H + yy) * W + xx) * C : -1;
            }
        for (long k = 0; k < C; k += VL) {
            vf d[36], r[36], out[6];
            for (int e = 0; e < 36; ++e) d[e] = offset[e] < 0 ? (vf){0} : load_f32_v(x + offset[e] + k);
            for (int b = 0; b < 6; ++b) { /* B^T d: along each column b; r[6e + b] */
                bt6(d + b, 6, out);
                for (int e = 0; e < 6; ++e) r[6 * e + b] = out[e];
            }
            for (int e = 0; e < 6; ++e) { /* (B^T d) B: along each row e */
                bt6(r + 6 * e, 1, out);
                for (int v = 0; v < 6; ++v) store_f32_v(V + ((6 * e + v) * (T + 1) + t) * C + k, out[v]);
            }
        }
    }
}

/* M (36, T, C) -> the tile's 4x4 outputs A^T M A + bias -> its four 2x2 windows' relu(max) and codes (y and code:
 * (N, H/2, W/2, C)); windows past the map's end are dropped. */
static void output4_pool_relu(const float *M, const float *bias, float *y, int16_t *code, long t0, long t1, long T,
                              long H, long W, long C) {
    const long TH = (H + 3) / 4, TW = (W + 3) / 4;
    for (long t = t0; t < t1; ++t) {
        long pooled[4];
        tile_windows(t, TH, TW, H, W, C, pooled);
        for (long k = 0; k < C; k += VL) {
            vf m[36], s[24], o[16];
            for (int e = 0; e < 36; ++e) m[e] = load_f32_v(M + (e * (T + 1) + t) * C + k);
            for (int v = 0; v < 6; ++v) { /* A^T M: along each column v; s[6i + v] */
                vf out[4];
                at6(m + v, 6, out);
                for (int i = 0; i < 4; ++i) s[6 * i + v] = out[i];
            }
            const vf b = load_f32_v(bias + k);
            for (int i = 0; i < 4; ++i) { /* (A^T M) A: along each row i; o[4i + j] */
                vf out[4];
                at6(s + 6 * i, 1, out);
                for (int j = 0; j < 4; ++j) o[4 * i + j] = out[j] + b;
            }
            for (int q = 0; q < 4; ++q) {
                if (pooled[q] < 0) continue;
                vf window[4];
                for (int i = 0; i < 4; ++i) window[i] = o[WINDOW_CORNER[q] + WINDOW_INPUT[i]];
                pool_relu_v_f32(window, y + pooled[q] + k, code + pooled[q] + k);
            }
        }
    }
}

/* Backward of output4_pool_relu: grad (N, H/2, W/2, C) and codes -> dM = A g_tile A^T (36, T, C), where g_tile (4x4)
 * holds each window's gradient at the input that won (zero elsewhere, and where ReLU closed or the window is past the
 * map); dbias (C) += the gradients that pass. */
static void output4_backward(const float *grad, const int16_t *code, float *dM, float *dbias, long t0, long t1,
                             long T, long H, long W, long C) {
    const long TH = (H + 3) / 4, TW = (W + 3) / 4;
    for (long t = t0; t < t1; ++t) {
        long pooled[4];
        tile_windows(t, TH, TW, H, W, C, pooled);
        for (long k = 0; k < C; k += VL) {
            vf g[16], h[24], out[6];
            vf passed = {0};
            for (int e = 0; e < 16; ++e) g[e] = (vf){0};
            for (int q = 0; q < 4; ++q) {
                if (pooled[q] < 0) continue;
                const vf gw = load_f32_v(grad + pooled[q] + k);
                const vi which = load_codes_v(code + pooled[q] + k);
                for (int i = 0; i < 4; ++i) g[WINDOW_CORNER[q] + WINDOW_INPUT[i]] = (vf)((vi)gw & (which == i));
                passed += (vf)((vi)gw & (which < 4));
            }
            store_f32_v(dbias + k, load_f32_v(dbias + k) + passed);
            for (int j = 0; j < 4; ++j) { /* A g: along each column j; h[4e + j] */
                a4(g + j, 4, out);
                for (int e = 0; e < 6; ++e) h[4 * e + j] = out[e];
            }
            for (int e = 0; e < 6; ++e) { /* (A g) A^T: along each row e */
                a4(h + 4 * e, 1, out);
                for (int v = 0; v < 6; ++v) store_f32_v(dM + ((6 * e + v) * (T + 1) + t) * C + k, out[v]);
            }
        }
    }
}

/* Backward of input4 for images n0..n1: dV (36, T, C) -> grad_x = sum over tiles of B dV B^T placed at each tile's
 * 6x6 input window, summed in `scratch` ((4 TH + 2) x (4 TW + 2) x C floats: the windows with the padding ring and the
 * rows / columns past the map, whose gradients are dropped). */
static void input4_backward(const float *dV, float *grad_x, float *scratch, long n0, long n1, long T, long H, long W,
                            long C) {
    const long TH = (H + 3) / 4, TW = (W + 3) / 4, Wp = 4 * TW + 2;
    for (long n = n0; n < n1; ++n) {
        memset(scratch, 0, sizeof(float) * (4 * TH + 2) * Wp * C);
        for (long ty = 0; ty < TH; ++ty)
            for (long tx = 0; tx < TW; ++tx) {
                const long t = (n * TH + ty) * TW + tx;
                float *corner = scratch + (4 * ty * Wp + 4 * tx) * C;
                for (long k = 0; k < C; k += VL) {
                    vf w[36], q[36], out[6];
                    for (int e = 0; e < 36; ++e) w[e] = load_f32_v(dV + (e * (T + 1) + t) * C + k);
                    for (int v = 0; v < 6; ++v) { /* B dV: along each column v; q[6a + v] */
                        b6(w + v, 6, out);
                        for (int a = 0; a < 6; ++a) q[6 * a + v] = out[a];
                    }
                    for (int a = 0; a < 6; ++a) { /* (B dV) B^T: along each row a, added to the window */
                        b6(q + 6 * a, 1, out);
                        float *row = corner + (a * Wp) * C + k;
                        for (int b = 0; b < 6; ++b) store_f32_v(row + b * C, load_f32_v(row + b * C) + out[b]);
                    }
                }
            }
        for (long yy = 0; yy < H; ++yy)
            memcpy(grad_x + (n * H + yy) * W * C, scratch + ((yy + 1) * Wp + 1) * C, sizeof(float) * W * C);
    }
}

/* Tiles (or, for the input backward, images) are split evenly over the OpenMP threads. */
#define SHARE(total, i, threads) ((total) * (i) / (threads)), ((total) * ((i) + 1) / (threads))

static int unsupported(long height, long width, long channels) { return channels % 16 || height % 2 || width % 2; }

static long tile_count(long images, long height, long width) { return images * ((height + 3) / 4) * ((width + 3) / 4); }

/* Zeros the spare tile at the end of each of the 36 rows of a (36, T + 1, C) array. */
static void zero_spares(float *a, long T, long C) {
    for (int e = 0; e < 36; ++e) memset(a + (e * (T + 1) + T) * C, 0, sizeof(float) * C);
}

int mv_winograd4x4_input_transform_f32(const float *x, float *v, long images, long height, long width,
                                       long channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = tile_count(images, height, width);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) input4(x, v, SHARE(T, i, threads), T, height, width, channels);
    zero_spares(v, T, channels);
    return 0;
}

int mv_winograd4x4_output_pool_relu_f32(const float *m, const float *bias, float *y, int16_t *code, long images,
                                        long height, long width, long channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = tile_count(images, height, width);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        output4_pool_relu(m, bias, y, code, SHARE(T, i, threads), T, height, width, channels);
    return 0;
}

/* Each thread sums its own bias gradient; the partials are added in thread order (deterministic). */
int mv_winograd4x4_output_pool_relu_backward_f32(const float *grad_y, const int16_t *code, float *grad_m,
                                                 float *grad_bias, long images, long height, long width,
                                                 long channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = tile_count(images, height, width);
    float *partial = calloc((size_t)threads * channels, sizeof(float));
    if (!partial) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        output4_backward(grad_y, code, grad_m, partial + (size_t)i * channels, SHARE(T, i, threads), T, height, width,
                         channels);
    zero_spares(grad_m, T, channels);
    for (int i = 0; i < threads; ++i)
        for (long k = 0; k < channels; ++k) grad_bias[k] += partial[(size_t)i * channels + k];
    free(partial);
    return 0;
}

/* Each thread sums its images' input gradients in its own fp32 scratch window. */
int mv_winograd4x4_input_transform_backward_f32(const float *grad_v, float *grad_x, long images, long height,
                                                long width, long channels, int threads) {
    if (threads < 1) threads = 1;
    if (unsupported(height, width, channels)) return 2;
    const long T = tile_count(images, height, width);
    const long per_thread = (4 * ((height + 3) / 4) + 2) * (4 * ((width + 3) / 4) + 2) * channels;
    float *scratch = malloc((size_t)threads * per_thread * sizeof(float));
    if (!scratch) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i)
        input4_backward(grad_v, grad_x, scratch + (size_t)i * per_thread, SHARE(images, i, threads), T, height, width,
                        channels);
    free(scratch);
    return 0;
}
