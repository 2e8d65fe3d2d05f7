/* Vector helpers shared by the kernel families: bf16 <-> fp32 conversions (scalar, and VL channels at a time with GCC
 * vector extensions at the ISA level's native width) and the pooling step every fused kernel ends with (pool_relu_v,
 * pool_relu_v_f32). All static inline: each .c file gets its own copy. */
#ifndef MINIVISION_VEC_H
#define MINIVISION_VEC_H
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

/* One vector of VL lanes at the build's native width: 16 fp32 lanes with AVX-512 (one zmm register), 8 without (one
 * ymm with AVX2; two xmm with SSE). Kernels step through channels VL at a time (channel counts are multiples of 16,
 * so of VL). Wider-than-native vectors would be legal GCC, but without AVX-512's mask registers gcc scalarises their
 * comparisons and conversions: the kernels ran ~12x slower at x86-64-v3 that way. */
#if defined(__AVX512F__)
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));
typedef uint32_t vu __attribute__((vector_size(4 * VL)));
typedef uint16_t vu16 __attribute__((vector_size(2 * VL)));
typedef int16_t vi16 __attribute__((vector_size(2 * VL)));

static inline vf load_bf16_v(const uint16_t *p) {
    vu16 h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}
static inline vu round_bf16_v(vf f) { /* fp32 -> bf16 bits (in the low half), nearest even; NaN stays NaN */
    vu u = (vu)f;
    vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    vi nan = (vi)((u & 0x7fffffffu) > 0x7f800000u);
    return ((vu)nan & ((u >> 16) | 0x40u)) | (~(vu)nan & rounded);
}
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
/* round_bf16_v in one instruction (vcvtneps2bf16: nearest even; denormals flush to zero, as in oneDNN's bf16) */
static inline vu round_bf16_fast(vf f) {
    return (vu)_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh((__m512)f));
}
#else
#define round_bf16_fast round_bf16_v
#endif
static inline void store_bf16_v(uint16_t *p, vu bits) {
    vu16 h = __builtin_convertvector(bits, vu16);
    memcpy(p, &h, sizeof h);
}
static inline vf load_f32_v(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store_f32_v(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* VL values at element i of an array stored as bf16 bits (f32 = 0) or fp32 (f32 = 1), as fp32. */
static inline vf load_v(const void *p, long i, int f32) {
    return f32 ? load_f32_v((const float *)p + i) : load_bf16_v((const uint16_t *)p + i);
}

/* VL pooling codes (int16: 0..3 the window input that won, 4 where ReLU closed) as 32-bit lanes. */
static inline vi load_codes_v(const int16_t *code) {
    vi16 c16;
    memcpy(&c16, code, sizeof c16);
    return __builtin_convertvector(c16, vi);
}

/* Rounds the 4 conv outputs of a 2x2 window to bf16 and stores relu(max) and its code (as pool_relu.c: first maximum,
 * NaN wins, 4 where ReLU closes). */
static inline void pool_relu_v(const vf out[4], uint16_t *y, int16_t *code) {
    vu best = round_bf16_fast(out[0]);
    vf top = (vf)(best << 16);
    vi idx = (vi){0};
    for (int q = 1; q < 4; ++q) {
        vu bits = round_bf16_fast(out[q]);
        vf v = (vf)(bits << 16);
        vi up = (v > top) | (v != v);
        top = (vf)(((vi)v & up) | ((vi)top & ~up));
        best = (bits & (vu)up) | (best & ~(vu)up);
        idx = (q & up) | (idx & ~up);
    }
    vi open = ~(top <= 0.0f); /* ReLU keeps it (and its gradient) unless <= 0; NaN passes */
    store_bf16_v(y, best & (vu)open);
    vi16 c16 = __builtin_convertvector((idx & open) | (4 & ~open), vi16);
    memcpy(code, &c16, sizeof c16);
}

/* pool_relu_v for fp32 data: the same max (first maximum, NaN wins), ReLU and codes, no rounding. */
static inline void pool_relu_v_f32(const vf out[4], float *y, int16_t *code) {
    vf top = out[0];
    vi idx = (vi){0};
    for (int q = 1; q < 4; ++q) {
        vi up = (out[q] > top) | (out[q] != out[q]);
        top = (vf)(((vi)out[q] & up) | ((vi)top & ~up));
        idx = (q & up) | (idx & ~up);
    }
    vi open = ~(top <= 0.0f);
    store_f32_v(y, (vf)((vi)top & open));
    vi16 c16 = __builtin_convertvector((idx & open) | (4 & ~open), vi16);
    memcpy(code, &c16, sizeof c16);
}

#endif
