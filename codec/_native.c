/* Hot loops of the Presso lossless codec: strided byte-plane gather/scatter, histograms,
 * and an interleaved static rANS coder (32-bit states, 16-bit renormalisation).
 *
 * Built on demand by compression/codec/native.py (cc -O3 -shared) and called through ctypes,
 * which releases the GIL, so chunks decode in parallel. native.py carries a numpy version of
 * every function here; the two are tested against each other.
 *
 * rANS stream layout (all little endian). Symbol i belongs to lane i % lanes; lanes come in
 * groups of 8 (lanes = 8 * groups) and each group has its own word stream, so the groups decode
 * as independent dependency chains (and one group is one AVX2 vector):
 *   lanes x u32 final encoder states | (groups - 1) x u32 word counts of groups 0..groups-2 |
 *   the u16 renormalisation words of group 0, then group 1, ... each in the order the decoder
 *   consumes them (symbol order). Decoding ends with every state back at RANS_L and every word
 *   of every group consumed; anything else is a corrupt stream.
 * The decoder packs each slot's (symbol, freq, slot - cum) into one u32, so scale_bits <= 12
 * and every freq < 4096 (a plane of one repeated byte is coded as 'const', not rans).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PZ_X86 1
#endif

#define RANS_L (1u << 16)
#define MAX_LANES 256

void pz_histogram(const uint8_t *src, size_t n, size_t stride, uint64_t *counts) {
    uint32_t c[4][256];
    memset(c, 0, sizeof c);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c[0][src[i * stride]]++;
        c[1][src[(i + 1) * stride]]++;
        c[2][src[(i + 2) * stride]]++;
        c[3][src[(i + 3) * stride]]++;
        if ((i & 0x3fffffff) == 0x3ffffffc) { /* flush before u32 overflow */
            for (int s = 0; s < 256; s++) {
                counts[s] += (uint64_t)c[0][s] + c[1][s] + c[2][s] + c[3][s];
                c[0][s] = c[1][s] = c[2][s] = c[3][s] = 0;
            }
        }
    }
    for (; i < n; i++) c[0][src[i * stride]]++;
    for (int s = 0; s < 256; s++) counts[s] += (uint64_t)c[0][s] + c[1][s] + c[2][s] + c[3][s];
}

/* freq: 256 normalised frequencies summing to 1 << scale_bits; groups of 8 lanes. `scratch` holds
 * dst_cap bytes. Returns bytes written, or 0 when dst_cap is too small (the caller then stores
 * the plane another way). */
size_t pz_rans_encode(const uint8_t *src, size_t n, size_t stride, const uint32_t *freq, uint32_t scale_bits,
                      uint32_t groups, uint8_t *dst, size_t dst_cap, uint8_t *scratch) {
    uint32_t cum[256], state[8], shift[256];
    uint64_t x_max[256], rcp[256];
    size_t lanes = 8 * (size_t)groups, head = 4 * lanes + 4 * ((size_t)groups - 1);
    if (groups == 0 || groups > MAX_LANES / 8 || scale_bits > 16 || dst_cap < head) return 0;
    uint32_t acc = 0;
    for (int s = 0; s < 256; s++) {
        cum[s] = acc;
        acc += freq[s];
        x_max[s] = ((uint64_t)(RANS_L >> scale_bits) << 16) * freq[s];
        /* x / f == (x * rcp) >> (32 + shift) for every 32-bit x (Granlund-Montgomery, round up) */
        uint32_t l = 0;
        while (freq[s] && (1ull << l) < freq[s]) l++;
        shift[s] = l;
        rcp[s] = freq[s] ? (uint64_t)((((unsigned __int128)1) << (32 + l)) / freq[s]) + 1 : 0;
    }
    size_t out = head;
    for (uint32_t g = 0; g < groups; g++) {
        uint16_t *words_end = (uint16_t *)(scratch + (dst_cap & ~(size_t)1));
        uint16_t *w = words_end, *w_min = (uint16_t *)(scratch + out);
        for (int j = 0; j < 8; j++) state[j] = RANS_L;
        size_t first = 8 * (size_t)g;
        if (n > first) {
            size_t last_round = (n - 1 - first) / lanes;  /* rounds this group takes part in */
            for (size_t r = last_round + 1; r-- > 0;) {
                size_t base = r * lanes + first;
                for (int j = 7; j >= 0; j--) {
                    size_t i = base + (size_t)j;
                    if (i >= n) continue;
                    uint32_t s = src[i * stride], x = state[j], f = freq[s];
                    if (f == 0) return 0;
                    if ((uint64_t)x >= x_max[s]) {
                        if (w <= w_min) return 0;
                        *--w = (uint16_t)(x & 0xffff);
                        x >>= 16;
                    }
                    uint32_t q = (uint32_t)(((unsigned __int128)x * rcp[s]) >> (32 + shift[s]));
                    state[j] = (q << scale_bits) + (x - q * f) + cum[s];
                }
            }
        }
        size_t n_words = (size_t)(words_end - w);
        if (out + 2 * n_words > dst_cap) return 0;
        memcpy(dst + out, w, 2 * n_words);
        out += 2 * n_words;
        memcpy(dst + 4 * first, state, 32);
        if (g + 1 < groups) {
            uint32_t cnt = (uint32_t)n_words;
            memcpy(dst + 4 * lanes + 4 * (size_t)g, &cnt, 4);
        }
    }
    return out;
}

/* Split `n` elements of width `w` into w contiguous planes: dst[k*n + i] = src[i*w + k]. */
void pz_split(const uint8_t *restrict src, size_t n, size_t w, uint8_t *restrict dst) {
    if (w == 2) {
        for (size_t i = 0; i < n; i++) { dst[i] = src[2 * i]; dst[n + i] = src[2 * i + 1]; }
    } else if (w == 4) {
        for (size_t i = 0; i < n; i++) {
            dst[i] = src[4 * i]; dst[n + i] = src[4 * i + 1];
            dst[2 * n + i] = src[4 * i + 2]; dst[3 * n + i] = src[4 * i + 3];
        }
    } else {
        for (size_t k = 0; k < w; k++)
            for (size_t i = 0; i < n; i++) dst[k * n + i] = src[i * w + k];
    }
}

/* Interleave w planes (each n bytes, anywhere in memory) into dst: dst[i*w + k] = planes[k][i]. */
void pz_merge(const uint8_t *const *planes, size_t n, size_t w, uint8_t *restrict dst) {
    if (w == 1) { memcpy(dst, planes[0], n); return; }
    if (w == 2) {
        const uint8_t *restrict a = planes[0], *restrict b = planes[1];
        for (size_t i = 0; i < n; i++) { dst[2 * i] = a[i]; dst[2 * i + 1] = b[i]; }
    } else if (w == 4) {
        const uint8_t *restrict a = planes[0], *restrict b = planes[1];
        const uint8_t *restrict c = planes[2], *restrict d = planes[3];
        for (size_t i = 0; i < n; i++) {
            dst[4 * i] = a[i]; dst[4 * i + 1] = b[i]; dst[4 * i + 2] = c[i]; dst[4 * i + 3] = d[i];
        }
    } else {
        for (size_t k = 0; k < w; k++)
            for (size_t i = 0; i < n; i++) dst[i * w + k] = planes[k][i];
    }
}

static int build_table(const uint32_t *freq, uint32_t scale_bits, uint32_t *tab) {
    uint32_t acc = 0;
    if (scale_bits > 12 || scale_bits == 0) return -1;
    for (uint32_t s = 0; s < 256; s++) {
        uint32_t f = freq[s];
        if (f >= 4096 || f > (1u << scale_bits) - acc) return -1;
        for (uint32_t k = 0; k < f; k++) tab[acc + k] = s | (f << 8) | (k << 20);
        acc += f;
    }
    return acc == (1u << scale_bits) ? 0 : -1;
}

/* One round of 8*groups symbols, no bounds checks (caller guarantees 16 readable bytes per group). */
static inline void round_scalar(uint32_t *restrict state, uint32_t groups, const uint32_t *tab, uint32_t sb,
                                const uint8_t **p, uint8_t *restrict o) {
    const uint32_t mask = (1u << sb) - 1;
    for (uint32_t g = 0; g < groups; g++) {
        const uint8_t *q = p[g];
        for (uint32_t j = 8 * g; j < 8 * g + 8; j++) {
            uint32_t x = state[j];
            uint32_t e = tab[x & mask];
            o[j] = (uint8_t)e;
            x = ((e >> 8) & 0xfff) * (x >> sb) + (e >> 20);
            uint32_t need = x < RANS_L;
            uint32_t word = (uint32_t)q[0] | ((uint32_t)q[1] << 8);
            state[j] = (x << (need << 4)) | (word & (0u - need));
            q += 2 * need;
        }
        p[g] = q;
    }
}

static uint32_t perm_table[256][8];

static void init_perm(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int j = 0; j < 8; j++) perm_table[m][j] = (m >> j) & 1 ? (uint32_t)k++ : 0;
    }
}

#ifdef PZ_X86
__attribute__((target("avx2,popcnt"))) static void
round_avx2(uint32_t *state, uint32_t groups, const uint32_t *tab, uint32_t sb, const uint8_t **p, uint8_t *o) {
    const __m256i mask = _mm256_set1_epi32((int)((1u << sb) - 1));
    const __m256i m12 = _mm256_set1_epi32(0xfff), lim = _mm256_set1_epi32(0xffff);
    const __m128i shift = _mm_cvtsi32_si128((int)sb);
    for (uint32_t g = 0; g < groups; g++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(state + 8 * g));
        __m256i e = _mm256_i32gather_epi32((const int *)tab, _mm256_and_si256(x, mask), 4);
        __m256i sy = _mm256_and_si256(e, _mm256_set1_epi32(0xff));
        __m256i f = _mm256_and_si256(_mm256_srli_epi32(e, 8), m12);
        x = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(x, shift)), _mm256_srli_epi32(e, 20));
        __m256i need = _mm256_cmpeq_epi32(_mm256_min_epu32(x, lim), x);
        int bits = _mm256_movemask_ps(_mm256_castsi256_ps(need));
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p[g]));
        w = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256((const __m256i *)perm_table[bits]));
        x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), w), need);
        p[g] += 2 * __builtin_popcount((unsigned)bits);
        _mm256_storeu_si256((__m256i *)(state + 8 * g), x);
        __m128i lo = _mm_packus_epi32(_mm256_castsi256_si128(sy), _mm256_extracti128_si256(sy, 1));
        _mm_storel_epi64((__m128i *)(o + 8 * g), _mm_packus_epi16(lo, lo));
    }
}
#endif

static int room(const uint8_t **p, const uint8_t **end, uint32_t groups) {
    for (uint32_t g = 0; g < groups; g++)
        if (end[g] - p[g] < 16) return 0;
    return 1;
}

/* Decode n symbols into contiguous dst. Returns 0 on success, -1 on a corrupt or truncated stream. */
int pz_rans_decode(const uint8_t *src, size_t src_len, const uint32_t *freq, uint32_t scale_bits,
                   uint32_t groups, uint8_t *dst, size_t n) {
    uint32_t state[MAX_LANES], tab[4096];
    const uint8_t *p[MAX_LANES / 8], *end[MAX_LANES / 8];
    size_t lanes = 8 * (size_t)groups, head = 4 * lanes + 4 * ((size_t)groups - 1);
    if (groups == 0 || groups > MAX_LANES / 8 || build_table(freq, scale_bits, tab)) return -1;
    if (src_len < head) return -1;
    for (size_t j = 0; j < lanes; j++) {
        memcpy(&state[j], src + 4 * j, 4);
        if (state[j] < RANS_L) return -1;
    }
    size_t pos = head;
    for (uint32_t g = 0; g < groups; g++) {
        uint32_t cnt;
        if (g + 1 < groups) memcpy(&cnt, src + 4 * lanes + 4 * (size_t)g, 4);
        else if ((src_len - pos) % 2) return -1;
        else cnt = (uint32_t)((src_len - pos) / 2);
        if ((size_t)cnt > (src_len - pos) / 2) return -1;
        p[g] = src + pos;
        pos += 2 * (size_t)cnt;
        end[g] = src + pos;
    }
    size_t i = 0;
    int use_avx2 = 0;
#ifdef PZ_X86
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    if (!perm_table[255][7]) init_perm(); /* idempotent: racing threads write the same values */
    while (i + lanes <= n && room(p, end, groups)) {
#ifdef PZ_X86
        if (use_avx2) round_avx2(state, groups, tab, scale_bits, p, dst + i);
        else
#endif
            round_scalar(state, groups, tab, scale_bits, p, dst + i);
        i += lanes;
    }
    const uint32_t mask = (1u << scale_bits) - 1;
    for (; i < n; i++) {
        uint32_t j = (uint32_t)(i % lanes), x = state[j], e = tab[x & mask], g = j / 8;
        dst[i] = (uint8_t)e;
        x = ((e >> 8) & 0xfff) * (x >> scale_bits) + (e >> 20);
        if (x < RANS_L) {
            if (end[g] - p[g] < 2) return -1;
            x = (x << 16) | (uint32_t)p[g][0] | ((uint32_t)p[g][1] << 8);
            p[g] += 2;
        }
        state[j] = x;
    }
    for (uint32_t g = 0; g < groups; g++)
        if (p[g] != end[g]) return -1;
    for (size_t j = 0; j < lanes; j++)
        if (state[j] != RANS_L) return -1;
    return 0;
}
