/* Fused 2x2 stride-2 max-pool + ReLU, forward and backward, for channels_last tensors (memory order N, H, W, C), any
 * channel count: the fallback for convolutions the other kernel families do not take. Bit-identical to PyTorch's
 * max_pool2d + relu, values and gradients.
 *
 * Forward: y = relu(max of each 2x2 window), and a code per output: which window input won (0..3, first maximum in
 * the order (0,0) (0,1) (1,0) (1,1), NaN wins, as PyTorch's max_pool2d) or 4 where ReLU passes no gradient (y <= 0).
 * Backward: each input gradient is the output gradient where the code names it, else 0 (every element written once,
 * no zero fill). Codes have the data's own type (uint16 for bf16, float for fp32): same-typed lanes vectorise best
 * (int16/int32 codes made these loops 1.5-2x slower). */
#include "minivision_kernels.h"
#include "vec.h"

static inline float f32_to_float(float f) { return f; }

/* rows r0..r1 of the output (row r = image r / H2, output line r % H2); W2 output columns; C channels. */
#define POOL_RELU_KERNELS(NAME, T, CODE_T, TO_FLOAT)                                                                   \
    static void NAME##_forward(const T *restrict x, T *restrict y, CODE_T *restrict code, long r0, long r1,            \
                               long W2, long C) {                                                                      \
        const long W = 2 * W2;                                                                                         \
        for (long r = r0; r < r1; ++r) {                                                                               \
            const T *top = x + 2 * r * W * C, *bottom = top + W * C;                                                   \
            for (long j = 0; j < W2; ++j) {                                                                            \
                const T *restrict p0 = top + 2 * j * C, *restrict p1 = p0 + C;                                         \
                const T *restrict p2 = bottom + 2 * j * C, *restrict p3 = p2 + C;                                      \
                T *restrict out = y + (r * W2 + j) * C;                                                                \
                CODE_T *restrict out_code = code + (r * W2 + j) * C;                                                   \
                for (long k = 0; k < C; ++k) {                                                                         \
                    float m = TO_FLOAT(p0[k]), v;                                                                      \
                    T best = p0[k];                                                                                    \
                    CODE_T idx = 0;                                                                                    \
                    int up;                                                                                            \
                    v = TO_FLOAT(p1[k]), up = (v > m) | (v != v);                                                      \
                    m = up ? v : m, best = up ? p1[k] : best, idx = up ? 1 : idx;                                      \
                    v = TO_FLOAT(p2[k]), up = (v > m) | (v != v);                                                      \
                    m = up ? v : m, best = up ? p2[k] : best, idx = up ? 2 : idx;                                      \
                    v = TO_FLOAT(p3[k]), up = (v > m) | (v != v);                                                      \
                    m = up ? v : m, best = up ? p3[k] : best, idx = up ? 3 : idx;                                      \
                    int open = !(m <= 0.0f); /* ReLU keeps x (and its gradient) unless x <= 0; NaN passes */           \
                    out[k] = open ? best : (T)0;                                                                       \
                    out_code[k] = open ? idx : 4;                                                                      \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
    }                                                                                                                  \
    static void NAME##_backward(const T *restrict grad, const CODE_T *restrict code, T *restrict grad_x,               \
                                long r0, long r1, long W2, long C) {                                                   \
        const long W = 2 * W2;                                                                                         \
        for (long r = r0; r < r1; ++r) {                                                                               \
            T *top = grad_x + 2 * r * W * C, *bottom = top + W * C;                                                    \
            for (long j = 0; j < W2; ++j) {                                                                            \
                T *restrict p0 = top + 2 * j * C, *restrict p1 = p0 + C;                                               \
                T *restrict p2 = bottom + 2 * j * C, *restrict p3 = p2 + C;                                            \
                const T *restrict g = grad + (r * W2 + j) * C;                                                         \
                const CODE_T *restrict c = code + (r * W2 + j) * C;                                                    \
                for (long k = 0; k < C; ++k) {                                                                         \
                    T v = g[k];                                                                                        \
                    CODE_T which = c[k];                                                                               \
                    p0[k] = which == 0 ? v : (T)0;                                                                     \
                    p1[k] = which == 1 ? v : (T)0;                                                                     \
                    p2[k] = which == 2 ? v : (T)0;                                                                     \
                    p3[k] = which == 3 ? v : (T)0;                                                                     \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
    }

POOL_RELU_KERNELS(bf16, uint16_t, uint16_t, bf16_to_float)
POOL_RELU_KERNELS(f32, float, float, f32_to_float)

/* Output rows (row r = image r / (H/2), output line r % (H/2)) are split evenly over the OpenMP threads. */
#define ROWS_OF_THREAD(t, threads, rows) ((rows) * (t) / (threads)), ((rows) * ((t) + 1) / (threads))

int mv_pool_relu_forward_bf16(const uint16_t *x, uint16_t *y, uint16_t *code, long images, long height, long width,
                              long channels, int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t)
        bf16_forward(x, y, code, ROWS_OF_THREAD(t, threads, images * (height / 2)), width / 2, channels);
    return 0;
}

int mv_pool_relu_forward_f32(const float *x, float *y, float *code, long images, long height, long width,
                             long channels, int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t)
        f32_forward(x, y, code, ROWS_OF_THREAD(t, threads, images * (height / 2)), width / 2, channels);
    return 0;
}

int mv_pool_relu_backward_bf16(const uint16_t *grad_y, const uint16_t *code, uint16_t *grad_x, long images,
                               long height, long width, long channels, int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t)
        bf16_backward(grad_y, code, grad_x, ROWS_OF_THREAD(t, threads, images * (height / 2)), width / 2, channels);
    return 0;
}

int mv_pool_relu_backward_f32(const float *grad_y, const float *code, float *grad_x, long images, long height,
                              long width, long channels, int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t)
        f32_backward(grad_y, code, grad_x, ROWS_OF_THREAD(t, threads, images * (height / 2)), width / 2, channels);
    return 0;
}
