/* Mini-Vision fast path: every exported C function, one per operation, with named parameters.
 *
 * minivision_hf/fast/build.py mirrors these declarations in its ctypes signature table (SIGNATURES), and
 * tests/test_fast_kernels.py checks that the two agree name for name and type for type.
 *
 * Conventions shared by every function:
 * - images are channels_last: memory order (N, H, W, C); `images`, `height`, `width` are the block's input (conv
 *   output) sizes, height and width even; pooled outputs are (N, H/2, W/2, C);
 * - bf16 values travel as their uint16_t bits; fp32 as float;
 * - `code` (one per pooled output: int16_t, or the data's own type in pool_relu.c) says which input of the 2x2
 *   window won the max-pool (0..3 in the order (0,0) (0,1) (1,0) (1,1), first maximum, NaN wins, as max_pool2d) or 4
 *   where ReLU passes no gradient (output <= 0);
 * - `threads`: OpenMP threads (torch's own pool: the library links the libgomp torch loaded);
 * - the return value is 0 on success, 1 when out of memory, 2 for an unsupported shape, -1 when the function was
 *   not built for this library's ISA level.
 */
#ifndef MINIVISION_KERNELS_H
#define MINIVISION_KERNELS_H
#include <stdint.h>

/* ---- pool_relu.c: y = relu(max_pool2d(x, 2)) and its backward, any channel count; codes in the data's type ---- */
int mv_pool_relu_forward_bf16(const uint16_t *x, uint16_t *y, uint16_t *code, long images, long height, long width,
                              long channels, int threads);
int mv_pool_relu_forward_f32(const float *x, float *y, float *code, long images, long height, long width,
                             long channels, int threads);
int mv_pool_relu_backward_bf16(const uint16_t *grad_y, const uint16_t *code, uint16_t *grad_x, long images,
                               long height, long width, long channels, int threads);
int mv_pool_relu_backward_f32(const float *grad_y, const float *code, float *grad_x, long images, long height,
                              long width, long channels, int threads);

/* ---- first_block.c: relu(max_pool2d(conv2d(x, w, bias, padding=1), 2)) for a 1-channel 3x3 conv, in bf16
 * autocast numerics (bf16 x and weights, fp32 sums, each conv output rounded to bf16 before the max).
 * x: (N, H, W) bf16; taps: (9, C) fp32 holding bf16 values, tap-major; bias: (C) fp32 holding bf16 values. */
int mv_conv1_pool_relu_forward(const uint16_t *x, const float *taps, const float *bias, uint16_t *y, int16_t *code,
                               long images, long height, long width, long channels, int threads);
/* grad_taps: (9, C) fp32 and grad_bias: (C) fp32, both overwritten (fp32 sums, added in thread order). */
int mv_conv1_pool_relu_backward(const uint16_t *x, const uint16_t *grad_y, const int16_t *code, float *grad_taps,
                                float *grad_bias, long images, long height, long width, long channels, int threads);
/* The same block in fp32 (x: (N, H, W) fp32; taps, bias: fp32; y: fp32; no rounding); channels % 16 == 0 only. */
int mv_conv1_pool_relu_forward_f32(const float *x, const float *taps, const float *bias, float *y, int16_t *code,
                                   long images, long height, long width, long channels, int threads);
int mv_conv1_pool_relu_backward_f32(const float *x, const float *grad_y, const int16_t *code, float *grad_taps,
                                    float *grad_bias, long images, long height, long width, long channels,
                                    int threads);

/* ---- winograd_transforms.c: a 3x3 conv (padding 1) as Winograd F(2x2, 3x3) with the max-pool + ReLU in its output
 * transform; the channel-mixing products run outside (torch.bmm). Winograd-domain arrays are (16, T, C) bf16 (or fp32
 * for the *_f32 functions) with T = N * H/2 * W/2 tiles; channels a multiple of 16. */
int mv_winograd_input_transform(const uint16_t *x, uint16_t *v, long images, long height, long width, long channels,
                                int threads);
int mv_winograd_output_pool_relu(const uint16_t *m, const float *bias, uint16_t *y, int16_t *code, long images,
                                 long height, long width, long channels, int threads);
/* grad_m: (16, T, C) bf16, overwritten; grad_bias: (C) fp32, added to. */
int mv_winograd_output_pool_relu_backward(const uint16_t *grad_y, const int16_t *code, uint16_t *grad_m,
                                          float *grad_bias, long images, long height, long width, long channels,
                                          int threads);
int mv_winograd_input_transform_backward(const uint16_t *grad_v, uint16_t *grad_x, long images, long height,
                                         long width, long channels, int threads);
/* The same four transforms with fp32 images and Winograd-domain arrays (the products: fp32 torch.bmm). */
int mv_winograd_input_transform_f32(const float *x, float *v, long images, long height, long width, long channels,
                                    int threads);
int mv_winograd_output_pool_relu_f32(const float *m, const float *bias, float *y, int16_t *code, long images,
                                     long height, long width, long channels, int threads);
int mv_winograd_output_pool_relu_backward_f32(const float *grad_y, const int16_t *code, float *grad_m,
                                              float *grad_bias, long images, long height, long width, long channels,
                                              int threads);
int mv_winograd_input_transform_backward_f32(const float *grad_v, float *grad_x, long images, long height,
                                             long width, long channels, int threads);

/* ---- winograd4x4_transforms.c: the fp32 Winograd block with 4x4 output tiles, F(4x4, 3x3) (36 products per 4x4
 * outputs: on a 14x14 map 27% fewer than F(2x2, 3x3)), the max-pool + ReLU in its output transform; the products run
 * outside (fp32 torch.bmm). Winograd-domain arrays are (36, T + 1, C) fp32 with T = N * ceil(H/4) * ceil(W/4)
 * tiles and a spare last tile in each row (against cache-set aliasing), which the input transform (v) and the output
 * backward (grad_m) set to zero; channels a multiple of 16; H and W even. */
int mv_winograd4x4_input_transform_f32(const float *x, float *v, long images, long height, long width,
                                       long channels, int threads);
int mv_winograd4x4_output_pool_relu_f32(const float *m, const float *bias, float *y, int16_t *code, long images,
                                        long height, long width, long channels, int threads);
/* grad_m: (36, T + 1, C) fp32, overwritten; grad_bias: (C) fp32, added to. */
int mv_winograd4x4_output_pool_relu_backward_f32(const float *grad_y, const int16_t *code, float *grad_m,
                                                 float *grad_bias, long images, long height, long width,
                                                 long channels, int threads);
int mv_winograd4x4_input_transform_backward_f32(const float *grad_v, float *grad_x, long images, long height,
                                                long width, long channels, int threads);

/* ---- winograd_avx512bf16.c: the same Winograd block in one pass per image with its own AVX-512 BF16 products (fp32
 * sums kept until the output transform). Built only at an ISA level with AVX-512 BF16; elsewhere the functions
 * return -1 and mv_winograd_one_pass_built() returns 0. */
int mv_winograd_one_pass_built(void);
/* weight_pairs: U = G w G^T as (16, C_in/2, C_out) dwords, bf16 pairs along C_in. */
int mv_winograd_one_pass_forward(const uint16_t *x, const uint32_t *weight_pairs, const float *bias, uint16_t *y,
                                 int16_t *code, long images, long height, long width, long in_channels,
                                 long out_channels, int threads);
/* weight_pairs_t: U^T as (16, C_out/2, C_in) dwords, bf16 pairs along C_out; grad_x: NULL when not wanted;
 * grad_u: (16, C_in, C_out) fp32 and grad_bias: (C_out) fp32, both overwritten. */
int mv_winograd_one_pass_backward(const uint16_t *x, const uint32_t *weight_pairs_t, const uint16_t *grad_y,
                                  const int16_t *code, uint16_t *grad_x, float *grad_u, float *grad_bias,
                                  long images, long height, long width, long in_channels, long out_channels,
                                  int threads);

/* ---- build_key.c: the cache key the library was built under, NUL-terminated into key[size] (2 if it does not fit);
 * the loader checks it against the key in the library's file name. */
int mv_build_key(char *key, long size);

#endif
