// C++ testbench of qta_gemm for Vitis HLS csim/cosim and for g++ (`lora-qta csim`, `make csim`).
//
// Random calls over every dataflow, every legal split, both transposes, INT32 and INT8 outputs
// (per-tensor / row / column scales, nearest-even and stochastic rounding), accumulate, edge
// tiles, degenerate shapes (M, N or K = 1), batched GEMMs and convolution geometries (kernel 1x1
// and 3x3, stride 1 and 2, padding, input dilation 2), plus calls the kernel must reject. Each
// result is compared with plain C++ loops written from the contract (hls/README.md), byte for
// byte over every output row and its beat padding, with status, sat_count and amax; the bytes
// the kernel must not touch are checked unchanged.
//
// Co-simulation: every m_axi pointer gets a buffer of exactly its `depth` (hardware.toml) beats,
// none is null. The four read pointers share one input image; the four write pointers get
// separate copies (co-simulation copies each argument's memory back on its own, so aliased
// outputs would overwrite each other); the result is merged from the copy of each row's port
// (row r of a block on port r mod 4). Returns 0 when every case passes.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "qta_gemm.h"

namespace {

const int BB = QTA_AXI_BYTES;
const int P = QTA_AXI_PORTS;
const size_t DEPTH = QTA_M_AXI_DEPTH;  // beats behind every m_axi pointer (its co-simulation depth)
const size_t MEM = DEPTH * BB;

uint32_t rng_state = 12345u;
uint32_t rnd() { return rng_state = qta_mix32(rng_state + 0x9E3779B9u); }
uint32_t rnd_in(uint32_t lo, uint32_t hi) { return lo + rnd() % (hi - lo + 1); }
uint32_t up(uint32_t x, uint32_t a) { return (x + a - 1) / a * a; }
uint32_t cdiv(uint32_t x, uint32_t a) { return (x + a - 1) / a; }

struct Case {
    uint32_t m, n, k, tm, tn, tk, batch;
    bool ta, tb, os, out8, accum, stoch, conv;
    int split;
    uint32_t smode, shift;
    int32_t mult;
    uint32_t seed;
    // conv geometry
    uint32_t H, W, Ho, Wo, cin, kh, kw, stride, pad, dil;
    bool expect_bad;
};

// Array geometry of a split (hls/README.md section 1): sub-array and logical sides.
void sides(int s, uint32_t &sr, uint32_t &sc, uint32_t &lr, uint32_t &lc) {
    if (s >= 0) {
        sr = QTA_ROWS; sc = QTA_COLS >> s; lr = QTA_ROWS << s; lc = sc;
    } else {
        sr = QTA_ROWS >> -s; sc = QTA_COLS; lr = sr; lc = QTA_COLS << -s;
    }
}

// The capacity rule of the feeder banks and accumulators, restated from the README.
bool fits(const Case &cs) {
    uint32_t sr, sc, lr, lc;
    sides(cs.split, sr, sc, lr, lc);
    const uint32_t mt = cs.tm < cs.m ? cs.tm : cs.m, nt = cs.tn < cs.n ? cs.tn : cs.n;
    const uint32_t kt = cs.tk < cs.k ? cs.tk : cs.k;
    const int s = cs.split;
    const uint32_t wa = s >= 0 ? QTA_ROWS : sr, wb = s <= 0 ? QTA_COLS : sc;
    const uint32_t ea = s > 0 ? 1u << s : 1, eb = s < 0 ? 1u << -s : 1;
    bool ok = true;
    if (cs.os) {
        const uint32_t nfa = cdiv(cdiv(mt, wa), ea);
        ok = ok && nfa * kt <= QTA_A_DEPTH && (s <= 0 || nfa * kt <= QTA_A_SIDE_DEPTH);
        const uint32_t acc = cdiv(mt, lr) * cdiv(nt, lc) * sr;
        ok = ok && acc <= QTA_ACC_DEPTH && (s >= 0 || acc <= QTA_ACC_SIDE_DEPTH);
    } else {
        ok = ok && cdiv(kt, sr) * mt <= QTA_A_DEPTH;
        const uint32_t acc = cdiv(nt, lc) * mt;
        ok = ok && acc <= QTA_ACC_DEPTH && (s >= 0 || acc <= QTA_ACC_SIDE_DEPTH);
    }
    const uint32_t nfb = cdiv(cdiv(nt, wb), eb);
    ok = ok && nfb * kt <= QTA_B_DEPTH && (s >= 0 || nfb * kt <= QTA_B_SIDE_DEPTH);
    return ok;
}

// A tile size for a dimension: a multiple of the beat up to max, or the whole dimension.
uint32_t pick_tile(uint32_t dim, uint32_t tmax) {
    if (rnd() % 4 == 0 && dim <= tmax) {  // one block, maybe larger than the dimension
        const uint32_t t = dim + (rnd() % 2) * BB;
        return t <= tmax ? t : dim;
    }
    uint32_t t = BB * rnd_in(1, (tmax / BB) < 8 ? tmax / BB : 8);
    return t;
}

uint32_t mix(uint32_t x) { return qta_mix32(x); }

long long round_shift(long long p, uint32_t sh, bool stoch, uint32_t bits) {
    if (sh == 0) return p;
    const long long d = 1LL << sh;
    long long fl = p >= 0 ? p / d : -((-p + d - 1) / d);  // floor
    if (stoch) {
        unsigned long long u = sh <= 32 ? (bits >> (32 - sh)) : ((unsigned long long)bits << (sh - 32));
        long long t = p + (long long)u;
        return t >= 0 ? t / d : -((-t + d - 1) / d);
    }
    const long long rem = p - fl * d;
    if (2 * rem > d || (2 * rem == d && (fl & 1))) fl++;
    return fl;
}

struct Layout {
    uint64_t a, b, c, sc;  // byte offsets
    uint32_t lda, ldb, ldc, sa, sb, scs;
    uint64_t end;
};

bool run_case(const Case &cs, int id) {
    const uint32_t eb = cs.out8 ? 1 : 4;
    // operand layout in the memory image (aligned offsets, padded leading dimensions)
    Layout ly;
    uint32_t a_rows, a_cols;
    if (cs.conv) {
        a_cols = up(cs.cin + BB * (rnd() % 2), BB);  // pixel stride (bytes)
        const uint32_t imgs = cdiv(cs.m, cs.Ho * cs.Wo);
        a_rows = imgs * cs.H * cs.W;
        ly.lda = a_cols;
    } else {
        a_rows = cs.ta ? cs.k : cs.m;
        a_cols = cs.ta ? cs.m : cs.k;
        ly.lda = up(a_cols, BB) + BB * (rnd() % 2);
    }
    const uint32_t b_rows = cs.tb ? cs.n : cs.k, b_cols = cs.tb ? cs.k : cs.n;
    ly.ldb = up(b_cols, BB) + BB * (rnd() % 2);
    ly.ldc = up(cs.n * eb, BB) / eb + (BB / eb) * (rnd() % 2);
    const uint64_t a_item = (uint64_t)a_rows * ly.lda, b_item = (uint64_t)b_rows * ly.ldb;
    const uint64_t c_item = (uint64_t)cs.m * ly.ldc * eb;
    ly.sa = (uint32_t)up(a_item, BB) + BB * (rnd() % 2);
    ly.sb = cs.batch > 1 && rnd() % 3 == 0 ? 0 : (uint32_t)up(b_item, BB);  // 0: shared B
    ly.scs = (uint32_t)up(c_item, BB) + BB;
    ly.a = BB * rnd_in(0, 4);
    ly.b = up(ly.a + (uint64_t)ly.sa * cs.batch, BB) + BB;
    ly.c = up(ly.b + (uint64_t)(ly.sb ? ly.sb : up(b_item, BB)) * cs.batch, BB) + BB;
    ly.sc = up(ly.c + (uint64_t)ly.scs * cs.batch, BB) + BB;
    const uint32_t nscale = cs.smode == 1 ? cs.m : cs.n;
    ly.end = ly.sc + up(nscale * 8, BB) + BB;
    if (ly.end > MEM) {
        std::printf("case %d does not fit the testbench memory\n", id);
        return false;
    }
    // The scale FIFO scl: C-simulation streams are unbounded, so check its occupancy explicitly.
    // fetch<0> writes a block's (mult, shift) beats before the block's operands and the store reads
    // them only after the array released the block, so up to two blocks' vectors wait in scl: more
    // than QTA_SCL_DEPTH beats deadlocks (one block) or stalls fetch (two) in hardware (review 2 B1).
    if (cs.out8 && cs.smode) {
        const uint32_t per_block = cs.smode == 1 ? (cs.tm < cs.m ? cs.tm : cs.m) : (cs.tn < cs.n ? cs.tn : cs.n);
        const uint32_t beats = (per_block * 8 + BB - 1) / BB;
        if (2 * beats > (uint32_t)QTA_SCL_DEPTH) {
            std::printf("FAIL case %d: two blocks' scale vectors (%u beats) exceed the scl FIFO depth %d\n", id,
                        2 * beats, QTA_SCL_DEPTH);
            return false;
        }
    }
    std::vector<qta_beat_t> in(DEPTH);
    uint8_t *mem = reinterpret_cast<uint8_t *>(in.data());
    for (size_t i = 0; i < MEM; i++) mem[i] = (uint8_t)rnd();
    // per-row/column scales: multipliers up to 5000 with shifts that map most sums into INT8
    // (a few saturate, a few have shift 0 or a shift above 62, which the kernel caps at 62)
    for (uint32_t i = 0; i < nscale; i++) {
        int32_t mu = (int32_t)(rnd() % 6000) - 1000;
        uint32_t sh = cs.shift + rnd() % 4;
        if (rnd() % 16 == 0) sh = rnd() % 2 ? 0 : 60 + rnd() % 200;
        std::memcpy(mem + ly.sc + 8 * i, &mu, 4);
        std::memcpy(mem + ly.sc + 8 * i + 4, &sh, 4);
    }
    if (cs.out8 && cs.accum) {  // old INT8 outputs small, so accumulation rarely saturates
        for (uint32_t it = 0; it < cs.batch; it++)
            for (uint32_t i = 0; i < cs.m; i++)
                for (uint32_t j = 0; j < cs.n; j++) mem[ly.c + it * ly.scs + (uint64_t)i * ly.ldc + j] &= 0x1F;
    }
    std::vector<std::vector<qta_beat_t> > out(P, in);

    const uint32_t flags = (cs.ta << QTA_FLAG_TRANS_A) | (cs.tb << QTA_FLAG_TRANS_B) | (cs.os << QTA_FLAG_DATAFLOW) |
                           ((uint32_t)(cs.split & 0xF) << QTA_FLAG_SPLIT_LSB) | (cs.out8 << QTA_FLAG_OUT_INT8) |
                           (cs.accum << QTA_FLAG_ACCUMULATE) | (cs.smode << QTA_FLAG_SCALE_MODE_LSB) |
                           (cs.stoch << QTA_FLAG_STOCHASTIC) | (cs.conv << QTA_FLAG_CONV);
    const uint32_t conv_in = cs.H | (cs.W << 16), conv_out = cs.Ho | (cs.Wo << 16);
    const uint32_t conv_win = cs.kh | (cs.kw << 8) | (cs.stride << 16) | (cs.pad << 24);
    uint32_t status = 0xFFFFFFFFu, sat_count = 0xFFFFFFFFu, amax = 0xFFFFFFFFu;
    uint64_t cyc_model = 0, cyc_meas = 0xFFFFFFFFu;
    qta_gemm(in.data(), in.data(), in.data(), in.data(), out[0].data(), out[1].data(), out[2].data(),
             out[3].data(), ly.a, ly.b, ly.c, ly.sc, cs.m, cs.n, cs.k, ly.lda, ly.ldb, ly.ldc, cs.tm, cs.tn, cs.tk,
             flags, cs.mult, cs.shift, cs.seed, cs.batch, ly.sa, ly.sb, ly.scs, conv_in, conv_out, cs.conv ? cs.cin : 0,
             conv_win, cs.dil, &status, &sat_count, &amax, &cyc_model, &cyc_meas);
    const bool bad = status & (1u << QTA_STATUS_BAD_ARGS);
    if (cs.expect_bad) {
        if (!bad) std::printf("FAIL case %d: the kernel accepted a call it must reject\n", id);
        for (int p = 0; p < P; p++)
            if (std::memcmp(out[p].data(), in.data(), MEM) != 0) {
                std::printf("FAIL case %d: a rejected call wrote memory\n", id);
                return false;
            }
        return bad && cyc_model == QTA_CALL_OVERHEAD;
    }
    if (bad) {
        std::printf("FAIL case %d: kernel rejected a valid call (m=%u n=%u k=%u tiles %u/%u/%u split %d os %d)\n", id,
                    cs.m, cs.n, cs.k, cs.tm, cs.tn, cs.tk, cs.split, cs.os);
        return false;
    }
    // cycles_measured: 0 in C-simulation (processes run one after another); in co-simulation the
    // counter process counts real clock cycles. Rule (review 2 B3): under QTA_COSIM a 0 is
    // accepted, because cosim first runs this testbench against the C function to capture the
    // inputs (UG1399 "C/RTL verification") and that pass returns 0; a positive count must not be
    // below a quarter of the model (the model ignores stalls, so measured >= model is expected;
    // below a quarter the counter or the model is broken). That the RTL pass counted at all (some
    // "cycles_measured" line > 0 in the cosim log) is still to be read from that log by hand.
#ifdef QTA_COSIM
    std::printf("case %d: cycles_measured %llu, cycles_model %llu (ratio %.2f)%s\n", id, (unsigned long long)cyc_meas,
                (unsigned long long)cyc_model, cyc_model ? (double)cyc_meas / (double)cyc_model : 0.0,
                cyc_meas == 0 ? " capture pass" : "");
    if (cyc_meas != 0 && 4 * cyc_meas < cyc_model) {
        std::printf("FAIL case %d: cycles_measured %llu in co-simulation is below a quarter of the model %llu\n", id,
                    (unsigned long long)cyc_meas, (unsigned long long)cyc_model);
        return false;
    }
#else
    if (cyc_meas != 0) {
        std::printf("FAIL case %d: cycles_measured %llu in C-simulation (expected 0)\n", id,
                    (unsigned long long)cyc_meas);
        return false;
    }
#endif
    // merged result: every byte from the input image, output rows from their port's copy
    std::vector<uint8_t> res(mem, mem + MEM);
    const uint32_t row_bytes = up(cs.n * eb, BB);
    for (uint32_t it = 0; it < cs.batch; it++)
        for (uint32_t i = 0; i < cs.m; i++) {
            const uint64_t at = ly.c + (uint64_t)it * ly.scs + (uint64_t)i * ly.ldc * eb;
            const uint8_t *src = reinterpret_cast<const uint8_t *>(out[i % P].data());
            std::memcpy(&res[at], src + at, row_bytes);
        }
    // no port wrote outside its rows
    for (int p = 0; p < P; p++) {
        const uint8_t *o = reinterpret_cast<const uint8_t *>(out[p].data());
        std::vector<uint8_t> exp(mem, mem + MEM);
        for (uint32_t it = 0; it < cs.batch; it++)
            for (uint32_t i = p; i < cs.m; i += P) {
                const uint64_t at = ly.c + (uint64_t)it * ly.scs + (uint64_t)i * ly.ldc * eb;
                std::memcpy(&exp[at], o + at, row_bytes);
            }
        if (std::memcmp(exp.data(), o, MEM) != 0) {
            std::printf("FAIL case %d: port %d wrote outside its output rows\n", id, p);
            return false;
        }
    }
    // reference
    std::vector<uint8_t> want(mem, mem + MEM);
    bool sat = false;
    uint32_t nsat = 0, mx = 0;
    const uint32_t seed_hash = mix(cs.seed);
    for (uint32_t it = 0; it < cs.batch; it++) {
        const uint8_t *A = mem + ly.a + (uint64_t)it * ly.sa;
        const uint8_t *B = mem + ly.b + (uint64_t)it * ly.sb;
        for (uint32_t i = 0; i < cs.m; i++) {
            uint8_t *crow = &want[ly.c + (uint64_t)it * ly.scs + (uint64_t)i * ly.ldc * eb];
            for (uint32_t j = 0; j < cs.n; j++) {
                long long s = 0;
                for (uint32_t kk = 0; kk < cs.k; kk++) {
                    int av;
                    if (cs.conv) {
                        const uint32_t img = i / (cs.Ho * cs.Wo), ho = (i / cs.Wo) % cs.Ho, wo = i % cs.Wo;
                        const uint32_t ky = kk / (cs.kw * cs.cin), kx = (kk / cs.cin) % cs.kw, ci = kk % cs.cin;
                        const long hi = (long)ho * cs.stride - cs.pad + ky, wi = (long)wo * cs.stride - cs.pad + kx;
                        const long hmax = (long)(cs.H - 1) * cs.dil, wmax = (long)(cs.W - 1) * cs.dil;
                        if (hi < 0 || hi > hmax || wi < 0 || wi > wmax || hi % cs.dil || wi % cs.dil) {
                            av = 0;
                        } else {
                            const uint64_t pix = ((uint64_t)img * cs.H + hi / cs.dil) * cs.W + wi / cs.dil;
                            av = (int8_t)A[pix * ly.lda + ci];
                        }
                    } else {
                        av = (int8_t)(cs.ta ? A[(uint64_t)kk * ly.lda + i] : A[(uint64_t)i * ly.lda + kk]);
                    }
                    const int bv = (int8_t)(cs.tb ? B[(uint64_t)j * ly.ldb + kk] : B[(uint64_t)kk * ly.ldb + j]);
                    s += av * bv;
                }
                long long pre, o;
                if (!cs.out8) {
                    int32_t old;
                    std::memcpy(&old, crow + 4 * j, 4);
                    pre = s + (cs.accum ? old : 0);
                    o = pre < INT32_MIN ? INT32_MIN : (pre > INT32_MAX ? INT32_MAX : pre);
                    const int32_t ov = (int32_t)o;
                    std::memcpy(crow + 4 * j, &ov, 4);
                } else {
                    long long mu = cs.mult;
                    uint32_t sh = cs.shift;
                    if (cs.smode) {
                        const uint32_t x = cs.smode == 1 ? i : j;
                        int32_t mv;
                        uint32_t sv;
                        std::memcpy(&mv, mem + ly.sc + 8 * x, 4);
                        std::memcpy(&sv, mem + ly.sc + 8 * x + 4, 4);
                        mu = mv;
                        sh = sv & 0xFF;
                        sh = sh > 62 ? 62 : sh;
                    }
                    const uint32_t bits = mix(seed_hash + (((it * cs.m + i) * cs.n + j)));
                    pre = round_shift(s * mu, sh, cs.stoch, bits);
                    if (cs.accum) pre += (int8_t)crow[j];
                    o = pre < -128 ? -128 : (pre > 127 ? 127 : pre);
                    crow[j] = (uint8_t)(int8_t)o;
                }
                if (o != pre) {
                    sat = true;
                    nsat++;
                }
                const unsigned long long ab = pre < 0 ? (unsigned long long)(-(pre + 1)) + 1 : (unsigned long long)pre;
                const uint32_t capped = ab > 0x7FFFFFFFull ? 0x7FFFFFFFu : (uint32_t)ab;
                mx = capped > mx ? capped : mx;
            }
            for (uint32_t x = cs.n * eb; x < row_bytes; x++) crow[x] = 0;  // beat padding
        }
    }
    const uint32_t want_status = sat ? 1u << QTA_STATUS_SATURATED : 0u;
    bool ok = std::memcmp(res.data(), want.data(), MEM) == 0 && status == want_status && nsat == sat_count &&
              mx == amax && cyc_model > QTA_CALL_OVERHEAD;
    if (!ok) {
        size_t first = 0;
        while (first < MEM && res[first] == want[first]) first++;
        std::printf("FAIL case %d m=%u n=%u k=%u batch=%u tiles %u/%u/%u os=%d split=%d ta=%d tb=%d out8=%d acc=%d "
                    "smode=%u stoch=%d conv=%d: first byte diff at %zu (c at %llu) status %u/%u sat %u/%u amax %u/%u\n",
                    id, cs.m, cs.n, cs.k, cs.batch, cs.tm, cs.tn, cs.tk, cs.os, cs.split, cs.ta, cs.tb, cs.out8,
                    cs.accum, cs.smode, cs.stoch, cs.conv, first, (unsigned long long)ly.c, status, want_status,
                    sat_count, nsat, amax, mx);
    }
    if (ok && std::getenv("QTA_TB_VERBOSE"))
        std::printf("case %d m=%u n=%u k=%u batch=%u tiles %u/%u/%u os=%d split=%d ta=%d tb=%d out8=%d acc=%d smode=%u "
                    "stoch=%d conv=%d sat=%u amax=%u cycles_model=%llu\n",
                    id, cs.m, cs.n, cs.k, cs.batch, cs.tm, cs.tn, cs.tk, cs.os, cs.split, cs.ta, cs.tb, cs.out8,
                    cs.accum, cs.smode, cs.stoch, cs.conv, sat_count, amax, (unsigned long long)cyc_model);
    return ok;
}

Case random_case(int split, bool os) {
    Case cs;
    std::memset(&cs, 0, sizeof(cs));
    cs.split = split;
    cs.os = os;
    cs.batch = rnd() % 5 == 0 ? rnd_in(2, 3) : 1;
    cs.out8 = rnd() & 1;
    cs.accum = rnd() % 3 == 0;
    cs.smode = cs.out8 ? rnd() % 3 : 0;
    cs.stoch = cs.out8 && (rnd() & 1);
    cs.mult = 1 + (int32_t)(rnd() % 5000);
    cs.seed = rnd();
    cs.dil = 1;
    cs.conv = rnd() % 6 == 0;
    const uint32_t shape = rnd() % 8;  // degenerate shapes now and then
    if (cs.conv) {
        cs.cin = BB * rnd_in(1, 3);
        cs.kh = cs.kw = rnd() % 2 ? 3 : 1;
        cs.stride = rnd_in(1, 2);
        cs.pad = cs.kh == 3 ? rnd_in(0, 1) : 0;
        cs.dil = (cs.stride == 1 && rnd() % 3 == 0) ? 2 : 1;
        cs.H = rnd_in(3, 7);
        cs.W = rnd_in(3, 7);
        const uint32_t hd = (cs.H - 1) * cs.dil + 1, wd = (cs.W - 1) * cs.dil + 1;
        cs.Ho = (hd + 2 * cs.pad - cs.kh) / cs.stride + 1 + (cs.dil == 2 ? 1 : 0);
        cs.Wo = (wd + 2 * cs.pad - cs.kw) / cs.stride + 1 + (cs.dil == 2 ? 1 : 0);
        const uint32_t imgs = rnd_in(1, 2);
        cs.m = imgs * cs.Ho * cs.Wo - (rnd() % 2 ? rnd() % cs.Wo : 0);
        cs.k = cs.kh * cs.kw * cs.cin;
        cs.n = shape == 0 ? 1 : rnd_in(1, 40);
        cs.ta = false;
    } else {
        cs.m = shape == 0 ? 1 : rnd_in(1, 70);
        cs.n = shape == 1 ? 1 : rnd_in(1, 70);
        cs.k = shape == 2 ? 1 : rnd_in(1, 90);
        cs.ta = rnd() & 1;
    }
    cs.tb = rnd() & 1;
    // shift so that |sum * mult| / 2^shift is mostly below 128: sum ~ 128 * 128 * sqrt(k)
    cs.shift = 0;
    if (cs.out8) {
        uint64_t span = (uint64_t)cs.mult * 16384 * 4;
        for (uint32_t kk = 1; kk * kk < cs.k; kk++) span = span * 11 / 10;
        while ((span >> cs.shift) > 64) cs.shift++;
        cs.shift += rnd() % 3;
    }
    for (int tries = 0; tries < 200; tries++) {
        cs.tm = pick_tile(cs.m, QTA_TILE_M_MAX);
        cs.tn = pick_tile(cs.n, QTA_TILE_N_MAX);
        cs.tk = pick_tile(cs.k, QTA_TILE_K_MAX);
        if (cs.conv && cs.tk < cs.k && cs.tk % BB) continue;
        if (fits(cs)) return cs;
    }
    cs.tm = cs.tn = cs.tk = BB;  // smallest tiles always fit
    return cs;
}

// A random OS case reduced to one plain GEMM (no conv, batch 1, no transposes, no split) that the
// kernel must accept: the base of the large-tile and largest-scale-vector cases below.
Case plain_os_case() {
    Case c = random_case(0, true);
    c.conv = false;
    c.batch = 1;
    c.ta = c.tb = false;
    c.split = 0;
    c.os = true;
    c.expect_bad = false;
    return c;
}

}  // namespace

int main(int argc, char **argv) {
    int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
    int failures = 0, cases = 0;
    for (int round = 0; round < rounds; round++) {
        for (int split = QTA_SPLIT_MIN; split <= QTA_SPLIT_MAX; split++) {
            for (int os = 0; os <= 1; os++) {
                if (!os && split > 0) continue;
                Case cs = random_case(split, os);
                cases++;
                if (!run_case(cs, cases)) failures++;
            }
        }
    }
    // Large-tile accumulate calls: several blocks of the largest tiles, INT32 and INT8, so that the
    // operand, old-C and output FIFOs fill and back-pressure in co-simulation (review B5).
    for (int out8 = 0; out8 <= 1; out8++) {
        Case big = plain_os_case();
        big.tm = QTA_TILE_M_MAX < 64 ? QTA_TILE_M_MAX : 64;
        big.tn = QTA_TILE_N_MAX < 256 ? QTA_TILE_N_MAX : 256;
        big.tk = 2 * BB;
        big.m = 2 * big.tm;
        big.n = big.tn;
        big.k = 4 * BB;
        big.accum = true;
        big.out8 = out8;
        big.smode = 0;
        cases++;
        if (!run_case(big, cases)) failures++;
    }
    // Per-column INT8 scales at the largest tile_n over two blocks: the scale vector is the longest
    // a block carries (tile_n_max x 8 bytes), so scl must hold it while the array runs (review 2 B1).
    for (int smode = 1; smode <= 2; smode++) {
        Case sc = plain_os_case();
        sc.tm = smode == 1 ? QTA_TILE_M_MAX : (QTA_TILE_M_MAX < 32 ? QTA_TILE_M_MAX : 32);
        sc.tn = smode == 2 ? QTA_TILE_N_MAX : (QTA_TILE_N_MAX < 32 ? QTA_TILE_N_MAX : 32);
        sc.tk = 2 * BB;
        sc.m = smode == 1 ? sc.tm : 2 * sc.tm;
        sc.n = smode == 2 ? sc.tn : 2 * sc.tn;
        sc.k = 2 * BB;
        sc.accum = false;
        sc.out8 = true;
        sc.smode = smode;
        cases++;
        if (!run_case(sc, cases)) failures++;
    }
    // calls the kernel must reject: misaligned offset, over capacity, WS with a side-by-side split
    Case bad = random_case(0, true);
    bad.m = 40;
    bad.n = 8;
    bad.k = 8;
    bad.tm = bad.tn = bad.tk = BB;
    bad.batch = 1;
    bad.conv = false;
    bad.expect_bad = true;
    Case b1 = bad;
    b1.tk = BB + 1;  // not a multiple of the beat and smaller than K... K = 8 < tk: legal; use K > tk
    b1.k = 40;
    cases++;
    if (!run_case(b1, cases)) failures++;
    Case b2 = bad;
    b2.os = false;
    b2.split = 1;
    cases++;
    if (!run_case(b2, cases)) failures++;
    Case b3 = bad;
    b3.split = QTA_SPLIT_MIN;
    b3.m = QTA_TILE_M_MAX;
    b3.tm = QTA_TILE_M_MAX;
    b3.n = QTA_TILE_N_MAX;
    b3.tn = QTA_TILE_N_MAX;  // stacked accumulators cannot hold a full tile
    cases++;
    if (!run_case(b3, cases)) failures++;
    std::printf("%d passed, %d failed\n", cases - failures, failures);
    return failures ? 1 : 0;
}
