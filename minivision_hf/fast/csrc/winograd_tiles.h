/* Winograd F(2x2, 3x3) tile transforms for VL channels at a time (vec.h), in fp32 arithmetic, shared by the transforms +
 * torch.bmm path (winograd_transforms.c, bf16 and fp32 storage) and the one-pass path (winograd_avx512bf16.c):
 * y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A over 4x4 input tiles d at stride 2 (Lavin & Gray 2016). A 2x2 output tile
 * is exactly one 2x2 pooling window, so the max-pool + ReLU happen in the output transform (output_tile). */
#ifndef MINIVISION_WINOGRAD_TILES_H
#define MINIVISION_WINOGRAD_TILES_H
#include "vec.h"

/* Winograd output transform of one tile for VL channels: the 2x2 window A^T M A + bias, in window order
 * (0,0) (0,1) (1,0) (1,1); exact in fp32 arithmetic whatever the storage type. */
static inline void output_window(const vf m[16], vf bias, vf out[4]) {
    vf s0[4], s1[4];
    for (int v = 0; v < 4; ++v) s0[v] = m[v] + m[4 + v] + m[8 + v], s1[v] = m[4 + v] - m[8 + v] - m[12 + v];
    out[0] = s0[0] + s0[1] + s0[2] + bias, out[1] = s0[1] - s0[2] - s0[3] + bias;
    out[2] = s1[0] + s1[1] + s1[2] + bias, out[3] = s1[1] - s1[2] - s1[3] + bias;
}

/* The bf16 block's output: output_window, then pool_relu_v (bf16 rounding before the max). */
static inline void output_tile(const vf m[16], vf bias, uint16_t *y, int16_t *code) {
    vf out[4];
    output_window(m, bias, out);
    pool_relu_v(out, y, code);
}

/* Where the 16 input rows under image n's tile t start, in elements of an (N, H, W, C) image; -1 outside the image
 * (the zero padding). */
static inline void tile_offsets(long n, long t, long H, long W, long C, long offset[16]) {
    const long W2 = W / 2, ty = t / W2, tx = t % W2;
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            long yy = 2 * ty - 1 + a, xx = 2 * tx - 1 + b;
            offset[4 * a + b] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? ((n * H + yy) * W + xx) * C : -1;
        }
}

/* The 16 input rows under image n's tile t (zeros outside the image), for input_tile. */
static inline void tile_pointers(const uint16_t *x, const uint16_t *zeros, long n, long t, long H, long W, long C,
                                 const uint16_t *p[16]) {
    long offset[16];
    tile_offsets(n, t, H, W, C, offset);
    for (int e = 0; e < 16; ++e) p[e] = offset[e] < 0 ? zeros : x + offset[e];
}

/* The input tile transform on a loaded tile d[4a + b] (VL channels): out[4e + v] = (B^T d B)[e][v]. */
static inline void input_transform(const vf d[16], vf out[16]) {
    vf r[4][4];
    for (int b = 0; b < 4; ++b) {
        r[0][b] = d[b] - d[8 + b], r[1][b] = d[4 + b] + d[8 + b];
        r[2][b] = d[8 + b] - d[4 + b], r[3][b] = d[4 + b] - d[12 + b];
    }
    for (int e = 0; e < 4; ++e) {
        out[4 * e + 0] = r[e][0] - r[e][2], out[4 * e + 1] = r[e][1] + r[e][2];
        out[4 * e + 2] = r[e][2] - r[e][1], out[4 * e + 3] = r[e][1] - r[e][3];
    }
}

/* input_transform of the bf16 tile under the pointers p, VL channels at k. */
static inline void input_tile(const uint16_t *const p[16], long k, vf out[16]) {
    vf d[16];
    for (int e = 0; e < 16; ++e) d[e] = load_bf16_v(p[e] + k);
    input_transform(d, out);
}

/* Backward of input_tile: adds B dV B^T (dV: d[4e + v] for VL channels) to the tile's 4x4 input window, whose top-left
 * element is at `at` in an fp32 image of row stride `row` (floats) and C channels. */
static inline void input_tile_backward(const vf d[16], float *at, long row, long C) {
    vf q[4][4];
    for (int v = 0; v < 4; ++v) /* B dV: along the rows */
        q[0][v] = d[v], q[1][v] = d[4 + v] - d[8 + v] + d[12 + v], q[2][v] = d[4 + v] + d[8 + v] - d[v],
        q[3][v] = -d[12 + v];
    for (int a = 0; a < 4; ++a) { /* (B dV) B^T: along the columns */
        float *r = at + a * row;
        vf dd[4] = {q[a][0], q[a][1] - q[a][2] + q[a][3], q[a][1] + q[a][2] - q[a][0], -q[a][3]};
        for (int b = 0; b < 4; ++b) store_f32_v(r + b * C, load_f32_v(r + b * C) + dd[b]);
    }
}

/* Backward of output_window + pooling + ReLU for VL channels: g is the pooled output's gradient, `which` its codes
 * (0..3: the window input that won; 4: ReLU closed). Writes dM = A g_tile A^T (exact: every entry is 0 or +-g) and
 * returns the gradient that passes (for dbias). */
static inline vf output_window_backward(vf grad, vi which, vf out[16]) {
    const float a_rows[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}}; /* A^T */
    vf g = (vf)((vi)grad & (which < 4));
    vi row1 = (which >> 1) == 1, col1 = (which & 1) == 1;
    vf gi[4], cj[4];
    for (int e = 0; e < 4; ++e) {
        vf r0 = (vf){0} + a_rows[0][e], r1 = (vf){0} + a_rows[1][e];
        gi[e] = g * (vf)(((vi)r1 & row1) | ((vi)r0 & ~row1));
        cj[e] = (vf)(((vi)r1 & col1) | ((vi)r0 & ~col1));
    }
    for (int e = 0; e < 4; ++e)
        for (int v = 0; v < 4; ++v) out[4 * e + v] = gi[e] * cj[v];
    return g;
}

/* output_window_backward for the bf16 block: gradient and codes at element `at` of (T, C) arrays. */
static inline vf output_tile_backward(const uint16_t *grad, const int16_t *code, long at, vf out[16]) {
    return output_window_backward(load_bf16_v(grad + at), load_codes_v(code + at), out);
}

#endif
