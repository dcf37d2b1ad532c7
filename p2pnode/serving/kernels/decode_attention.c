/* Decode attention on the CPU: one new query position per sequence, over its own cache.
 *
 * For every decode row r and KV head h, the GROUP query heads that share h attend over
 * exactly positions [0, lens[r]) of slot slots[r] of the per-slot KV cache (layout
 * [slots, kv_heads, max_len, HEAD_DIM], row-major, fp32 or bf16):
 *
 *   out[r, h, j, :] = softmax_l(scale * q[r, h, j, :] . K[l, :]) @ V
 *
 * K and V are each read once per (r, h), whatever GROUP is; scores, softmax and the
 * weighted sum are fp32. No position past a row's own length is read, so no mask, no
 * padding and no zeroed memory are needed.
 *
 * HEAD_DIM and GROUP are compile-time constants (-D...): p2pnode/serving/cpu_attention.py
 * builds one library per model shape, with -O3 -march=native -ffast-math at compile
 * time only (so the vector expf of libmvec is used, and no crtfastmath is linked to
 * change the process's denormal mode). The (r, h) work items are shared out over an
 * OpenMP team of the calling thread; the library names libgomp.so.1, which resolves to
 * the copy torch has already loaded, so the engine thread's one team runs torch's
 * kernels and these alike.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if !defined(HEAD_DIM) || !defined(GROUP)
#error "build with -DHEAD_DIM=<head dim> -DGROUP=<query heads per KV head>"
#endif

/* Element i of a K or V row in fp32; `bf16` is a constant wherever this is inlined. */
static inline float at(const void *x, int64_t i, int bf16) {
    if (!bf16) return ((const float *)x)[i];
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)((const uint16_t *)x)[i] << 16;
    return v.f;
}

/* One (row, kv head) over positions [0, n); p has room for GROUP * stride scores. */
static inline __attribute__((always_inline)) void attend(const float *q, const void *k,
                                                         const void *v, int64_t n,
                                                         int64_t stride, float scale, float *p,
                                                         float *out, int bf16) {
    float row[HEAD_DIM], acc[GROUP][HEAD_DIM] = {{0}}, inv[GROUP];
    if (n <= 0) { /* nothing to attend to (the caller never asks): zeros, not garbage */
        for (int j = 0; j < GROUP * HEAD_DIM; j++) out[j] = 0.0f;
        return;
    }
    for (int64_t l = 0; l < n; l++) { /* scores: q . K[l] */
#pragma omp simd
        for (int d = 0; d < HEAD_DIM; d++) row[d] = at(k, l * HEAD_DIM + d, bf16);
        for (int j = 0; j < GROUP; j++) {
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int d = 0; d < HEAD_DIM; d++) s += q[j * HEAD_DIM + d] * row[d];
            p[j * stride + l] = s * scale;
        }
    }
    for (int j = 0; j < GROUP; j++) { /* softmax, normalised at the end */
        float *pj = p + j * stride, m = pj[0], sum = 0.0f;
        for (int64_t l = 1; l < n; l++) m = pj[l] > m ? pj[l] : m;
#pragma omp simd reduction(+ : sum)
        for (int64_t l = 0; l < n; l++) {
            pj[l] = expf(pj[l] - m);
            sum += pj[l];
        }
        inv[j] = 1.0f / sum;
    }
    for (int64_t l = 0; l < n; l++) { /* weighted sum of V */
#pragma omp simd
        for (int d = 0; d < HEAD_DIM; d++) row[d] = at(v, l * HEAD_DIM + d, bf16);
        for (int j = 0; j < GROUP; j++) {
            const float w = p[j * stride + l];
#pragma omp simd
            for (int d = 0; d < HEAD_DIM; d++) acc[j][d] += w * row[d];
        }
    }
    for (int j = 0; j < GROUP; j++)
#pragma omp simd
        for (int d = 0; d < HEAD_DIM; d++) out[j * HEAD_DIM + d] = acc[j][d] * inv[j];
}

static inline __attribute__((always_inline)) int attend_all(
    const float *q, const void *kc, const void *vc, const int64_t *slots, const int64_t *lens,
    float *out, int64_t rows, int64_t kv_heads, int64_t max_len, float scale, int threads,
    int bf16) {
    const int64_t items = rows * kv_heads, per = GROUP * HEAD_DIM;
    const int64_t elem = bf16 ? 2 : 4;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *p = malloc(sizeof(float) * (size_t)(GROUP * max_len));
        if (p == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            if (p == NULL) continue;
            const int64_t r = it / kv_heads, h = it % kv_heads;
            const int64_t byte = (slots[r] * kv_heads + h) * max_len * HEAD_DIM * elem;
            attend(q + it * per, (const char *)kc + byte, (const char *)vc + byte, lens[r],
                   max_len, scale, p, out + it * per, bf16);
        }
        free(p);
    }
    return failed ? -1 : 0;
}

/* q and out: [rows, kv_heads, GROUP, HEAD_DIM] fp32; kc, vc: the cache of one layer.
 * Returns 0, or -1 when a thread could not allocate its score buffer. */
int hearth_decode_attention_f32(const float *q, const float *kc, const float *vc,
                                const int64_t *slots, const int64_t *lens, float *out,
                                int64_t rows, int64_t kv_heads, int64_t max_len, float scale,
                                int threads) {
    return attend_all(q, kc, vc, slots, lens, out, rows, kv_heads, max_len, scale, threads, 0);
}

int hearth_decode_attention_bf16(const float *q, const uint16_t *kc, const uint16_t *vc,
                                 const int64_t *slots, const int64_t *lens, float *out,
                                 int64_t rows, int64_t kv_heads, int64_t max_len, float scale,
                                 int threads) {
    return attend_all(q, kc, vc, slots, lens, out, rows, kv_heads, max_len, scale, threads, 1);
}
