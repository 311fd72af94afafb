// lora-qta kernel v2 for Vitis HLS (architecture, cycle model and resources: hls/README.md).
//
// One DATAFLOW region of single-call-site processes joined by hls::stream FIFOs and two-slot
// ping-pong blocks (hls::stream_of_blocks, qta_blocks.h):
//
//   descriptors -> fetch<0..3> -> load -> array -> store -> write<0..3>      model, counter
//
//   descriptors  validates the call, then emits one descriptor per step (block x K chunk) and
//                per block, by counters (the few divisions run once per call);
//   fetch<p>     reads the stored rows r = p (mod 4) of every operand tile on bundle gmem<p>
//                in whole-beat bursts (A, B; C for accumulate; scales on port 0);
//   load         turns beats into feeder-bank words (natural layouts directly, transposed
//                layouts through a beat transposer), one word per cycle, into the ping-pong
//                operand banks of the step;
//   array        the systolic PE array of hls/README.md section 1 (WS or OS, sub-array split
//                by 2:1 selects at the boundaries), draining into the block's accumulators;
//   store        requantizing epilogue (INT32, or INT8 with per-tensor/row/column scales,
//                nearest-even or stochastic rounding), sat_count, amax, packing into words;
//   write<p>     writes the output rows r = p (mod 4) on bundle gmem<p> in whole-beat bursts;
//   model        combines the trip counts the processes report into cycles_model;
//   counter      counts clock cycles until every writer is done: cycles_measured (0 in
//                C-simulation, where processes run one after another).
#include "qta_gemm.h"

#include "qta_blocks.h"

#define QTA_PRAGMA_SUB(x) _Pragma(#x)
#define QTA_PRAGMA(x) QTA_PRAGMA_SUB(x)

namespace {

// ------------------------------------------------------------------------ constants, types

template <int X>
struct Log2 {
    enum { value = 1 + Log2<X / 2>::value };
};
template <>
struct Log2<1> {
    enum { value = 0 };
};

constexpr int R = QTA_ROWS;          // physical rows
constexpr int C = QTA_COLS;          // physical columns
constexpr int MS = QTA_MIN_SUB;      // smallest sub-array side: boundaries every MS rows/cols
constexpr int P = QTA_AXI_PORTS;     // m_axi bundles; tile rows are striped over them
constexpr int BB = QTA_AXI_BYTES;    // bytes per beat
constexpr int ER = QTA_EPI_ROWS;     // output rows per epilogue cycle (MS columns each)
constexpr int NBA = C / MS;          // A feeder boundaries (column boundaries)
constexpr int NBB = R / MS;          // B feeder boundaries (row boundaries) = tap rows
constexpr int NAX = NBA / 2;         // A side banks 1..NBA-1, paired two per memory
constexpr int NBX = NBB / 2;         // B side banks 1..NBB-1, paired two per memory
constexpr int CG = C / MS;           // column groups of MS columns (the epilogue's lanes)
constexpr int PG = MS / 2;           // column pairs (one accumulator word) per group
constexpr int SW = 4 * MS;           // store word: MS INT32 or 4*MS INT8 outputs
constexpr int SWB = SW / BB;         // beats per store word
constexpr int LGR = Log2<R>::value, LGC = Log2<C>::value, LGMS = Log2<MS>::value;
constexpr int LGP = Log2<P>::value, LGBB = Log2<BB>::value, LGER = Log2<ER>::value;
constexpr int SMAXC = Log2<NBA>::value;  // largest side-by-side exponent
constexpr int SMAXR = Log2<NBB>::value;  // largest stacked exponent
constexpr int TROWS = (R > C ? R : C) / P;  // row slots per port in the loader's buffers
constexpr int SEG_MAX = QTA_TILE_K_MAX > QTA_TILE_M_MAX
                            ? (QTA_TILE_K_MAX > QTA_TILE_N_MAX ? QTA_TILE_K_MAX : QTA_TILE_N_MAX)
                            : (QTA_TILE_M_MAX > QTA_TILE_N_MAX ? QTA_TILE_M_MAX : QTA_TILE_N_MAX);
constexpr int TBEATS = SEG_MAX / BB;  // beats per row slot
constexpr int SCALE_MAX = QTA_TILE_M_MAX > QTA_TILE_N_MAX ? QTA_TILE_M_MAX : QTA_TILE_N_MAX;

static_assert(P == 4, "four m_axi bundles rd0..3 / wr0..3");
static_assert(MS % P == 0 && MS >= 4 && (MS & (MS - 1)) == 0, "min_subarray: power of two, multiple of axi_ports");
static_assert(R >= 2 * MS && C >= 2 * MS, "at least two sub-arrays per side");
static_assert((R > C ? R : C) <= 2 * BB, "a feeder word spans at most two beats");
static_assert(SW % BB == 0, "a store word holds whole beats");
static_assert(2 * TROWS <= BB, "the transposer prefetches a column of its row slots while emitting the previous one, two bytes per cycle");
static_assert(ER == 1 || ER == 2, "epilogue rows");

// Feeder words, unpacked beats, store words and accumulator words. Structs of byte arrays,
// aggregated by HLS into one wide memory word.
struct AWord {
    int8_t l[R];  // lane i feeds physical row i
};
struct BWord {
    int8_t l[C];  // lane j feeds physical column j
};
struct Beat {
    uint8_t b[BB];
};
struct SWord {
    uint8_t b[SW];
};
struct AccW {
    int32_t v[2];  // two adjacent columns
};

// Ping-pong blocks: the feeder banks of a step and the accumulators of a block.
typedef AWord A0Block[QTA_A_DEPTH];                         // A bank of sub-array 0
typedef AWord AXBlock[NAX][2 * QTA_A_SIDE_DEPTH];           // A banks 1..NBA-1, two per memory
typedef BWord B0Block[QTA_B_DEPTH];                         // B bank of sub-array 0
typedef BWord BXBlock[NBX][2 * QTA_B_SIDE_DEPTH];           // B banks 1..NBB-1, two per memory
typedef AccW AccPBlock[CG][PG][QTA_ACC_DEPTH];              // bottom tap row
typedef AccW AccXBlock[NBB - 1][CG][PG][QTA_ACC_SIDE_DEPTH];  // tap rows 0..NBB-2

// The call, validated and decoded once by the descriptor process and sent to every process.
struct Hdr {
    bool ok;
    uint32_t nblocks, nkc;  // blocks of the call, K chunks (steps) per block
    uint64_t scales;
    uint32_t m, n, k, lda, ldb, ldc, tm, tn, tk;
    bool ta, tb, os, out8, accum, stoch, conv;
    int32_t split;
    uint32_t smode, shift, seed_hash;
    int32_t mult;
    uint32_t eb;                          // output element bytes (1 or 4)
    uint32_t lgsr, lgsc, lglr, lglc;      // log2 of sub-array rows/cols, logical rows/cols
    uint32_t H, W, Ho, Wo, cin, kh, kw, cstride, pad, dsh;  // conv (dsh: log2 of the dilation)
    uint32_t dimg[P + 1], dho[P + 1], dwo[P + 1];  // p rows as (images, output rows, output cols)
};

// One step (block x K chunk); the store and the writers get the block's last step.
struct Step {
    uint32_t m0, n0, k0, mt, nt, kt;
    bool first, last;              // first / last K chunk of its block
    uint64_t a_off, b_off, c_off;  // operand offsets of the batch item
    uint32_t hash0;                // (item * m + m0) * n + n0, modulo 2^32
    uint32_t cv_img, cv_ho, cv_wo;  // conv: pixel of row m0
    uint32_t cv_ky, cv_kx, cv_ci;   // conv: tap and channel of k0
};

inline uint32_t umin(uint32_t a, uint32_t b) { return a < b ? a : b; }
inline uint32_t umax(uint32_t a, uint32_t b) { return a > b ? a : b; }
inline uint32_t ceil_shift(uint32_t a, uint32_t lg) { return (a + (1u << lg) - 1) >> lg; }

// (hi, mid, lo) += (dhi, dmid, dlo) in the radix (.., rmid, rlo), with dmid < rmid, dlo < rlo.
inline void mixed_add(uint32_t &hi, uint32_t &mid, uint32_t &lo, uint32_t dhi, uint32_t dmid, uint32_t dlo,
                      uint32_t rmid, uint32_t rlo) {
#pragma HLS INLINE
    lo += dlo;
    uint32_t c1 = 0;
    if (lo >= rlo) {
        lo -= rlo;
        c1 = 1;
    }
    mid += dmid + c1;
    uint32_t c2 = 0;
    if (mid >= rmid) {
        mid -= rmid;
        c2 = 1;
    }
    hi += dhi + c2;
}

inline Beat unpack(const qta_beat_t &x) {
#pragma HLS INLINE
    Beat b;
    for (int i = 0; i < BB; i++) {
#pragma HLS UNROLL
        b.b[i] = (uint8_t)x.range(8 * i + 7, 8 * i);
    }
    return b;
}

// ----------------------------------------------------------------------------- descriptors

inline bool tile_ok(uint32_t t, uint32_t dim, uint32_t tmax) {
    return t >= 1 && t <= tmax && ((t & (BB - 1)) == 0 || t >= dim);
}

// Decodes and validates the arguments. The capacity checks use the largest step of the call.
Hdr decode(uint64_t a, uint64_t b, uint64_t c, uint64_t scales, uint32_t m, uint32_t n, uint32_t k,
           uint32_t lda, uint32_t ldb, uint32_t ldc, uint32_t tile_m, uint32_t tile_n, uint32_t tile_k,
           uint32_t flags, int32_t mult, uint32_t shift, uint32_t seed, uint32_t batch, uint32_t stride_a,
           uint32_t stride_b, uint32_t stride_c, uint32_t conv_in, uint32_t conv_out, uint32_t conv_cin,
           uint32_t conv_win, uint32_t conv_dil) {
    Hdr h;
    h.scales = scales;
    h.m = m; h.n = n; h.k = k; h.lda = lda; h.ldb = ldb; h.ldc = ldc;
    h.tm = tile_m; h.tn = tile_n; h.tk = tile_k;
    h.ta = (flags >> QTA_FLAG_TRANS_A) & 1;
    h.tb = (flags >> QTA_FLAG_TRANS_B) & 1;
    h.os = (flags >> QTA_FLAG_DATAFLOW) & 1;
    uint32_t s4 = (flags >> QTA_FLAG_SPLIT_LSB) & 0xF;
    h.split = s4 >= 8 ? (int32_t)s4 - 16 : (int32_t)s4;
    h.out8 = (flags >> QTA_FLAG_OUT_INT8) & 1;
    h.accum = (flags >> QTA_FLAG_ACCUMULATE) & 1;
    h.smode = (flags >> QTA_FLAG_SCALE_MODE_LSB) & 3;
    h.stoch = (flags >> QTA_FLAG_STOCHASTIC) & 1;
    h.conv = (flags >> QTA_FLAG_CONV) & 1;
    h.mult = mult;
    h.shift = shift;
    h.seed_hash = qta_mix32(seed);
    h.eb = h.out8 ? 1 : 4;
    h.H = conv_in & 0xFFFF; h.W = conv_in >> 16;
    h.Ho = conv_out & 0xFFFF; h.Wo = conv_out >> 16;
    h.cin = conv_cin;
    h.kh = conv_win & 0xFF; h.kw = (conv_win >> 8) & 0xFF;
    h.cstride = (conv_win >> 16) & 0xFF; h.pad = conv_win >> 24;
    h.dsh = conv_dil == 2 ? 1 : 0;
    int s = h.split;
    if (s >= 0) {
        h.lgsr = LGR; h.lgsc = LGC - s; h.lglr = LGR + s; h.lglc = LGC - s;
    } else {
        h.lgsr = LGR + s; h.lgsc = LGC; h.lglr = LGR + s; h.lglc = LGC - s;
    }
    h.nblocks = 0;
    h.nkc = 0;
    for (int p = 0; p <= P; p++) {
#pragma HLS UNROLL
        h.dimg[p] = 0; h.dho[p] = 0; h.dwo[p] = (uint32_t)p;
    }

    const uint32_t bm = BB - 1;
    bool ok = m >= 1 && m <= QTA_MAX_M && n >= 1 && n <= QTA_MAX_N && k >= 1 && k <= QTA_MAX_K && batch >= 1;
    ok = ok && tile_ok(tile_m, m, QTA_TILE_M_MAX) && tile_ok(tile_n, n, QTA_TILE_N_MAX) &&
         tile_ok(tile_k, k, QTA_TILE_K_MAX);
    ok = ok && s >= QTA_SPLIT_MIN && s <= QTA_SPLIT_MAX && (h.os || s <= 0);
    ok = ok && h.smode <= 2 && shift <= 62;
    ok = ok && (a & bm) == 0 && (b & bm) == 0 && (c & bm) == 0 && (lda & bm) == 0 && (ldb & bm) == 0 &&
         ((ldc * h.eb) & bm) == 0 && (stride_a & bm) == 0 && (stride_b & bm) == 0 && (stride_c & bm) == 0;
    ok = ok && (!(h.out8 && h.smode != 0) || (scales & bm) == 0);
    ok = ok && ldb >= (h.tb ? k : n) && ldc >= n;
    if (h.conv) {
        ok = ok && !h.ta && h.cin >= BB && (h.cin & bm) == 0 && lda >= h.cin && h.kh >= 1 && h.kw >= 1 &&
             h.cstride >= 1 && (conv_dil == 1 || conv_dil == 2) && h.H >= 1 && h.W >= 1 && h.Ho >= 1 &&
             h.Wo >= 1 && (uint64_t)h.kh * h.kw * h.cin == k;
    } else {
        ok = ok && lda >= (h.ta ? m : k);
    }
    // capacity of the feeder banks and accumulators for the largest step
    if (ok) {
        uint32_t mt = umin(tile_m, m), nt = umin(tile_n, n), kt = umin(tile_k, k);
        uint32_t es_a = s > 0 ? s : 0, es_b = s < 0 ? -s : 0;
        uint32_t lgw_a = s >= 0 ? LGR : h.lgsr, lgw_b = s <= 0 ? LGC : h.lgsc;
        if (h.os) {
            uint32_t nfa = ceil_shift(ceil_shift(mt, lgw_a), es_a);
            ok = ok && nfa * kt <= QTA_A_DEPTH && (es_a == 0 || nfa * kt <= QTA_A_SIDE_DEPTH);
            uint32_t nfr = ceil_shift(mt, h.lglr), nfc = ceil_shift(nt, h.lglc);
            uint32_t acc = (nfr * nfc) << h.lgsr;
            ok = ok && acc <= QTA_ACC_DEPTH && (s >= 0 || acc <= QTA_ACC_SIDE_DEPTH);
        } else {
            ok = ok && ceil_shift(kt, h.lgsr) * mt <= QTA_A_DEPTH;
            uint32_t acc = ceil_shift(nt, h.lglc) * mt;
            ok = ok && acc <= QTA_ACC_DEPTH && (s >= 0 || acc <= QTA_ACC_SIDE_DEPTH);
        }
        uint32_t nfb = ceil_shift(ceil_shift(nt, lgw_b), es_b);
        ok = ok && nfb * kt <= QTA_B_DEPTH && (es_b == 0 || nfb * kt <= QTA_B_SIDE_DEPTH);
    }
    h.ok = ok;
    if (ok) {
        // The only divisions of the kernel: block counts and the mixed-radix steps of the conv
        // counters, once per call.
        uint32_t nbm = (m + tile_m - 1) / tile_m, nbn = (n + tile_n - 1) / tile_n;
        h.nkc = (k + tile_k - 1) / tile_k;
        h.nblocks = batch * nbm * nbn;
        if (h.conv) {
            for (int p = 0; p <= P; p++) {
                uint32_t q = (uint32_t)p / h.Wo;
                h.dwo[p] = (uint32_t)p % h.Wo;
                h.dho[p] = q % h.Ho;
                h.dimg[p] = q / h.Ho;
            }
        }
    }
    return h;
}

void descriptors(uint64_t a, uint64_t b, uint64_t c, uint64_t scales, uint32_t m, uint32_t n, uint32_t k,
                 uint32_t lda, uint32_t ldb, uint32_t ldc, uint32_t tile_m, uint32_t tile_n, uint32_t tile_k,
                 uint32_t flags, int32_t mult, uint32_t shift, uint32_t seed, uint32_t batch,
                 uint32_t stride_a, uint32_t stride_b, uint32_t stride_c, uint32_t conv_in, uint32_t conv_out,
                 uint32_t conv_cin, uint32_t conv_win, uint32_t conv_dil, hls::stream<Hdr> h_fetch[P],
                 hls::stream<Hdr> &h_load, hls::stream<Hdr> &h_array, hls::stream<Hdr> &h_store,
                 hls::stream<Hdr> h_write[P], hls::stream<Hdr> &h_model, hls::stream<Step> s_fetch[P],
                 hls::stream<Step> &s_load, hls::stream<Step> &s_array, hls::stream<Step> &s_store,
                 hls::stream<Step> s_write[P]) {
    Hdr h = decode(a, b, c, scales, m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift, seed,
                   batch, stride_a, stride_b, stride_c, conv_in, conv_out, conv_cin, conv_win, conv_dil);
    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
        h_fetch[p].write(h);
        h_write[p].write(h);
    }
    h_load.write(h);
    h_array.write(h);
    h_store.write(h);
    h_model.write(h);

    // Mixed-radix steps of tile_m rows (images, output rows, columns) and tile_k inner indices
    // (tap rows, tap columns, channels); once per call.
    uint32_t tm_img = 0, tm_ho = 0, tm_wo = 0, tk_ky = 0, tk_kx = 0, tk_ci = 0;
    if (h.ok && h.conv) {
        uint32_t q = tile_m / h.Wo;
        tm_wo = tile_m % h.Wo; tm_ho = q % h.Ho; tm_img = q / h.Ho;
        uint32_t qk = tile_k / h.cin;
        tk_ci = tile_k % h.cin; tk_kx = qk % h.kw; tk_ky = qk / h.kw;
    }
    const uint32_t row_hash_step = tile_m * n, item_hash_step = m * n;

    uint32_t item = 0, m0 = 0, n0 = 0, kc = 0, k0 = 0;
    uint64_t a_off = a, b_off = b, c_off = c;
    uint32_t hash_item = 0, hash_row = 0;
    uint32_t cimg = 0, cho = 0, cwo = 0, cky = 0, ckx = 0, cci = 0;
    const uint32_t nsteps = h.nblocks * h.nkc;
steps:
    for (uint32_t t = 0; t < nsteps; t++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=4096
#pragma HLS PIPELINE II=1
        Step st;
        st.m0 = m0; st.n0 = n0; st.k0 = k0;
        st.mt = umin(tile_m, m - m0); st.nt = umin(tile_n, n - n0); st.kt = umin(tile_k, k - k0);
        st.first = kc == 0;
        st.last = kc == h.nkc - 1;
        st.a_off = a_off; st.b_off = b_off; st.c_off = c_off;
        st.hash0 = hash_row + n0;
        st.cv_img = cimg; st.cv_ho = cho; st.cv_wo = cwo;
        st.cv_ky = cky; st.cv_kx = ckx; st.cv_ci = cci;
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            s_fetch[p].write(st);
            if (st.last) s_write[p].write(st);
        }
        s_load.write(st);
        s_array.write(st);
        if (st.last) s_store.write(st);
        // advance: K chunk, then block column, block row, batch item (counters, no division)
        if (!st.last) {
            kc++;
            k0 += tile_k;
            mixed_add(cky, ckx, cci, tk_ky, tk_kx, tk_ci, h.kw, h.cin);
        } else {
            kc = 0; k0 = 0; cky = 0; ckx = 0; cci = 0;
            if (n0 + tile_n < n) {
                n0 += tile_n;
            } else {
                n0 = 0;
                if (m0 + tile_m < m) {
                    m0 += tile_m;
                    hash_row += row_hash_step;
                    mixed_add(cimg, cho, cwo, tm_img, tm_ho, tm_wo, h.Ho, h.Wo);
                } else {
                    m0 = 0; cimg = 0; cho = 0; cwo = 0;
                    item++;
                    a_off += stride_a; b_off += stride_b; c_off += stride_c;
                    hash_item += item_hash_step;
                    hash_row = hash_item;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------- fetch

// Reads the stored rows row0 + r, r = PORT, PORT + P, ... < nrows, of an operand stored with
// leading dimension ld (bytes) from offset off: ceil(seg / BB) beats from byte col0 of each row,
// one burst per row. Returns the beats read.
template <int PORT>
uint32_t fetch_rows(const qta_beat_t *rd, hls::stream<Beat> &out, uint64_t off, uint32_t ld, uint32_t row0,
                    uint32_t col0, uint32_t nrows, uint32_t seg) {
#pragma HLS INLINE
    const uint32_t nb = ceil_shift(seg, LGBB);
    const uint64_t stride = (uint64_t)(ld >> LGBB) * P;
    uint64_t base = ((off + (uint64_t)(row0 + PORT) * ld + col0) >> LGBB);
    uint32_t beats = 0;
rows:
    for (uint32_t r = PORT; r < nrows; r += P) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=SEG_MAX/P
    row_beats:
        for (uint32_t e = 0; e < nb; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=TBEATS
#pragma HLS PIPELINE II=1
            out.write(unpack(rd[base + e]));
        }
        base += stride;
        beats += nb + QTA_BURST_OVERHEAD;
    }
    return beats;
}

// The rows m0 + r (r = PORT (mod P)) of the implicit im2col matrix of an NHWC map: for each
// output pixel the k range [k0, k0 + kt) of its window, one burst per tap (cin-byte pixel
// segments), zero beats for taps in the padding or between dilated input pixels.
template <int PORT>
uint32_t fetch_conv_rows(const qta_beat_t *rd, hls::stream<Beat> &out, const Hdr &h, const Step &st) {
#pragma HLS INLINE
    uint32_t img = st.cv_img, ho = st.cv_ho, wo = st.cv_wo;
    mixed_add(img, ho, wo, h.dimg[PORT], h.dho[PORT], h.dwo[PORT], h.Ho, h.Wo);
    const int32_t hmax = (int32_t)((h.H - 1) << h.dsh), wmax = (int32_t)((h.W - 1) << h.dsh);
    const uint32_t dmask = (1u << h.dsh) - 1;
    Beat zero;
    for (int i = 0; i < BB; i++) {
#pragma HLS UNROLL
        zero.b[i] = 0;
    }
    uint32_t beats = 0;
conv_rows:
    for (uint32_t r = PORT; r < st.mt; r += P) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=QTA_TILE_M_MAX/P
        const int32_t hb = (int32_t)(ho * h.cstride) - (int32_t)h.pad;
        const int32_t wb = (int32_t)(wo * h.cstride) - (int32_t)h.pad;
        uint32_t ky = st.cv_ky, kx = st.cv_kx, ci = st.cv_ci, rem = st.kt;
    taps:
        for (uint32_t tap = 0; rem > 0; tap++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=9
            const uint32_t len = umin(h.cin - ci, rem), nbt = len >> LGBB;
            const int32_t hi = hb + (int32_t)ky, wi = wb + (int32_t)kx;
            const bool valid = hi >= 0 && hi <= hmax && wi >= 0 && wi <= wmax && ((uint32_t)hi & dmask) == 0 &&
                               ((uint32_t)wi & dmask) == 0;
            if (valid) {
                const uint64_t pix = ((uint64_t)img * h.H + ((uint32_t)hi >> h.dsh)) * h.W + ((uint32_t)wi >> h.dsh);
                const uint64_t base = (st.a_off + pix * h.lda + ci) >> LGBB;
            tap_beats:
                for (uint32_t e = 0; e < nbt; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=TBEATS
#pragma HLS PIPELINE II=1
                    out.write(unpack(rd[base + e]));
                }
            } else {
            pad_beats:
                for (uint32_t e = 0; e < nbt; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=TBEATS
#pragma HLS PIPELINE II=1
                    out.write(zero);
                }
            }
            beats += nbt + QTA_BURST_OVERHEAD;
            rem -= len;
            ci = 0;
            kx++;
            if (kx == h.kw) {
                kx = 0;
                ky++;
            }
        }
        mixed_add(img, ho, wo, h.dimg[P], h.dho[P], h.dwo[P], h.Ho, h.Wo);
    }
    return beats;
}

// Fetch process of bundle gmem<PORT>: per step the scales of a new block (port 0), the A and B
// rows of the step, and for accumulate the old C rows of a finished block (as store words).
template <int PORT>
void fetch(const qta_beat_t *rd, hls::stream<Hdr> &hs, hls::stream<Step> &ss, hls::stream<Beat> &ops,
           hls::stream<SWord> &cold, hls::stream<Beat> &scl, hls::stream<uint32_t> &cnt) {
    const Hdr h = hs.read();
fetch_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
    fetch_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            const Step st = ss.read();
            uint32_t beats = 0;
            if (st.first && h.out8 && h.smode != 0) {
                // the block's (mult, shift) pairs: beat e of the scale vector on port e mod P
                const uint32_t cnt_s = h.smode == 1 ? st.mt : st.nt, idx0 = h.smode == 1 ? st.m0 : st.n0;
                const uint32_t nsb = ceil_shift(cnt_s * 8, LGBB);
                const uint32_t mine = nsb > (uint32_t)PORT ? ((nsb - PORT + P - 1) >> LGP) : 0;
                const uint64_t base = ((h.scales + (uint64_t)idx0 * 8) >> LGBB) + PORT;
            scale_beats:
                for (uint32_t e = 0; e < mine; e++) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=SCALE_MAX*8/BB/P
#pragma HLS PIPELINE II=1
                    scl.write(unpack(rd[base + (uint64_t)e * P]));
                }
                beats += mine + QTA_BURST_OVERHEAD;
            }
            if (h.conv) {
                beats += fetch_conv_rows<PORT>(rd, ops, h, st);
            } else if (h.ta) {
                beats += fetch_rows<PORT>(rd, ops, st.a_off, h.lda, st.k0, st.m0, st.kt, st.mt);
            } else {
                beats += fetch_rows<PORT>(rd, ops, st.a_off, h.lda, st.m0, st.k0, st.mt, st.kt);
            }
            if (h.tb) {
                beats += fetch_rows<PORT>(rd, ops, st.b_off, h.ldb, st.n0, st.k0, st.nt, st.kt);
            } else {
                beats += fetch_rows<PORT>(rd, ops, st.b_off, h.ldb, st.k0, st.n0, st.kt, st.nt);
            }
            if (st.last && h.accum) {
                const uint32_t ldc_b = h.ldc * h.eb, nbc = ceil_shift(st.nt * h.eb, LGBB);
                uint64_t base = (st.c_off + (uint64_t)(st.m0 + PORT) * ldc_b + st.n0 * h.eb) >> LGBB;
            cold_rows:
                for (uint32_t r = PORT; r < st.mt; r += P) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=QTA_TILE_M_MAX/P
                    SWord w;
                cold_beats:
                    for (uint32_t e = 0; e < nbc; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_N_MAX*4/BB
#pragma HLS PIPELINE II=1
                        const Beat bt = unpack(rd[base + e]);
                        const uint32_t slot = e & (SWB - 1);
                        for (int i = 0; i < BB; i++) {
#pragma HLS UNROLL
                            w.b[slot * BB + i] = bt.b[i];
                        }
                        if (slot == SWB - 1 || e == nbc - 1) cold.write(w);
                    }
                    base += (uint64_t)(ldc_b >> LGBB) * P;
                    beats += nbc + QTA_BURST_OVERHEAD;
                }
            }
            cnt.write(beats);
        }
    }
}

// ----------------------------------------------------------------------------------- load

// How one operand of a step is laid out: its stored rows and segments (as fetched), and the
// feeder-bank words they become (hls/README.md, "Feeder banks").
struct Lay {
    bool natural;     // stored rows index the words (else: stored rows are lanes, transposed)
    uint32_t nrows;   // stored rows of the tile
    uint32_t seg;     // bytes of each stored row's segment
    uint32_t nb;      // beats per segment
    uint32_t lgw;     // log2 of the group width W: distinct lanes per word
    uint32_t es;      // sub-array exponent of the operand: groups go round-robin to 2^es banks
    uint32_t bsh;     // bank of group g: (g mod 2^es) << bsh
    uint32_t span;    // words per fold in a bank
    uint32_t ngroups;  // natural: groups of P stored rows; transposed: groups of W stored rows
};

Lay layout_a(const Hdr &h, const Step &st) {
    Lay ly;
    const int s = h.split;
    const bool stored_k = h.ta && !h.conv;  // stored rows are K (A^T in memory)
    ly.nrows = stored_k ? st.kt : st.mt;
    ly.seg = stored_k ? st.mt : st.kt;
    ly.nb = ceil_shift(ly.seg, LGBB);
    if (h.os) {  // words are k-slices of R rows of op(A)
        ly.natural = stored_k;
        ly.lgw = s >= 0 ? LGR : h.lgsr;
        ly.es = s > 0 ? s : 0;
        ly.bsh = SMAXC - ly.es;
        ly.span = st.kt;
    } else {  // WS: words are m-slices of SR k values
        ly.natural = !stored_k;
        ly.lgw = h.lgsr;
        ly.es = 0;
        ly.bsh = 0;
        ly.span = st.mt;
    }
    ly.ngroups = ly.natural ? ceil_shift(ly.nrows, LGP) : ceil_shift(ly.nrows, ly.lgw);
    return ly;
}

Lay layout_b(const Hdr &h, const Step &st) {  // words are k-slices of C columns of op(B)
    Lay ly;
    const int s = h.split;
    ly.natural = !h.tb;
    ly.nrows = h.tb ? st.nt : st.kt;
    ly.seg = h.tb ? st.kt : st.nt;
    ly.nb = ceil_shift(ly.seg, LGBB);
    ly.lgw = s <= 0 ? LGC : h.lgsc;
    ly.es = s < 0 ? -s : 0;
    ly.bsh = SMAXR - ly.es;
    ly.span = st.kt;
    ly.ngroups = ly.natural ? ceil_shift(ly.nrows, LGP) : ceil_shift(ly.nrows, ly.lgw);
    return ly;
}

// Phase lengths of one operand's load (hls/README.md, "Load"): the groups of stored rows are
// filled into one row buffer while the previous group is emitted from the other; every group
// but the last is full, so a phase has one of four lengths, known before the loop starts.
struct Phases {
    uint32_t fill_full[P], fill_last[P];  // beats each port delivers for a full / the last group
    uint32_t nfill_full, nfill_last;      // the longest of them
    uint32_t emit_full, emit_last;        // words (cycles) emitted for a full / the last group
    uint32_t total;                       // cycles of the whole load: sum of max(fill, emit)
};

Phases phases(const Lay &ly) {
    Phases ph;
    const uint32_t W = 1u << ly.lgw;
    const uint32_t g = ly.natural ? P : W;                 // stored rows per group
    const uint32_t vl = ly.nrows - (ly.ngroups - 1) * g;   // stored rows of the last group
    const uint32_t nw = ceil_shift(ly.seg, ly.lgw);        // natural: words per stored row
    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
        if (ly.natural) {
            ph.fill_full[p] = ly.nb;
            ph.fill_last[p] = (uint32_t)p < vl ? ly.nb : 0;
        } else {
            ph.fill_full[p] = (W >> LGP) * ly.nb;
            ph.fill_last[p] = (uint32_t)p < vl ? ((vl - p + P - 1) >> LGP) * ly.nb : 0;
        }
    }
    ph.nfill_full = ph.fill_full[0];
    ph.nfill_last = ph.fill_last[0];
    // two words per cycle: two stored rows (natural) or two segment bytes (transposed)
    ph.emit_full = ly.natural ? (P / 2) * nw : TROWS + ((ly.seg + 1) >> 1);
    ph.emit_last = ly.natural ? ((vl + 1) >> 1) * nw : TROWS + ((ly.seg + 1) >> 1);
    if (ly.ngroups == 1) {
        ph.total = ph.nfill_last + ph.emit_last;
    } else {
        ph.total = ph.nfill_full + (ly.ngroups - 2) * umax(ph.nfill_full, ph.emit_full) +
                   umax(ph.nfill_last, ph.emit_full) + ph.emit_last;
    }
    return ph;
}

// Writes the feeder words of one operand of a step from the fetched beats, one pipelined loop:
// in phase x = 0..ngroups the beats of group x fill row buffer x mod 2 (one beat per port per
// cycle) while the words of group x-1 are emitted from the other, two words per cycle into the
// two write ports of their bank (consecutive addresses).
// Returns the cycles it took (its trip count plus the pipeline depth).
template <int L, typename WordT, int NX, int D0, int DX>
uint32_t load_operand(hls::stream<Beat> ops[P], const Lay &ly, WordT prim[D0], WordT side[NX][2 * DX],
                      Beat tbuf[P][2][TROWS * TBEATS]) {
#pragma HLS INLINE
    const uint32_t W = 1u << ly.lgw;
    const uint32_t nw = ceil_shift(ly.seg, ly.lgw);  // natural: words per stored row
    const Phases pz = phases(ly);
    Beat cur[P][TROWS], nxt[P][TROWS];  // transposer: the beat column being emitted, and the next
#pragma HLS ARRAY_PARTITION variable=cur type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=nxt type=complete dim=0
    uint32_t ph = 0, i = 0;            // phase, cycle within the phase
    uint32_t fslot[P], fbeat[P];       // fill position per port: row slot, beat
#pragma HLS ARRAY_PARTITION variable=fslot type=complete
#pragma HLS ARRAY_PARTITION variable=fbeat type=complete
    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
        fslot[p] = 0;
        fbeat[p] = 0;
    }
    uint32_t rho = 0, xw = 0;  // natural emit: row of the group, word of the row
load_cycles:
    for (uint32_t it = 0; it < pz.total; it++) {
#pragma HLS LOOP_TRIPCOUNT min=2 max=70000
#pragma HLS PIPELINE II=1
        const bool fill_last = ph == ly.ngroups - 1, emit_last = ph == ly.ngroups;
        const uint32_t nfill = ph < ly.ngroups ? (fill_last ? pz.nfill_last : pz.nfill_full) : 0;
        const uint32_t nemit = ph == 0 ? 0 : (emit_last ? pz.emit_last : pz.emit_full);
        const uint32_t n = umax(nfill, nemit);
        const uint32_t fb = ph & 1, eb = (ph - 1) & 1, ex = ph - 1;
        // fill: one beat per port per cycle, rows in fetch order
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            const uint32_t fp = ph < ly.ngroups ? (fill_last ? pz.fill_last[p] : pz.fill_full[p]) : 0;
            if (i < fp) {
                tbuf[p][fb][fslot[p] * TBEATS + fbeat[p]] = ops[p].read();
                if (fbeat[p] == ly.nb - 1) {
                    fbeat[p] = 0;
                    fslot[p]++;
                } else {
                    fbeat[p]++;
                }
            }
        }
        // emit: two words of distinct lanes v[0..W-1] (the second may be past the group's end)
        if (i < nemit) {
            int8_t v[2][L];
#pragma HLS ARRAY_PARTITION variable=v type=complete dim=0
            bool val[2] = {true, true};
            uint32_t g = 0, idx = 0;
            bool write = true;
            if (ly.natural) {
                // word xw of stored rows ex * P + rho and + rho + 1: bytes [xw W, xw W + W) of their segments
                const uint32_t o = xw << ly.lgw, e0 = o >> LGBB, sh = o & (BB - 1);
                const uint32_t e1 = (e0 + 1 < (uint32_t)TBEATS) ? e0 + 1 : e0;
                for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                    const uint32_t port = rho + y;
                    const Beat w0 = tbuf[port][eb][e0];
                    const Beat w1 = tbuf[port][eb][e1];
                    uint8_t win[2 * BB];
#pragma HLS ARRAY_PARTITION variable=win type=complete
                    for (int q = 0; q < BB; q++) {
#pragma HLS UNROLL
                        win[q] = w0.b[q];
                        win[BB + q] = w1.b[q];
                    }
                    for (int w = 0; w < L; w++) {
#pragma HLS UNROLL
                        const uint32_t at = sh + w;
                        const bool ok = (uint32_t)w < W && o + w < ly.seg && at < 2 * BB;
                        v[y][w] = ok ? (int8_t)win[at < 2 * BB ? at : 0] : (int8_t)0;
                    }
                }
                val[1] = ex * P + rho + 1 < ly.nrows;
                g = xw;
                idx = ex * P + rho;
                if (xw == nw - 1) {
                    xw = 0;
                    rho += 2;
                } else {
                    xw++;
                }
            } else if (i < (uint32_t)TROWS) {
                // transposer: prefetch beat column 0 of every row slot
                for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                    cur[p][i] = tbuf[p][eb][i * TBEATS];
                }
                write = false;
            } else {
                // transposer: words e, e + 1 = bytes e, e + 1 of the W stored rows of group ex
                const uint32_t e = (i - TROWS) << 1, col = e >> LGBB, jj = (e & (BB - 1)) >> 1;
                for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                    for (int w = 0; w < L; w++) {
#pragma HLS UNROLL
                        const bool ok = (uint32_t)w < W && ex * W + w < ly.nrows;
                        const int slot = (w >> LGP) < TROWS ? (w >> LGP) : 0;
                        v[y][w] = ok ? (int8_t)cur[w & (P - 1)][slot].b[(e & (BB - 1)) + y] : (int8_t)0;
                    }
                }
                val[1] = e + 1 < ly.seg;
                if (jj < (uint32_t)TROWS && col + 1 < (uint32_t)TBEATS) {
                    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                        nxt[p][jj] = tbuf[p][eb][jj * TBEATS + col + 1];
                    }
                }
                if (jj == BB / 2 - 1) {
                    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                        for (int j = 0; j < TROWS; j++) {
#pragma HLS UNROLL
                            cur[p][j] = nxt[p][j];
                        }
                    }
                }
                g = ex;
                idx = e;
            }
            if (write) {
                // replicate the W distinct lanes over each word, then write both to their bank
                const uint32_t f = g >> ly.es, q = g & ((1u << ly.es) - 1);
                const uint32_t bank = q << ly.bsh, addr = f * ly.span + idx;
                for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                    if (!val[y]) continue;
                    WordT word;
                    for (int l = 0; l < L; l++) {
#pragma HLS UNROLL
                        word.l[l] = v[y][l & (W - 1)];
                    }
                    if (bank == 0) {
                        prim[addr + y] = word;
                    } else {
                        side[(bank - 1) >> 1][((bank - 1) & 1) * DX + addr + y] = word;
                    }
                }
            }
        }
        // next cycle, next phase
        if (i == n - 1) {
            i = 0;
            ph++;
            rho = 0;
            xw = 0;
            for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                fslot[p] = 0;
                fbeat[p] = 0;
            }
        } else {
            i++;
        }
    }
    return pz.total + QTA_LOAD_PIPELINE;
}

void load(hls::stream<Hdr> &hs, hls::stream<Step> &ss, hls::stream<Beat> ops[P], QTA_BLOCKS(A0Block, ) &a0s,
          QTA_BLOCKS(AXBlock, ) &axs, QTA_BLOCKS(B0Block, ) &b0s, QTA_BLOCKS(BXBlock, ) &bxs,
          hls::stream<uint32_t> &cnt) {
    const Hdr h = hs.read();
    // the row buffers of the beat transposer: per port two slots of TROWS rows
    Beat tbuf[P][2][TROWS * TBEATS];
#pragma HLS ARRAY_PARTITION variable=tbuf type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=tbuf type=complete dim=2
#pragma HLS BIND_STORAGE variable=tbuf type=ram_t2p impl=bram
load_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
    load_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            const Step st = ss.read();
            QTA_WRITE_LOCK(A0Block, a0, a0s);
            QTA_WRITE_LOCK(AXBlock, ax, axs);
            QTA_WRITE_LOCK(B0Block, b0, b0s);
            QTA_WRITE_LOCK(BXBlock, bx, bxs);
            const Lay la = layout_a(h, st), lb = layout_b(h, st);
            uint32_t it = load_operand<R, AWord, NAX, QTA_A_DEPTH, QTA_A_SIDE_DEPTH>(ops, la, a0, ax, tbuf);
            it += load_operand<C, BWord, NBX, QTA_B_DEPTH, QTA_B_SIDE_DEPTH>(ops, lb, b0, bx, tbuf);
            cnt.write(it);
        }
    }
}

// ---------------------------------------------------------------------------------- array

// Per-call configuration of the array: which boundaries start a sub-array, lane skews.
struct ArrayCfg {
    bool a_edge_col[C];   // column j takes A from boundary feeder j / MS
    bool b_edge_row[R];   // row i takes B (weights) from boundary feeder i / MS, and starts a partial sum
    bool a_act[NBA], b_act[NBB], tap_act[NBB];
    uint32_t a_q[NBA];    // sub-array served by A boundary b (side by side)
    uint32_t b_p[NBB];    // sub-array served by B boundary b (stacked)
    uint32_t tap_p[NBB];  // sub-array whose bottom row is above tap row t
    uint8_t a_dly[R];     // skew of lane i at A boundary 0 (i mod SR); other boundaries: i
    uint8_t b_dly[C];     // skew of lane j at B boundary 0 (j mod SC); other boundaries: j
};

ArrayCfg array_cfg(const Hdr &h) {
    ArrayCfg ac;
    const int s = h.split;
    const uint32_t sr = 1u << h.lgsr, sc = 1u << h.lgsc;
    const uint32_t ea = s > 0 ? s : 0, eb = s < 0 ? -s : 0;
    for (int b = 0; b < NBA; b++) {
#pragma HLS UNROLL
        ac.a_act[b] = (b & ((1 << (SMAXC - ea)) - 1)) == 0;
        ac.a_q[b] = b >> (SMAXC - ea);
    }
    for (int b = 0; b < NBB; b++) {
#pragma HLS UNROLL
        ac.b_act[b] = (b & ((1 << (SMAXR - eb)) - 1)) == 0;
        ac.b_p[b] = b >> (SMAXR - eb);
        const uint32_t bottom = (uint32_t)(b + 1) * MS;  // one past the row above tap row b
        ac.tap_act[b] = (bottom & (sr - 1)) == 0;
        ac.tap_p[b] = (bottom >> h.lgsr) - 1;
    }
    for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
        ac.a_edge_col[j] = (j & (MS - 1)) == 0 && ac.a_act[j >> LGMS];
        ac.b_dly[j] = (uint8_t)(j & (sc - 1));
    }
    for (int i = 0; i < R; i++) {
#pragma HLS UNROLL
        ac.b_edge_row[i] = (i & (MS - 1)) == 0 && ac.b_act[i >> LGMS];
        ac.a_dly[i] = (uint8_t)(i & (sr - 1));
    }
    return ac;
}

// Accumulator read-modify-write of one column pair (assign on the block's first contribution).
inline void acc_rmw(AccW &w, int32_t v0, int32_t v1, bool assign) {
#pragma HLS INLINE
    if (assign) {
        w.v[0] = v0;
        w.v[1] = v1;
    } else {
        w.v[0] += v0;
        w.v[1] += v1;
    }
}

// Output-stationary step: folds (fr, fc) of kt + SR + SC - 2 cycles back to back, each drained
// during the first SR cycles of the next, then a final drain of SR cycles. Returns its cycles.
uint32_t os_step(const Hdr &h, const ArrayCfg &ac, const Step &st, const A0Block &a0, const AXBlock &ax,
                 const B0Block &b0, const BXBlock &bx, AccPBlock &accp, AccXBlock &accx) {
    const int s = h.split;
    const uint32_t sr = 1u << h.lgsr, sc = 1u << h.lgsc;
    const uint32_t ea = s > 0 ? s : 0, eb = s < 0 ? -s : 0;
    const uint32_t nfr = ceil_shift(st.mt, h.lglr), nfc = ceil_shift(st.nt, h.lglc);
    const uint32_t nga = ceil_shift(st.mt, s >= 0 ? LGR : h.lgsr);   // A groups (feeder words per k)
    const uint32_t ngb = ceil_shift(st.nt, s <= 0 ? LGC : h.lgsc);   // B groups
    const uint32_t fl = st.kt + sr + sc - 2;
    const uint32_t fold_cycles = nfr * nfc * fl, total = fold_cycles + sr;

    int8_t areg[R][C], breg[R][C];
    int32_t pacc[R][C], pout[R][C];
#pragma HLS ARRAY_PARTITION variable=areg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=breg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=pacc type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=pout type=complete dim=0
    uint8_t ha[NBA][R][R], hb[NBB][C][C];  // skew histories (LUTRAM per lane), read masked
#pragma HLS ARRAY_PARTITION variable=ha type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=ha type=complete dim=2
#pragma HLS ARRAY_PARTITION variable=hb type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=hb type=complete dim=2
    int8_t ea_v[NBA][R], eb_v[NBB][C];  // edge inputs of this cycle
#pragma HLS ARRAY_PARTITION variable=ea_v type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=eb_v type=complete dim=0
    for (int i = 0; i < R; i++) {
#pragma HLS UNROLL
        for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
            areg[i][j] = 0; breg[i][j] = 0; pacc[i][j] = 0; pout[i][j] = 0;
        }
    }
    uint32_t tau = 0, fr = 0, fc = 0, hp = 0;
    uint32_t dd = sr, dfr = 0, dfc = 0;  // drain cycle (sr: idle) and the fold being drained
os_cycles:
    for (uint32_t cyc = 0; cyc < total; cyc++) {
#pragma HLS LOOP_TRIPCOUNT min=64 max=32768
#pragma HLS PIPELINE II=1
#pragma HLS DEPENDENCE variable=accp type=inter false
#pragma HLS DEPENDENCE variable=accx type=inter false
        const bool infold = cyc < fold_cycles;
        // ---- drain: taps below the bottom row of each sub-array, then shift down one row
        if (dd < sr) {
            const uint32_t il = sr - 1 - dd;
            const uint32_t addr = ((dfr * nfc + dfc) << h.lgsr) + il;
            for (int t = 0; t < NBB; t++) {
#pragma HLS UNROLL
                if (!ac.tap_act[t]) continue;
                const int bt = (t + 1) * MS - 1;
                for (int jp = 0; jp < C / 2; jp++) {
#pragma HLS UNROLL
                    const int j = 2 * jp;
                    uint32_t row, col;
                    if (s >= 0) {
                        row = (dfr << h.lglr) + ((uint32_t)(j >> h.lgsc) << LGR) + il;
                        col = (dfc << h.lgsc) + (j & (sc - 1));
                    } else {
                        row = (dfr << h.lgsr) + il;
                        col = (dfc << h.lglc) + (ac.tap_p[t] << LGC) + j;
                    }
                    if (row >= st.mt || col >= st.nt) continue;
                    if (t == NBB - 1) {
                        acc_rmw(accp[jp / PG][jp % PG][addr], pout[bt][j], pout[bt][j + 1], st.first);
                    } else {
                        acc_rmw(accx[t < NBB - 1 ? t : 0][jp / PG][jp % PG][addr], pout[bt][j], pout[bt][j + 1],
                                st.first);
                    }
                }
            }
            for (int i = R - 1; i >= 0; i--) {
#pragma HLS UNROLL
                const bool top = (i & (sr - 1)) == 0;
                for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                    pout[i][j] = top ? 0 : pout[i - 1 >= 0 ? i - 1 : 0][j];
                }
            }
            dd++;
        }
        if (!infold) continue;
        // ---- feeders: one word per active bank at k = tau, skewed per lane through the history
        const bool kin = tau < st.kt;
        for (int b = 0; b < NBA; b++) {
#pragma HLS UNROLL
            if (!ac.a_act[b]) continue;
            const uint32_t g = (fr << ea) + ac.a_q[b];
            const uint32_t addr = fr * st.kt + tau;
            AWord w;
            if (kin && g < nga) {
                w = b == 0 ? a0[addr] : ax[(b - 1) >> 1][((b - 1) & 1) * QTA_A_SIDE_DEPTH + addr];
            } else {
                for (int i = 0; i < R; i++) w.l[i] = 0;
            }
            for (int i = 0; i < R; i++) {
#pragma HLS UNROLL
                const uint32_t d = b == 0 ? ac.a_dly[i] : (uint32_t)i;
                const int8_t old = (int8_t)ha[b][i][(hp - d) & (R - 1)];
                ea_v[b][i] = d == 0 ? w.l[i] : (tau >= d ? old : (int8_t)0);
                ha[b][i][hp & (R - 1)] = (uint8_t)w.l[i];
            }
        }
        for (int b = 0; b < NBB; b++) {
#pragma HLS UNROLL
            if (!ac.b_act[b]) continue;
            const uint32_t g = (fc << eb) + ac.b_p[b];
            const uint32_t addr = fc * st.kt + tau;
            BWord w;
            if (kin && g < ngb) {
                w = b == 0 ? b0[addr] : bx[(b - 1) >> 1][((b - 1) & 1) * QTA_B_SIDE_DEPTH + addr];
            } else {
                for (int j = 0; j < C; j++) w.l[j] = 0;
            }
            for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                const uint32_t d = b == 0 ? ac.b_dly[j] : (uint32_t)j;
                const int8_t old = (int8_t)hb[b][j][(hp - d) & (C - 1)];
                eb_v[b][j] = d == 0 ? w.l[j] : (tau >= d ? old : (int8_t)0);
                hb[b][j][hp & (C - 1)] = (uint8_t)w.l[j];
            }
        }
        hp++;
        // ---- PEs: A from the left neighbour or a boundary feeder, B from above; MAC
        const bool fold_end = tau == fl - 1;
        for (int i = R - 1; i >= 0; i--) {
#pragma HLS UNROLL
            for (int j = C - 1; j >= 0; j--) {
#pragma HLS UNROLL
                const int8_t av = ac.a_edge_col[j] ? ea_v[j >> LGMS][i] : areg[i][j - 1 >= 0 ? j - 1 : 0];
                const int8_t bv = ac.b_edge_row[i] ? eb_v[i >> LGMS][j] : breg[i - 1 >= 0 ? i - 1 : 0][j];
                areg[i][j] = av;
                breg[i][j] = bv;
                const int32_t sum = pacc[i][j] + (int32_t)((int16_t)av * (int16_t)bv);
                pacc[i][j] = fold_end ? 0 : sum;
                if (fold_end) pout[i][j] = sum;
            }
        }
        if (fold_end) {
            dd = 0;
            dfr = fr;
            dfc = fc;
            tau = 0;
            if (fc == nfc - 1) {
                fc = 0;
                fr++;
            } else {
                fc++;
            }
        } else {
            tau++;
        }
    }
    return total;
}

// Weight-stationary step: folds (fk, fc) of 2 SR + SC + mt - 2 cycles (weight load, stream,
// skew), partial sums cascading down the columns to the taps. Returns its cycles.
uint32_t ws_step(const Hdr &h, const ArrayCfg &ac, const Step &st, const A0Block &a0, const B0Block &b0,
                 const BXBlock &bx, AccPBlock &accp, AccXBlock &accx) {
    const int s = h.split;  // <= 0
    const uint32_t sr = 1u << h.lgsr;
    const uint32_t eb = -s;
    const uint32_t nfk = ceil_shift(st.kt, h.lgsr), nfc = ceil_shift(st.nt, h.lglc);
    const uint32_t ngb = ceil_shift(st.nt, LGC);
    const uint32_t fl = 2 * sr + C + st.mt - 2;
    const uint32_t total = nfk * nfc * fl;

    int8_t areg[R][C], wreg[R][C];
    int32_t psum[R][C];
#pragma HLS ARRAY_PARTITION variable=areg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=wreg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=psum type=complete dim=0
    int32_t even[NBB][C / 2];  // the even column of each pair, one cycle late (pair alignment)
#pragma HLS ARRAY_PARTITION variable=even type=complete dim=0
    uint8_t ha[R][R];  // skew history of A boundary 0
#pragma HLS ARRAY_PARTITION variable=ha type=complete dim=1
    int8_t ea_v[R], eb_v[NBB][C];
#pragma HLS ARRAY_PARTITION variable=ea_v type=complete
#pragma HLS ARRAY_PARTITION variable=eb_v type=complete dim=0
    for (int i = 0; i < R; i++) {
#pragma HLS UNROLL
        for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
            wreg[i][j] = 0;
        }
    }
    uint32_t c = 0, fk = 0, fc = 0, hp = 0;
ws_cycles:
    for (uint32_t cyc = 0; cyc < total; cyc++) {
#pragma HLS LOOP_TRIPCOUNT min=64 max=32768
#pragma HLS PIPELINE II=1
#pragma HLS DEPENDENCE variable=accp type=inter false
#pragma HLS DEPENDENCE variable=accx type=inter false
        if (c < sr) {
            // ---- weight load: row SR-1-c of the fold's K slice enters at the top of each sub-array
            const uint32_t kk = (fk << h.lgsr) + sr - 1 - c;
            for (int b = 0; b < NBB; b++) {
#pragma HLS UNROLL
                if (!ac.b_act[b]) continue;
                const uint32_t g = (fc << eb) + ac.b_p[b];
                const uint32_t addr = fc * st.kt + kk;
                BWord w;
                if (kk < st.kt && g < ngb) {
                    w = b == 0 ? b0[addr] : bx[(b - 1) >> 1][((b - 1) & 1) * QTA_B_SIDE_DEPTH + addr];
                } else {
                    for (int j = 0; j < C; j++) w.l[j] = 0;
                }
                for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                    eb_v[b][j] = w.l[j];
                }
            }
            for (int i = R - 1; i >= 0; i--) {
#pragma HLS UNROLL
                for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                    wreg[i][j] = ac.b_edge_row[i] ? eb_v[i >> LGMS][j] : wreg[i - 1 >= 0 ? i - 1 : 0][j];
                    areg[i][j] = 0;
                    psum[i][j] = 0;
                }
            }
            for (int t = 0; t < NBB; t++) {
#pragma HLS UNROLL
                for (int jp = 0; jp < C / 2; jp++) {
#pragma HLS UNROLL
                    even[t][jp] = 0;
                }
            }
        } else {
            // ---- stream: row tau of op(A) enters row i at tau + i' (skew), moves right
            const uint32_t tau = c - sr;
            AWord w;
            if (tau < st.mt) {
                w = a0[fk * st.mt + tau];
            } else {
                for (int i = 0; i < R; i++) w.l[i] = 0;
            }
            for (int i = 0; i < R; i++) {
#pragma HLS UNROLL
                const uint32_t d = ac.a_dly[i];
                const int8_t old = (int8_t)ha[i][(hp - d) & (R - 1)];
                ea_v[i] = d == 0 ? w.l[i] : (tau >= d ? old : (int8_t)0);
                ha[i][hp & (R - 1)] = (uint8_t)w.l[i];
            }
            hp++;
            for (int i = R - 1; i >= 0; i--) {
#pragma HLS UNROLL
                for (int j = C - 1; j >= 0; j--) {
#pragma HLS UNROLL
                    const int8_t av = j == 0 ? ea_v[i] : areg[i][j - 1 >= 0 ? j - 1 : 0];
                    const int32_t pin = ac.b_edge_row[i] ? 0 : psum[i - 1 >= 0 ? i - 1 : 0][j];
                    areg[i][j] = av;
                    psum[i][j] = pin + (int32_t)((int16_t)av * (int16_t)wreg[i][j]);
                }
            }
            // ---- taps: column pair jp delivers output row tau - SR - 2 jp (even column delayed)
            const bool assign = st.first && fk == 0;
            for (int t = 0; t < NBB; t++) {
#pragma HLS UNROLL
                if (!ac.tap_act[t]) continue;
                const int bt = (t + 1) * MS - 1;
                for (int jp = 0; jp < C / 2; jp++) {
#pragma HLS UNROLL
                    const int32_t ve = even[t][jp], vo = psum[bt][2 * jp + 1];
                    even[t][jp] = psum[bt][2 * jp];
                    const int32_t mrow = (int32_t)tau - (int32_t)sr - 2 * jp;
                    const uint32_t col = (fc << h.lglc) + (ac.tap_p[t] << LGC) + 2 * jp;
                    if (mrow < 0 || (uint32_t)mrow >= st.mt || col >= st.nt) continue;
                    const uint32_t addr = fc * st.mt + (uint32_t)mrow;
                    if (t == NBB - 1) {
                        acc_rmw(accp[jp / PG][jp % PG][addr], ve, vo, assign);
                    } else {
                        acc_rmw(accx[t < NBB - 1 ? t : 0][jp / PG][jp % PG][addr], ve, vo, assign);
                    }
                }
            }
        }
        if (c == fl - 1) {
            c = 0;
            if (fc == nfc - 1) {
                fc = 0;
                fk++;
            } else {
                fc++;
            }
        } else {
            c++;
        }
    }
    return total;
}

void array(hls::stream<Hdr> &hs, hls::stream<Step> &ss, QTA_BLOCKS(A0Block, ) &a0s, QTA_BLOCKS(AXBlock, ) &axs,
           QTA_BLOCKS(B0Block, ) &b0s, QTA_BLOCKS(BXBlock, ) &bxs, QTA_BLOCKS(AccPBlock, ) &accps,
           QTA_BLOCKS(AccXBlock, ) &accxs, hls::stream<uint32_t> &cnt) {
    const Hdr h = hs.read();
    const ArrayCfg ac = array_cfg(h);
array_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
        QTA_WRITE_LOCK(AccPBlock, accp, accps);
        QTA_WRITE_LOCK(AccXBlock, accx, accxs);
    array_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            const Step st = ss.read();
            QTA_READ_LOCK(A0Block, a0, a0s);
            QTA_READ_LOCK(AXBlock, ax, axs);
            QTA_READ_LOCK(B0Block, b0, b0s);
            QTA_READ_LOCK(BXBlock, bx, bxs);
            const uint32_t it = h.os ? os_step(h, ac, st, a0, ax, b0, bx, accp, accx)
                                     : ws_step(h, ac, st, a0, b0, bx, accp, accx);
            cnt.write(it + QTA_ARRAY_PIPELINE);
        }
    }
}

// ---------------------------------------------------------------------------------- store

// round(p / 2^sh): half to even, or stochastically with 32 random bits (as kernel v1).
inline int64_t round_shift(int64_t p, uint32_t sh, bool stochastic, uint32_t bits) {
#pragma HLS INLINE
    if (sh == 0) return p;
    if (stochastic) {
        // u uniform on [0, 2^sh): the hash bits placed at [sh - 32, sh)
        const uint64_t u = (((uint64_t)bits) << 32) >> (64 - sh);
        return (p + (int64_t)u) >> sh;
    }
    const int64_t q = p >> sh;
    const uint64_t rem = (uint64_t)p & ((1ull << sh) - 1), half = 1ull << (sh - 1);
    return (rem > half || (rem == half && (q & 1))) ? q + 1 : q;
}

inline uint32_t cap_abs(int64_t v) {
#pragma HLS INLINE
    const uint64_t a = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    return a > 0x7FFFFFFFull ? 0x7FFFFFFFu : (uint32_t)a;
}

void store(hls::stream<Hdr> &hs, hls::stream<Step> &ss, QTA_BLOCKS(AccPBlock, ) &accps,
           QTA_BLOCKS(AccXBlock, ) &accxs, hls::stream<SWord> cold[P], hls::stream<Beat> scl[P],
           hls::stream<SWord> wout[P], hls::stream<uint32_t> &cnt, uint32_t *status, uint32_t *sat_count,
           uint32_t *amax) {
    const Hdr h = hs.read();
    const int s = h.split;
    int32_t smul[SCALE_MAX];
    uint8_t ssh[SCALE_MAX];
#pragma HLS ARRAY_PARTITION variable=smul type=cyclic factor=MS
#pragma HLS ARRAY_PARTITION variable=ssh type=cyclic factor=MS
    bool sat = false;
    uint32_t nsat = 0, mx = 0;
    const uint32_t ers = ER * h.n;
store_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
        const Step st = ss.read();
        QTA_READ_LOCK(AccPBlock, accp, accps);
        QTA_READ_LOCK(AccXBlock, accx, accxs);
        uint32_t iters = 0;
        const bool scaled = h.out8 && h.smode != 0;
        if (scaled) {
            const uint32_t cnt_s = h.smode == 1 ? st.mt : st.nt, nsb = ceil_shift(cnt_s * 8, LGBB);
        scales:
            for (uint32_t e = 0; e < nsb; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=SCALE_MAX*8/BB
#pragma HLS PIPELINE II=1
                const Beat bt = scl[e & (P - 1)].read();
                for (int q = 0; q < BB / 8; q++) {
#pragma HLS UNROLL
                    const uint32_t idx = e * (BB / 8) + q;
                    if (idx >= (uint32_t)SCALE_MAX) continue;
                    uint32_t mu = 0;
                    for (int y = 0; y < 4; y++) mu |= (uint32_t)bt.b[8 * q + y] << (8 * y);
                    smul[idx] = (int32_t)mu;
                    ssh[idx] = bt.b[8 * q + 4];
                }
            }
            iters += nsb + QTA_BURST_OVERHEAD;
        }
        const uint32_t nrp = ceil_shift(st.mt, LGER), ncg = ceil_shift(st.nt, LGMS);
        const uint32_t nfc = ceil_shift(st.nt, h.lglc);
        const uint32_t wpos_mask = (h.out8 ? SW : SW >> 2) - 1;  // outputs per store word - 1
        SWord sw[ER], cw[ER];
#pragma HLS ARRAY_PARTITION variable=sw type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=cw type=complete dim=0
        uint32_t rp = 0, g = 0, hrow = st.hash0;
    outputs:
        for (uint32_t it = 0; it < nrp * ncg; it++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=65536
#pragma HLS PIPELINE II=1
            const uint32_t row = rp * ER, col = g * MS;
            // where rows row, row + 1 / columns col .. col + MS - 1 sit in the accumulators
            uint32_t t, jg, addr;
            if (h.os && s >= 0) {
                const uint32_t fr = row >> h.lglr, rl = row & ((1u << h.lglr) - 1);
                const uint32_t q = rl >> LGR, il = rl & (R - 1);
                const uint32_t fc = col >> h.lgsc, jl = col & ((1u << h.lgsc) - 1);
                t = NBB - 1;
                jg = ((q << h.lgsc) + jl) >> LGMS;
                addr = ((fr * nfc + fc) << h.lgsr) + il;
            } else {
                const uint32_t fc = col >> h.lglc, cl = col & ((1u << h.lglc) - 1);
                const uint32_t p = cl >> LGC;
                jg = (cl & (C - 1)) >> LGMS;
                t = ((p + 1) << (h.lgsr - LGMS)) - 1;
                if (h.os) {
                    const uint32_t fr = row >> h.lgsr, il = row & ((1u << h.lgsr) - 1);
                    addr = ((fr * nfc + fc) << h.lgsr) + il;
                } else {
                    addr = fc * st.mt + row;
                }
            }
            const uint32_t wpos = g & (wpos_mask >> LGMS);  // group within the store word
            for (int v = 0; v < ER; v++) {
#pragma HLS UNROLL
                const uint32_t r = row + v;
                const bool rv = r < st.mt;
                if (wpos == 0) {
                    for (int q = 0; q < SW; q++) sw[v].b[q] = 0;
                    if (h.accum && rv) cw[v] = cold[(st.m0 + r) & (P - 1)].read();
                }
                for (int hh = 0; hh < PG; hh++) {
#pragma HLS UNROLL
                    AccW aw;
                    aw.v[0] = 0;
                    aw.v[1] = 0;
                    if (rv) aw = t == NBB - 1 ? accp[jg][hh][addr + v] : accx[t < NBB - 1 ? t : 0][jg][hh][addr + v];
                    for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                        const int u = 2 * hh + y;
                        const uint32_t cc = col + u;
                        if (!rv || cc >= st.nt) continue;
                        const int32_t acc = aw.v[y];
                        const uint32_t byte = (wpos * MS + u) * h.eb;  // position in the store word
                        int64_t pre;
                        bool s8;
                        if (!h.out8) {
                            int64_t tot = acc;
                            if (h.accum) {
                                uint32_t old = 0;
                                for (int q = 0; q < 4; q++) old |= (uint32_t)cw[v].b[byte + q] << (8 * q);
                                tot += (int32_t)old;
                            }
                            pre = tot;
                            const int64_t o = tot < INT32_MIN ? INT32_MIN : (tot > INT32_MAX ? INT32_MAX : tot);
                            s8 = o != tot;
                            const uint32_t ou = (uint32_t)(int32_t)o;
                            for (int q = 0; q < 4; q++) sw[v].b[byte + q] = (uint8_t)(ou >> (8 * q));
                        } else {
                            int32_t mu = h.mult;
                            uint32_t sh = h.shift;
                            if (h.smode == 1) {
                                mu = smul[r];
                                sh = ssh[r];
                            } else if (h.smode == 2) {
                                mu = smul[cc];
                                sh = ssh[cc];
                            }
                            const uint32_t bits = qta_mix32(h.seed_hash + hrow + v * h.n + cc);
                            int64_t q8 = round_shift((int64_t)acc * mu, sh > 62 ? 62 : sh, h.stoch, bits);
                            if (h.accum) q8 += (int8_t)cw[v].b[byte];
                            pre = q8;
                            const int64_t o = q8 < -128 ? -128 : (q8 > 127 ? 127 : q8);
                            s8 = o != q8;
                            sw[v].b[byte] = (uint8_t)(int8_t)o;
                        }
                        const uint32_t ab = cap_abs(pre);
                        mx = ab > mx ? ab : mx;
                        if (s8) {
                            sat = true;
                            nsat = nsat == 0xFFFFFFFFu ? nsat : nsat + 1;
                        }
                    }
                }
                if (rv && (wpos == (wpos_mask >> LGMS) || g == ncg - 1)) wout[(st.m0 + r) & (P - 1)].write(sw[v]);
            }
            if (g == ncg - 1) {
                g = 0;
                rp++;
                hrow += ers;
            } else {
                g++;
            }
        }
        iters += nrp * ncg + QTA_STORE_PIPELINE;
        cnt.write(iters);
    }
    *status = (h.ok ? 0u : (1u << QTA_STATUS_BAD_ARGS)) | (sat ? (1u << QTA_STATUS_SATURATED) : 0u);
    *sat_count = nsat;
    *amax = mx;
}

// ---------------------------------------------------------------------------------- write

template <int PORT>
void write(qta_beat_t *wr, hls::stream<Hdr> &hs, hls::stream<Step> &ss, hls::stream<SWord> &win,
           hls::stream<uint32_t> &cnt, hls::stream<bool> &done) {
    const Hdr h = hs.read();
write_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
        const Step st = ss.read();
        const uint32_t ldc_b = h.ldc * h.eb, nbw = ceil_shift(st.nt * h.eb, LGBB);
        uint64_t base = (st.c_off + (uint64_t)(st.m0 + PORT) * ldc_b + st.n0 * h.eb) >> LGBB;
        uint32_t beats = 0;
    write_rows:
        for (uint32_t r = PORT; r < st.mt; r += P) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=QTA_TILE_M_MAX/P
            SWord w;
        write_beats:
            for (uint32_t e = 0; e < nbw; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_N_MAX*4/BB
#pragma HLS PIPELINE II=1
                const uint32_t slot = e & (SWB - 1);
                if (slot == 0) w = win.read();
                qta_beat_t x;
                for (int i = 0; i < BB; i++) {
#pragma HLS UNROLL
                    x.range(8 * i + 7, 8 * i) = w.b[slot * BB + i];
                }
                wr[base + e] = x;
            }
            base += (uint64_t)(ldc_b >> LGBB) * P;
            beats += nbw + QTA_BURST_OVERHEAD;
        }
        cnt.write(beats);
    }
    done.write(true);
}

// ------------------------------------------------------------------------- model, counter

// cycles_model: the overlap recurrence of hls/README.md ("Cycle model") over the trip counts the
// processes report, plus the fixed latencies of hardware.toml [schedule].
void model(hls::stream<Hdr> &hs, hls::stream<uint32_t> fcnt[P], hls::stream<uint32_t> &lcnt,
           hls::stream<uint32_t> &pcnt, hls::stream<uint32_t> &scnt, hls::stream<uint32_t> wcnt[P],
           uint64_t *cycles_model) {
    const Hdr h = hs.read();
    uint64_t lend = 0, pend1 = 0, pend2 = 0, send1 = 0, send2 = 0;
model_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
    model_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            uint32_t lf = lcnt.read();
            for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                lf = umax(lf, fcnt[p].read());
            }
            const uint64_t L = (uint64_t)lf + QTA_DDR_LATENCY;
            const uint64_t Pc = pcnt.read();
            lend = (lend > pend2 ? lend : pend2) + L;  // slot of step t-2 free
            uint64_t start = lend > pend1 ? lend : pend1;
            if (kc == 0 && send2 > start) start = send2;  // accumulator slot of block b-2 free
            pend2 = pend1;
            pend1 = start + Pc;
        }
        uint32_t sw = scnt.read();
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            sw = umax(sw, wcnt[p].read());
        }
        const uint64_t S = (uint64_t)sw + QTA_DDR_LATENCY;
        const uint64_t send = (pend1 > send1 ? pend1 : send1) + S;
        send2 = send1;
        send1 = send;
    }
    *cycles_model = QTA_CALL_OVERHEAD + send1;
}

// cycles_measured: clock cycles from the start of the region until every writer reported done.
void counter(hls::stream<bool> done[P], uint64_t *cycles_measured) {
    bool got[P];
#pragma HLS ARRAY_PARTITION variable=got type=complete
    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
        got[p] = false;
    }
    uint64_t n = 0;
    bool all = false;
count:
    for (uint64_t it = 0; !all; it++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1000000
#pragma HLS PIPELINE II=1
        all = true;
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            bool tok;
            if (!got[p] && done[p].read_nb(tok)) got[p] = true;
            all = all && got[p];
        }
        if (!all) n++;
    }
    *cycles_measured = n;
}

}  // namespace

void qta_gemm(QTA_TOP_PARAMS) {
    QTA_INTERFACE_PRAGMAS
#pragma HLS DATAFLOW
    hls::stream<Hdr> h_fetch[P], h_write[P], h_load, h_array, h_store, h_model;
    hls::stream<Step> s_fetch[P], s_write[P], s_load, s_array, s_store;
    hls::stream<Beat> ops[P], scl[P];
    hls::stream<SWord> cold[P], wout[P];
    hls::stream<uint32_t> fcnt[P], wcnt[P], lcnt, pcnt, scnt;
    hls::stream<bool> done[P];
#pragma HLS STREAM variable=s_fetch depth=4
#pragma HLS STREAM variable=s_load depth=4
#pragma HLS STREAM variable=s_array depth=4
#pragma HLS STREAM variable=ops depth=64
#pragma HLS STREAM variable=cold depth=64
#pragma HLS STREAM variable=scl depth=128
#pragma HLS STREAM variable=wout depth=64
#pragma HLS STREAM variable=fcnt depth=64
#pragma HLS STREAM variable=lcnt depth=64
#pragma HLS STREAM variable=pcnt depth=64
    QTA_BLOCKS(A0Block, a0s);
    QTA_BLOCKS(AXBlock, axs);
    QTA_BLOCKS(B0Block, b0s);
    QTA_BLOCKS(BXBlock, bxs);
    QTA_BLOCKS(AccPBlock, accps);
    QTA_BLOCKS(AccXBlock, accxs);
    QTA_PRAGMA(HLS BIND_STORAGE variable=a0s type=ram_t2p impl=QTA_OPND_IMPL)
    QTA_PRAGMA(HLS BIND_STORAGE variable=b0s type=ram_t2p impl=QTA_OPND_IMPL)
#pragma HLS BIND_STORAGE variable=axs type=ram_t2p impl=bram
#pragma HLS BIND_STORAGE variable=bxs type=ram_t2p impl=bram
    QTA_PRAGMA(HLS BIND_STORAGE variable=accps type=ram_t2p impl=QTA_ACC_IMPL)
#pragma HLS BIND_STORAGE variable=accxs type=ram_1wnr impl=lutram
#pragma HLS ARRAY_PARTITION variable=axs type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=bxs type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=accps type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=accps type=complete dim=2
#pragma HLS ARRAY_PARTITION variable=accxs type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=accxs type=complete dim=2
#pragma HLS ARRAY_PARTITION variable=accxs type=complete dim=3
#pragma HLS AGGREGATE variable=a0s compact=bit
#pragma HLS AGGREGATE variable=axs compact=bit
#pragma HLS AGGREGATE variable=b0s compact=bit
#pragma HLS AGGREGATE variable=bxs compact=bit

    descriptors(a, b, c, scales, m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift, seed, batch,
                stride_a, stride_b, stride_c, conv_in, conv_out, conv_cin, conv_win, conv_dil, h_fetch, h_load,
                h_array, h_store, h_write, h_model, s_fetch, s_load, s_array, s_store, s_write);
    fetch<0>(rd0, h_fetch[0], s_fetch[0], ops[0], cold[0], scl[0], fcnt[0]);
    fetch<1>(rd1, h_fetch[1], s_fetch[1], ops[1], cold[1], scl[1], fcnt[1]);
    fetch<2>(rd2, h_fetch[2], s_fetch[2], ops[2], cold[2], scl[2], fcnt[2]);
    fetch<3>(rd3, h_fetch[3], s_fetch[3], ops[3], cold[3], scl[3], fcnt[3]);
    load(h_load, s_load, ops, a0s, axs, b0s, bxs, lcnt);
    array(h_array, s_array, a0s, axs, b0s, bxs, accps, accxs, pcnt);
    store(h_store, s_store, accps, accxs, cold, scl, wout, scnt, status, sat_count, amax);
    write<0>(wr0, h_write[0], s_write[0], wout[0], wcnt[0], done[0]);
    write<1>(wr1, h_write[1], s_write[1], wout[1], wcnt[1], done[1]);
    write<2>(wr2, h_write[2], s_write[2], wout[2], wcnt[2], done[2]);
    write<3>(wr3, h_write[3], s_write[3], wout[3], wcnt[3], done[3]);
    model(h_model, fcnt, lcnt, pcnt, scnt, wcnt, cycles_model);
    counter(done, cycles_measured);
}
