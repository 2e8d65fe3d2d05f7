/* Winograd F(2x2, 3x3) tile transforms for 16 channels at a time, shared by the transforms + torch.bmm path
 * (winograd_transforms.c) and the one-pass path (winograd_avx512bf16.c):
 * y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A over 4x4 input tiles d at stride 2 (Lavin & Gray 2016). A 2x2 output tile
 * is exactly one 2x2 pooling window, so the max-pool + ReLU happen in the output transform (output_tile). */
#ifndef MINIVISION_WINOGRAD_TILES_H
#define MINIVISION_WINOGRAD_TILES_H
#include "vec16.h"

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

/* The input tile transform: out[4e + v] = (B^T d B)[e][v] for 16 channels at k. */
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

/* Backward of output_tile: dM of one tile for 16 channels at k; returns the gradient that passes (for dbias). */
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

#endif
