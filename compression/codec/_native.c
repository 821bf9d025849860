/* Hot loops of the Presso lossless codec: strided byte-plane gather/scatter, histograms,
 * and an interleaved static rANS coder (32-bit states, 16-bit renormalisation).
 *
 * Built on demand by compression/codec/native.py (cc -O3 -shared) and called through ctypes,
 * which releases the GIL, so chunks decode in parallel. native.py carries a numpy version of
 * every function here; the two are tested against each other.
 *
 * rANS stream layout (all little endian), for n symbols spread over `lanes` lanes
 * (symbol i belongs to lane i % lanes):
 *   lanes x u32 final encoder states, then the renormalisation words (u16) in the order the
 *   decoder consumes them (symbol order). Decoding ends with every state back at RANS_L and
 *   every word consumed; anything else is a corrupt stream.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define RANS_L (1u << 16)
#define MAX_LANES 256

void pz_gather(const uint8_t *src, size_t n, size_t stride, uint8_t *dst) {
    if (stride == 1) { memcpy(dst, src, n); return; }
    for (size_t i = 0; i < n; i++) dst[i] = src[i * stride];
}

void pz_scatter(const uint8_t *src, size_t n, uint8_t *dst, size_t stride) {
    if (stride == 1) { memcpy(dst, src, n); return; }
    for (size_t i = 0; i < n; i++) dst[i * stride] = src[i];
}

void pz_fill(uint8_t value, size_t n, uint8_t *dst, size_t stride) {
    if (stride == 1) { memset(dst, value, n); return; }
    for (size_t i = 0; i < n; i++) dst[i * stride] = value;
}

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

/* freq: 256 normalised frequencies summing to 1 << scale_bits. Returns bytes written, or 0 when
 * dst_cap is too small (the caller then stores the plane another way). */
size_t pz_rans_encode(const uint8_t *src, size_t n, size_t stride, const uint32_t *freq,
                      uint32_t scale_bits, uint32_t lanes, uint8_t *dst, size_t dst_cap) {
    uint32_t cum[256], state[MAX_LANES];
    uint64_t x_max[256];
    if (lanes == 0 || lanes > MAX_LANES || scale_bits > 16 || dst_cap < 4 * (size_t)lanes) return 0;
    uint32_t acc = 0;
    for (int s = 0; s < 256; s++) {
        cum[s] = acc;
        acc += freq[s];
        x_max[s] = ((uint64_t)(RANS_L >> scale_bits) << 16) * freq[s];
    }
    for (uint32_t j = 0; j < lanes; j++) state[j] = RANS_L;
    /* words are written backwards from the end of dst, then moved behind the states */
    uint16_t *words_end = (uint16_t *)(dst + (dst_cap & ~(size_t)1));
    uint16_t *w = words_end;
    uint16_t *w_min = (uint16_t *)(dst + 4 * (size_t)lanes);
    for (size_t i = n; i-- > 0;) {
        uint32_t j = (uint32_t)(i % lanes);
        uint32_t s = src[i * stride];
        uint32_t x = state[j];
        uint32_t f = freq[s];
        if (f == 0) return 0;
        if ((uint64_t)x >= x_max[s]) {
            if (w <= w_min) return 0;
            *--w = (uint16_t)(x & 0xffff);
            x >>= 16;
        }
        state[j] = ((x / f) << scale_bits) + (x % f) + cum[s];
    }
    size_t n_words = (size_t)(words_end - w);
    for (uint32_t j = 0; j < lanes; j++) memcpy(dst + 4 * (size_t)j, &state[j], 4);
    memmove(dst + 4 * (size_t)lanes, w, n_words * 2);
    return 4 * (size_t)lanes + n_words * 2;
}

/* Returns 0 on success, -1 on a corrupt or truncated stream. */
int pz_rans_decode(const uint8_t *src, size_t src_len, const uint32_t *freq, uint32_t scale_bits,
                   uint32_t lanes, uint8_t *dst, size_t n, size_t stride) {
    uint32_t cum[256], state[MAX_LANES];
    uint8_t sym[1u << 16];
    if (lanes == 0 || lanes > MAX_LANES || scale_bits > 16) return -1;
    if (src_len < 4 * (size_t)lanes || (src_len - 4 * (size_t)lanes) % 2) return -1;
    uint32_t acc = 0;
    for (int s = 0; s < 256; s++) {
        cum[s] = acc;
        if (freq[s] > (1u << scale_bits) - acc) return -1;
        memset(sym + acc, s, freq[s]);
        acc += freq[s];
    }
    if (acc != (1u << scale_bits)) return -1;
    for (uint32_t j = 0; j < lanes; j++) {
        memcpy(&state[j], src + 4 * (size_t)j, 4);
        if (state[j] < RANS_L) return -1;
    }
    const uint8_t *p = src + 4 * (size_t)lanes;
    const uint8_t *end = src + src_len;
    const uint32_t mask = (1u << scale_bits) - 1;
    size_t i = 0;
    /* fast path: whole rounds of `lanes` symbols while a round cannot overrun the input */
    while (i + lanes <= n && (size_t)(end - p) >= 2 * (size_t)lanes) {
        uint8_t *o = dst + i * stride;
        for (uint32_t j = 0; j < lanes; j++) {
            uint32_t x = state[j];
            uint32_t slot = x & mask;
            uint32_t s = sym[slot];
            x = freq[s] * (x >> scale_bits) + slot - cum[s];
            uint32_t need = x < RANS_L;
            uint32_t word = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
            x = need ? (x << 16) | word : x;
            p += 2 * need;
            state[j] = x;
            o[(size_t)j * stride] = (uint8_t)s;
        }
        i += lanes;
    }
    for (; i < n; i++) {
        uint32_t j = (uint32_t)(i % lanes);
        uint32_t x = state[j];
        uint32_t slot = x & mask;
        uint32_t s = sym[slot];
        x = freq[s] * (x >> scale_bits) + slot - cum[s];
        if (x < RANS_L) {
            if (end - p < 2) return -1;
            x = (x << 16) | (uint32_t)p[0] | ((uint32_t)p[1] << 8);
            p += 2;
        }
        state[j] = x;
        dst[i * stride] = (uint8_t)s;
    }
    if (p != end) return -1;
    for (uint32_t j = 0; j < lanes; j++)
        if (state[j] != RANS_L) return -1;
    return 0;
}
