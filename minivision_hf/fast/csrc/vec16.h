/* 16-lane helpers shared by the kernel families: bf16 <-> fp32 conversions (scalar and 16 channels at a time, with
 * GCC vector extensions: one AVX-512 register, two AVX2 ones, four SSE ones, whatever the ISA level) and the pooling
 * step every fused kernel ends with (pool_relu_16). All static inline: each .c file gets its own copy. */
#ifndef MINIVISION_VEC16_H
#define MINIVISION_VEC16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* fp32 -> bf16 bits, nearest even */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded; /* NaN stays NaN */
}

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

/* Rounds the 4 conv outputs of a 2x2 window to bf16 and stores relu(max) and its code (as pool_relu.c: first maximum,
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

#endif
