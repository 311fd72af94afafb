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
#include <type_traits>

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
constexpr int TSLOT = TROWS * TBEATS;  // beats per ping-pong slot of a port's row buffer
constexpr int SCALE_MAX = QTA_TILE_M_MAX > QTA_TILE_N_MAX ? QTA_TILE_M_MAX : QTA_TILE_N_MAX;
// The scale FIFO scl (fetch<0> -> store) must hold a whole block's scale vector: fetch<0> writes
// block b's scales before b's operands, and the store reads them only after the array released
// b's accumulators, so a vector longer than the FIFO deadlocks (review 2 B1). QTA_SCL_DEPTH
// (hardware.toml, BoardConfig.scale_fifo_depth) holds two, so fetch of b+1 does not wait either.
constexpr int SCALE_BEATS_MAX = (SCALE_MAX * 8 + BB - 1) / BB;
static_assert(QTA_SCL_DEPTH >= SCALE_BEATS_MAX, "scl must hold the largest scale vector of a block (review 2 B1)");
static_assert(QTA_SCL_DEPTH >= 2 * SCALE_BEATS_MAX, "scl holds two blocks' scale vectors (no fetch stall, review 2 S1)");
// Modelled cost of one m_axi burst beyond its beats (review S1): the burst loop's entry/exit and
// the first-beat latency of a read / the write response of a write. Every burst loop of the
// kernel sits in a non-pipelined row (tap) loop, so bursts do not overlap and each pays it.
constexpr uint32_t BURST_COST = QTA_BURST_OVERHEAD + QTA_DDR_LATENCY;

static_assert(P == 4, "four m_axi bundles rd0..3 / wr0..3");
static_assert(MS % P == 0 && MS >= 4 && (MS & (MS - 1)) == 0, "min_subarray: power of two, multiple of axi_ports");
static_assert(R >= 2 * MS && C >= 2 * MS, "at least two sub-arrays per side");
static_assert((R > C ? R : C) <= 2 * BB, "a feeder word spans at most two beats");
static_assert(SW % BB == 0, "a store word holds whole beats");
static_assert(2 * TROWS <= BB, "the transposer prefetches a column of its row slots while emitting the previous one, two bytes per cycle");
static_assert(ER == 1 || ER == 2, "epilogue rows");
static_assert(NAX == 1 || NAX == 2 || NAX == 4, "A side-bank pairs: one stream_of_blocks each (QTA_IF_AX*)");
static_assert(NBX == 1 || NBX == 2 || NBX == 4, "B side-bank pairs: one stream_of_blocks each (QTA_IF_BX*)");

// One hls::stream_of_blocks per pair of side banks (a stream of blocks cannot be partitioned):
// the processes take NAX (NBX) of them; QTA_IF_AX2 / QTA_IF_AX4 keep the declarations, locks and
// arguments of pairs 1 and 2..3 when they exist, QTA_AXk names pair k or, when it does not
// exist, pair 0 (only ever passed to a branch that NAX > k removes at compile time).
#if QTA_COLS / QTA_MIN_SUB / 2 >= 2
#define QTA_IF_AX2(...) __VA_ARGS__
#define QTA_AX1 ax1
#else
#define QTA_IF_AX2(...)
#define QTA_AX1 ax0
#endif
#if QTA_COLS / QTA_MIN_SUB / 2 >= 4
#define QTA_IF_AX4(...) __VA_ARGS__
#define QTA_AX2 ax2
#define QTA_AX3 ax3
#else
#define QTA_IF_AX4(...)
#define QTA_AX2 ax0
#define QTA_AX3 ax0
#endif
#if QTA_ROWS / QTA_MIN_SUB / 2 >= 2
#define QTA_IF_BX2(...) __VA_ARGS__
#define QTA_BX1 bx1
#else
#define QTA_IF_BX2(...)
#define QTA_BX1 bx0
#endif
#if QTA_ROWS / QTA_MIN_SUB / 2 >= 4
#define QTA_IF_BX4(...) __VA_ARGS__
#define QTA_BX2 bx2
#define QTA_BX3 bx3
#else
#define QTA_IF_BX4(...)
#define QTA_BX2 bx0
#define QTA_BX3 bx0
#endif

// Every internal word is a hand-packed ap_uint (review B2): what a memory or FIFO word holds is
// its bit width, with no dependence on how HLS disaggregates or aggregates structs.
typedef ap_uint<8 * R> AWord;        // A feeder word: lane i (bits 8i..8i+7) feeds physical row i
typedef ap_uint<8 * C> BWord;        // B feeder word: lane j feeds physical column j
typedef qta_beat_t Beat;             // one AXI beat, byte q at bits 8q..8q+7
typedef ap_uint<8 * SW> SWord;       // store word: MS INT32 or 4 MS INT8 outputs
typedef ap_uint<32 * C> AccRow;      // accumulator word: one row of a tap row, lane j = column j (INT32)
typedef ap_uint<32 * C * (NBB - 1)> AccXRow;  // the same row of tap rows 0..NBB-2 side by side

// Ping-pong blocks: the feeder banks of a step and the accumulators of a block. No block is
// partitioned (ARRAY_PARTITION/RESHAPE are not supported on hls::stream_of_blocks, UG1399): each
// is one memory whose accesses per cycle fit its two ports:
//   A0/B0   the array reads one word per cycle, the loader writes two (other slot);
//   AX/BX   one block per PAIR of side banks (two banks per memory, one port each for the array's
//           reads; the loader writes two words per cycle into one bank of the other slot);
//   AccP    the bottom tap row, one row word (C INT32) per address: the array does one
//           read-modify-write per cycle (every tap column delivers the same row: OS drain by
//           construction, WS after the de-skew below), the store reads ER rows of the other slot;
//   AccX    the other tap rows, one word of (NBB-1) x C INT32 per address, likewise.
typedef AWord A0Block[QTA_A_DEPTH];                // A bank of sub-array 0
typedef AWord AXBlock[2 * QTA_A_SIDE_DEPTH];       // a pair of A side banks (banks 2x+1, 2x+2)
typedef BWord B0Block[QTA_B_DEPTH];                // B bank of sub-array 0
typedef BWord BXBlock[2 * QTA_B_SIDE_DEPTH];       // a pair of B side banks
typedef AccRow AccPBlock[QTA_ACC_DEPTH];           // bottom tap row
typedef AccXRow AccXBlock[QTA_ACC_SIDE_DEPTH];     // tap rows 0..NBB-2

template <int W>
inline int8_t lane8(const ap_uint<W> &w, int i) {
#pragma HLS INLINE
    return (int8_t)(uint8_t)w.range(8 * i + 7, 8 * i);
}
template <int W>
inline uint8_t byte_at(const ap_uint<W> &w, uint32_t i) {  // runtime byte position: a mux
#pragma HLS INLINE
    return (uint8_t)(w >> (8 * i));
}

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
    uint64_t a_off, b_off;         // operand offsets of the batch item
    uint64_t c_row;                // byte offset of the block's first output row (m0, n0) (a counter)
    uint32_t hash0;                // (item * m + m0) * n + n0, modulo 2^32
    uint32_t cv_img, cv_ho, cv_wo;  // conv: pixel of row m0
    uint32_t cv_ky, cv_kx, cv_ci;   // conv: tap and channel of k0
};

// The control FIFOs carry only what their consumers read, as narrow as the ranges allow (review
// N3): a step's tile sizes are at most the tile limits (<= 1024), conv pixel coordinates 16 bits,
// tap coordinates 8 bits (the registers' own field widths).
struct StepF {  // fetchers: everything but the rounding hash
    uint32_t m0, n0, k0;
    uint16_t mt, nt, kt;
    bool first, last;
    uint64_t a_off, b_off, c_row;
    uint32_t cv_img;
    uint16_t cv_ho, cv_wo;
    uint8_t cv_ky, cv_kx;
    uint32_t cv_ci;
};
struct StepW {  // writers: where the block's output rows go
    uint16_t mt, nt;
    uint64_t c_row;
};
struct StepC {  // load, array, store: the tile sizes, the first chunk, the rounding hash
    uint16_t mt, nt, kt;
    bool first;
    uint32_t hash0;
};
static_assert(QTA_TILE_M_MAX < 65536 && QTA_TILE_N_MAX < 65536 && QTA_TILE_K_MAX < 65536, "16-bit tile sizes");

// The header goes to every process once per call as a sequence of 32-bit words (review N3: a
// 32-bit FIFO each instead of a 1.5 kbit one; each process keeps the fields it reads and
// synthesis drops the rest). HDR_WORDS cycles at the start of a call, inside call_overhead.
// The conv row steps dimg/dho/dwo have P + 1 = 5 entries each (static_assert(P == 4) above).
#define QTA_HDR_FIELDS(X)                                                                                     \
    X(ok) X(nblocks) X(nkc) X(m) X(n) X(k) X(lda) X(ldb) X(ldc) X(tm) X(tn) X(tk) X(ta) X(tb) X(os) X(out8)   \
    X(accum) X(stoch) X(conv) X(split) X(smode) X(shift) X(seed_hash) X(mult) X(eb) X(lgsr) X(lgsc) X(lglr)  \
    X(lglc) X(H) X(W) X(Ho) X(Wo) X(cin) X(kh) X(kw) X(cstride) X(pad) X(dsh) X(dimg[0]) X(dimg[1])          \
    X(dimg[2]) X(dimg[3]) X(dimg[4]) X(dho[0]) X(dho[1]) X(dho[2]) X(dho[3]) X(dho[4]) X(dwo[0]) X(dwo[1])    \
    X(dwo[2]) X(dwo[3]) X(dwo[4])
#define QTA_HDR_ONE(f) +1
constexpr int HDR_WORDS = 2 QTA_HDR_FIELDS(QTA_HDR_ONE);  // + the two words of the 64-bit scales offset
static_assert(HDR_WORDS < QTA_CALL_OVERHEAD, "call_overhead (hardware.toml) covers the header transfer");
typedef hls::stream<uint32_t> HdrStream;

inline void hdr_pack(const Hdr &h, uint32_t w[HDR_WORDS]) {
#pragma HLS INLINE
    int i = 2;
    w[0] = (uint32_t)h.scales;
    w[1] = (uint32_t)(h.scales >> 32);
#define QTA_HDR_PUT(f) w[i++] = (uint32_t)h.f;
    QTA_HDR_FIELDS(QTA_HDR_PUT);
#undef QTA_HDR_PUT
}

Hdr recv_hdr(HdrStream &hs) {
    uint32_t w[HDR_WORDS];
#pragma HLS ARRAY_PARTITION variable=w type=complete
hdr_words:
    for (int j = 0; j < HDR_WORDS; j++) {
#pragma HLS PIPELINE II=1
        w[j] = hs.read();
    }
    Hdr h;
    int i = 2;
    h.scales = (uint64_t)w[0] | ((uint64_t)w[1] << 32);
#define QTA_HDR_GET(f) h.f = (decltype(h.f))w[i++];
    QTA_HDR_FIELDS(QTA_HDR_GET);
#undef QTA_HDR_GET
    return h;
}

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

// Word `addr` of side-bank pair bp (compile-time after unrolling; pairs >= NX do not exist).
template <int NX, typename WordT>
inline WordT side_read(uint32_t bp, uint32_t addr, const WordT *s0, const WordT *s1, const WordT *s2,
                       const WordT *s3) {
#pragma HLS INLINE
    return (NX > 1 && bp == 1) ? s1[addr] : (NX > 2 && bp == 2) ? s2[addr] : (NX > 3 && bp == 3) ? s3[addr] : s0[addr];
}
template <int NX, typename WordT>
inline void side_write(uint32_t bp, uint32_t addr, const WordT &w, WordT *s0, WordT *s1, WordT *s2, WordT *s3) {
#pragma HLS INLINE
    if (NX > 1 && bp == 1) {
        s1[addr] = w;
    } else if (NX > 2 && bp == 2) {
        s2[addr] = w;
    } else if (NX > 3 && bp == 3) {
        s3[addr] = w;
    } else {
        s0[addr] = w;
    }
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
#pragma HLS ALLOCATION operation instances=mul limit=1
#pragma HLS ALLOCATION operation instances=udiv limit=1
#pragma HLS ALLOCATION operation instances=urem limit=1
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
    // review S11: accumulating batch items must not share C bytes (item i+1's fetchers would read
    // old C before item i's writers, other processes, have written it)
    ok = ok && !(batch > 1 && h.accum && (uint64_t)stride_c < ((uint64_t)(m - 1) * ldc + n) * h.eb);
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
                 uint32_t conv_cin, uint32_t conv_win, uint32_t conv_dil, HdrStream h_fetch[P],
                 HdrStream &h_load, HdrStream &h_array, HdrStream &h_store, HdrStream h_write[P],
                 HdrStream &h_model, hls::stream<StepF> s_fetch[P], hls::stream<StepC> &s_load,
                 hls::stream<StepC> &s_array, hls::stream<StepC> &s_store, hls::stream<StepW> s_write[P]) {
    // Once-per-call arithmetic (decode) and the per-step counters: one multiplier, one divider and
    // one remainder unit shared by all of them (the resource count assumes it, review B6, S9).
#pragma HLS ALLOCATION operation instances=mul limit=1
#pragma HLS ALLOCATION operation instances=udiv limit=1
#pragma HLS ALLOCATION operation instances=urem limit=1
    Hdr h = decode(a, b, c, scales, m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift, seed,
                   batch, stride_a, stride_b, stride_c, conv_in, conv_out, conv_cin, conv_win, conv_dil);
    uint32_t hw[HDR_WORDS];
#pragma HLS ARRAY_PARTITION variable=hw type=complete
    hdr_pack(h, hw);
hdr_send:
    for (int j = 0; j < HDR_WORDS; j++) {
#pragma HLS PIPELINE II=1
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            h_fetch[p].write(hw[j]);
            h_write[p].write(hw[j]);
        }
        h_load.write(hw[j]);
        h_array.write(hw[j]);
        h_store.write(hw[j]);
        h_model.write(hw[j]);
    }

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
    uint64_t c_mrow = c;  // c_off + m0 ldc eb: output rows by a counter (review S4)
    const uint64_t c_row_step = (uint64_t)tile_m * (h.out8 ? ldc : ldc << 2);
    uint32_t hash_item = 0, hash_row = 0;
    uint32_t cimg = 0, cho = 0, cwo = 0, cky = 0, ckx = 0, cci = 0;
    const uint32_t nsteps = h.nblocks * h.nkc;
steps:
    for (uint32_t t = 0; t < nsteps; t++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=4096
        // II=4 (review B7): the carried mixed-radix counters are ~7 dependent 32-bit operations;
        // one step feeds 100+ array cycles, so the step rate is irrelevant
#pragma HLS PIPELINE II=4
        Step st;
        st.m0 = m0; st.n0 = n0; st.k0 = k0;
        st.mt = umin(tile_m, m - m0); st.nt = umin(tile_n, n - n0); st.kt = umin(tile_k, k - k0);
        st.first = kc == 0;
        st.last = kc == h.nkc - 1;
        st.a_off = a_off; st.b_off = b_off; st.c_row = c_mrow + (h.out8 ? n0 : n0 << 2);
        st.hash0 = hash_row + n0;
        st.cv_img = cimg; st.cv_ho = cho; st.cv_wo = cwo;
        st.cv_ky = cky; st.cv_kx = ckx; st.cv_ci = cci;
        const StepF sf = {st.m0, st.n0, st.k0, (uint16_t)st.mt, (uint16_t)st.nt, (uint16_t)st.kt, st.first,
                          st.last, st.a_off, st.b_off, st.c_row, st.cv_img, (uint16_t)st.cv_ho, (uint16_t)st.cv_wo,
                          (uint8_t)st.cv_ky, (uint8_t)st.cv_kx, st.cv_ci};
        const StepW sw = {(uint16_t)st.mt, (uint16_t)st.nt, st.c_row};
        const StepC sc = {(uint16_t)st.mt, (uint16_t)st.nt, (uint16_t)st.kt, st.first, st.hash0};
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            s_fetch[p].write(sf);
            if (st.last) s_write[p].write(sw);
        }
        s_load.write(sc);
        s_array.write(sc);
        if (st.last) s_store.write(sc);
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
                    c_mrow += c_row_step;
                    hash_row += row_hash_step;
                    mixed_add(cimg, cho, cwo, tm_img, tm_ho, tm_wo, h.Ho, h.Wo);
                } else {
                    m0 = 0; cimg = 0; cho = 0; cwo = 0;
                    item++;
                    a_off += stride_a; b_off += stride_b; c_off += stride_c;
                    c_mrow = c_off;
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
// one burst per row. Returns its modelled cycles: per row the beats, the burst loop's entry/exit
// and the first-beat latency (review S1: the row loop is not pipelined, so a row's read request
// is issued only after the previous row's beats arrived; BURST_COST).
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
            out.write(rd[base + e]);
        }
        base += stride;
        beats += nb + BURST_COST;
    }
    return beats;
}

// The rows m0 + r (r = PORT (mod P)) of the implicit im2col matrix of an NHWC map: for each
// output pixel the k range [k0, k0 + kt) of its window, one burst per tap (cin-byte pixel
// segments), zero beats for taps in the padding or between dilated input pixels.
template <int PORT>
uint32_t fetch_conv_rows(const qta_beat_t *rd, hls::stream<Beat> &out, const Hdr &h, const StepF &st) {
#pragma HLS INLINE
    uint32_t img = st.cv_img, ho = st.cv_ho, wo = st.cv_wo;
    mixed_add(img, ho, wo, h.dimg[PORT], h.dho[PORT], h.dwo[PORT], h.Ho, h.Wo);
    const int32_t hmax = (int32_t)((h.H - 1) << h.dsh), wmax = (int32_t)((h.W - 1) << h.dsh);
    const uint32_t dmask = (1u << h.dsh) - 1;

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
                    out.write(rd[base + e]);
                }
            } else {
            pad_beats:
                for (uint32_t e = 0; e < nbt; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=TBEATS
#pragma HLS PIPELINE II=1
                    out.write(Beat(0u));
                }
            }
            beats += nbt + BURST_COST;  // every tap, also a padding tap (an over-estimate there)
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

// The scale sink of the fetchers that read no scales: an empty object, not a stream, so no FIFO
// is declared that nothing writes or reads. fetch_port's call of its write lies in a branch
// whose condition is false at compile time (SCALES); C++14 has no `if constexpr`, so the call
// must still compile.
struct NoScales {
    void write(const Beat &) {}
};

// Fetch process of bundle gmem<PORT>: per step the scales of a new block (SCALES: port 0), the A
// and B rows of the step, and for accumulate the old C rows of a finished block (as store words).
// Reports per step the modelled cycles of its operand bursts; the old C rows are the store's
// (the store reports them with its writers' bursts, review S2/S12). ScaleSink: the scale FIFO,
// or NoScales for a fetcher that reads none (SCALES, from the type: the two cannot disagree).
template <int PORT, class ScaleSink>
void fetch_port(const qta_beat_t *rd, HdrStream &hs, hls::stream<StepF> &ss, hls::stream<Beat> &ops,
                hls::stream<SWord> &cold, ScaleSink &scl, hls::stream<uint32_t> &cnt) {
#pragma HLS INLINE
    constexpr bool SCALES = !std::is_same<ScaleSink, NoScales>::value;
    const Hdr h = recv_hdr(hs);
fetch_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
    fetch_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            const StepF st = ss.read();
            uint32_t beats = 0;
            if (SCALES && st.first && h.out8 && h.smode != 0) {
                // the block's (mult, shift) pairs: one contiguous burst on port 0 (review S5)
                const uint32_t cnt_s = h.smode == 1 ? st.mt : st.nt, idx0 = h.smode == 1 ? st.m0 : st.n0;
                const uint32_t nsb = ceil_shift(cnt_s * 8, LGBB);
                const uint64_t base = (h.scales + (uint64_t)idx0 * 8) >> LGBB;
            scale_beats:
                for (uint32_t e = 0; e < nsb; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=SCALE_BEATS_MAX
#pragma HLS PIPELINE II=1
                    scl.write(rd[base + e]);
                }
                beats += nsb + BURST_COST;
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
            cnt.write(beats);  // before the old C: the array's last step does not wait for it
            if (st.last && h.accum) {
                const uint32_t ldc_b = h.out8 ? h.ldc : h.ldc << 2;  // eb = 1 or 4: shifts, no multiplier
                const uint32_t nbc = ceil_shift(h.out8 ? st.nt : st.nt << 2, LGBB);
                uint64_t base = (st.c_row + (uint64_t)PORT * ldc_b) >> LGBB;  // PORT: a constant
            cold_rows:
                for (uint32_t r = PORT; r < st.mt; r += P) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=QTA_TILE_M_MAX/P
                    SWord w;
                cold_beats:
                    for (uint32_t e = 0; e < nbc; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_N_MAX*4/BB
#pragma HLS PIPELINE II=1
                        const Beat bt = rd[base + e];
                        const uint32_t slot = e & (SWB - 1);
                        for (int q = 0; q < SWB; q++) {
#pragma HLS UNROLL
                            if ((uint32_t)q == slot) w.range(8 * BB * q + 8 * BB - 1, 8 * BB * q) = bt;
                        }
                        if (slot == SWB - 1 || e == nbc - 1) cold.write(w);
                    }
                    base += (uint64_t)(ldc_b >> LGBB) * P;
                }
            }
        }
    }
}

// The fetch processes: port 0 also reads the scales (one stream to the store), ports 1..3 do not.
// Every runtime multiply of a fetcher is in its per-row / per-tap control code (none in an II=1
// loop): one shared multiplier per fetcher (the resource count assumes it, review B6).
template <int PORT>
void fetch(const qta_beat_t *rd, HdrStream &hs, hls::stream<StepF> &ss, hls::stream<Beat> &ops,
           hls::stream<SWord> &cold, hls::stream<Beat> &scl, hls::stream<uint32_t> &cnt) {
#pragma HLS ALLOCATION operation instances=mul limit=1
    static_assert(PORT == 0, "the scales are read on port 0");
    fetch_port<PORT>(rd, hs, ss, ops, cold, scl, cnt);
}
template <int PORT>
void fetch(const qta_beat_t *rd, HdrStream &hs, hls::stream<StepF> &ss, hls::stream<Beat> &ops,
           hls::stream<SWord> &cold, hls::stream<uint32_t> &cnt) {
#pragma HLS ALLOCATION operation instances=mul limit=1
    static_assert(PORT != 0, "port 0 reads the scales");
    NoScales none;
    fetch_port<PORT>(rd, hs, ss, ops, cold, none, cnt);
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

Lay layout_a(const Hdr &h, const StepC &st) {
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

Lay layout_b(const Hdr &h, const StepC &st) {  // words are k-slices of C columns of op(B)
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
#pragma HLS ALLOCATION operation instances=mul limit=1
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
uint32_t load_operand(hls::stream<Beat> ops[P], const Lay &ly, WordT prim[D0], WordT s0[2 * DX], WordT s1[2 * DX],
                      WordT s2[2 * DX], WordT s3[2 * DX], Beat tb0[P][2 * TSLOT], Beat tb1[P][2 * TSLOT]) {
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
        // Row buffers (review B3): per port two copies tb0/tb1, the slot in the address MSB. Each
        // copy sees per cycle one write (the fill, both copies) and one read (the emit: copy 0 at
        // rd0 / the transposer's address, copy 1 at the beat after), each from its own port p
        // (compile-time); the emit then selects ports rho, rho + 1 among the read registers.
        const bool tpre = !ly.natural && i < (uint32_t)TROWS;  // transposer prefetch cycle
        const uint32_t o = xw << ly.lgw, e0 = o >> LGBB, sh = o & (BB - 1);  // natural: word xw
        const uint32_t e1 = (e0 + 1 < (uint32_t)TBEATS) ? e0 + 1 : e0;
        const uint32_t te = (i - TROWS) << 1, tcol = te >> LGBB, tjj = (te & (BB - 1)) >> 1;  // transposer
        const bool tnext = !ly.natural && !tpre && tjj < (uint32_t)TROWS && tcol + 1 < (uint32_t)TBEATS;
        const uint32_t ra0 = ly.natural ? e0 : (tpre ? i * TBEATS : (tnext ? tjj * TBEATS + tcol + 1 : 0u));
        const uint32_t ebase = eb * TSLOT, fbase = fb * TSLOT;
        Beat r0[P], r1[P];
#pragma HLS ARRAY_PARTITION variable=r0 type=complete
#pragma HLS ARRAY_PARTITION variable=r1 type=complete
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            r0[p] = tb0[p][ebase + ra0];
            r1[p] = tb1[p][ebase + e1];
        }
        // fill: one beat per port per cycle, rows in fetch order
        for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
            const uint32_t fp = ph < ly.ngroups ? (fill_last ? pz.fill_last[p] : pz.fill_full[p]) : 0;
            if (i < fp) {
                const Beat x = ops[p].read();
                tb0[p][fbase + fslot[p] * TBEATS + fbeat[p]] = x;
                tb1[p][fbase + fslot[p] * TBEATS + fbeat[p]] = x;
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
                for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                    const Beat w0 = rho == 0 ? r0[y] : r0[2 + y];
                    const Beat w1 = rho == 0 ? r1[y] : r1[2 + y];
                    uint8_t win[2 * BB];
#pragma HLS ARRAY_PARTITION variable=win type=complete
                    for (int q = 0; q < BB; q++) {
#pragma HLS UNROLL
                        win[q] = (uint8_t)w0.range(8 * q + 7, 8 * q);
                        win[BB + q] = (uint8_t)w1.range(8 * q + 7, 8 * q);
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
                    cur[p][i] = r0[p];
                }
                write = false;
            } else {
                // transposer: words e, e + 1 = bytes e, e + 1 of the W stored rows of group ex
                const uint32_t e = te, jj = tjj;
                for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                    for (int w = 0; w < L; w++) {
#pragma HLS UNROLL
                        const bool ok = (uint32_t)w < W && (ex << ly.lgw) + w < ly.nrows;
                        const int slot = (w >> LGP) < TROWS ? (w >> LGP) : 0;
                        v[y][w] = ok ? (int8_t)byte_at(cur[w & (P - 1)][slot], (e & (BB - 1)) + y) : (int8_t)0;
                    }
                }
                val[1] = e + 1 < ly.seg;
                if (tnext) {
                    for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                        nxt[p][jj] = r0[p];
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
                        word.range(8 * l + 7, 8 * l) = (uint8_t)v[y][l & (W - 1)];
                    }
                    if (bank == 0) {
                        prim[addr + y] = word;
                    } else {
                        side_write<NX>((bank - 1) >> 1, ((bank - 1) & 1) * DX + addr + y, word, s0, s1, s2, s3);
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

void load(HdrStream &hs, hls::stream<StepC> &ss, hls::stream<Beat> ops[P], QTA_BLOCKS(A0Block, ) &a0s,
          QTA_BLOCKS(AXBlock, ) &ax0s QTA_IF_AX2(, QTA_BLOCKS(AXBlock, ) &ax1s) QTA_IF_AX4(, QTA_BLOCKS(AXBlock, ) &ax2s, QTA_BLOCKS(AXBlock, ) &ax3s),
          QTA_BLOCKS(B0Block, ) &b0s,
          QTA_BLOCKS(BXBlock, ) &bx0s QTA_IF_BX2(, QTA_BLOCKS(BXBlock, ) &bx1s) QTA_IF_BX4(, QTA_BLOCKS(BXBlock, ) &bx2s, QTA_BLOCKS(BXBlock, ) &bx3s),
          hls::stream<uint32_t> &cnt) {
    const Hdr h = recv_hdr(hs);
    // the row buffers of the beat transposer: per port two slots of TROWS rows
    // (local arrays, not blocks: partitioning them by port is supported; two copies, see load_operand)
    Beat tb0[P][2 * TSLOT], tb1[P][2 * TSLOT];
#pragma HLS ARRAY_PARTITION variable=tb0 type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=tb1 type=complete dim=1
#pragma HLS BIND_STORAGE variable=tb0 type=ram_t2p impl=bram
#pragma HLS BIND_STORAGE variable=tb1 type=ram_t2p impl=bram
load_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
    load_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            const StepC st = ss.read();
            QTA_WRITE_LOCK(A0Block, a0, a0s);
            QTA_WRITE_LOCK(AXBlock, ax0, ax0s);
            QTA_IF_AX2(QTA_WRITE_LOCK(AXBlock, ax1, ax1s);)
            QTA_IF_AX4(QTA_WRITE_LOCK(AXBlock, ax2, ax2s); QTA_WRITE_LOCK(AXBlock, ax3, ax3s);)
            QTA_WRITE_LOCK(B0Block, b0, b0s);
            QTA_WRITE_LOCK(BXBlock, bx0, bx0s);
            QTA_IF_BX2(QTA_WRITE_LOCK(BXBlock, bx1, bx1s);)
            QTA_IF_BX4(QTA_WRITE_LOCK(BXBlock, bx2, bx2s); QTA_WRITE_LOCK(BXBlock, bx3, bx3s);)
            const Lay la = layout_a(h, st), lb = layout_b(h, st);
            uint32_t it = load_operand<R, AWord, NAX, QTA_A_DEPTH, QTA_A_SIDE_DEPTH>(ops, la, a0, ax0, QTA_AX1, QTA_AX2,
                                                                                   QTA_AX3, tb0, tb1);
            it += load_operand<C, BWord, NBX, QTA_B_DEPTH, QTA_B_SIDE_DEPTH>(ops, lb, b0, bx0, QTA_BX1, QTA_BX2,
                                                                           QTA_BX3, tb0, tb1);
            cnt.write(it);
        }
    }
}

// ---------------------------------------------------------------------------------- array

// Per-call configuration of the array, as scalars set once per call: every per-PE or per-lane
// constant (boundary selects, lane skews, tap sub-arrays) is a function of these and of the
// compile-time PE/lane index, so no per-call array has to be partitioned (review S6).
struct ArrayCfg {
    bool os;                  // output-stationary (else weight-stationary)
    uint32_t ea, eb;          // sub-array exponents: side by side (A), stacked (B)
    uint32_t lgsr, lgsc;      // log2 of the sub-array sides
    uint32_t lglr, lglc;      // log2 of the logical sides
    uint32_t amask, bmask;    // A / B boundaries active: b & mask == 0
};

ArrayCfg array_cfg(const Hdr &h) {
    ArrayCfg ac;
    const int s = h.split;
    ac.os = h.os;
    ac.ea = s > 0 ? s : 0;
    ac.eb = s < 0 ? -s : 0;
    ac.lgsr = h.lgsr;
    ac.lgsc = h.lgsc;
    ac.lglr = h.lglr;
    ac.lglc = h.lglc;
    ac.amask = (1u << (SMAXC - ac.ea)) - 1;
    ac.bmask = (1u << (SMAXR - ac.eb)) - 1;
    return ac;
}

// Compile-time boundary/lane index b, i, j; per-call scalars: these are the 2:1 selects and
// per-lane constants of the PEs.
inline bool a_act(const ArrayCfg &ac, int b) { return ((uint32_t)b & ac.amask) == 0; }
inline bool b_act(const ArrayCfg &ac, int b) { return ((uint32_t)b & ac.bmask) == 0; }
inline uint32_t a_q(const ArrayCfg &ac, int b) { return (uint32_t)b >> (SMAXC - ac.ea); }
inline uint32_t b_p(const ArrayCfg &ac, int b) { return (uint32_t)b >> (SMAXR - ac.eb); }
inline bool a_edge_col(const ArrayCfg &ac, int j) { return (j & (MS - 1)) == 0 && a_act(ac, j >> LGMS); }
inline bool b_edge_row(const ArrayCfg &ac, int i) { return (i & (MS - 1)) == 0 && b_act(ac, i >> LGMS); }
// tap row t (below physical row (t + 1) MS - 1) is the bottom of a sub-array, and which one
inline bool tap_act(const ArrayCfg &ac, int t) { return (((uint32_t)(t + 1) * MS) & ((1u << ac.lgsr) - 1)) == 0; }
inline uint32_t tap_p(const ArrayCfg &ac, int t) { return (((uint32_t)(t + 1) * MS) >> ac.lgsr) - 1; }
// skew of lane i at A boundary b (WS: the same), of lane j at B boundary b (WS weights: none)
inline uint32_t a_dly(const ArrayCfg &ac, int b, int i) {
    return b == 0 ? ((uint32_t)i & ((1u << ac.lgsr) - 1)) : (uint32_t)i;
}
inline uint32_t b_dly(const ArrayCfg &ac, int b, int j) {
    return !ac.os ? 0u : (b == 0 ? ((uint32_t)j & ((1u << ac.lgsc) - 1)) : (uint32_t)j);
}

// One feeder of boundary b (compile-time after unrolling) of the A side (IS_A: L = R lanes, the
// A banks) or the B side (L = C lanes): the bank word at addr when `fetch`, else zeros; each
// lane skewed by its per-call delay through its history (LUTRAM, written every cycle, read at
// the skew), zero until the delay has passed (t = cycles since the feed started). The A and B
// feeders are this one function (they were twins).
template <int L, int NX, int SD, typename WordT, bool IS_A>
inline void feeder(const ArrayCfg &ac, int b, bool fetch, uint32_t addr, uint32_t t, uint32_t hp, const WordT *prim,
                   const WordT *s0, const WordT *s1, const WordT *s2, const WordT *s3, uint8_t hist[L][L],
                   int8_t ev[L]) {
#pragma HLS INLINE
    WordT w = 0;
    if (fetch) w = b == 0 ? prim[addr] : side_read<NX>((b - 1) >> 1, ((b - 1) & 1) * SD + addr, s0, s1, s2, s3);
    for (int i = 0; i < L; i++) {
#pragma HLS UNROLL
        const uint32_t d = IS_A ? a_dly(ac, b, i) : b_dly(ac, b, i);
        const int8_t old = (int8_t)hist[i][(hp - d) & (L - 1)];
        ev[i] = d == 0 ? lane8(w, i) : (t >= d ? old : (int8_t)0);
        hist[i][hp & (L - 1)] = (uint8_t)lane8(w, i);
    }
}

// One step of the PE array, OS or WS: ONE pipelined loop over ONE set of R x C PEs, each with one
// multiply-add whose operands are per-call mode selects (review B1):
//   product = a_in * (os ? b_in : weight),   sum = (os ? acc : (top of sub-array ? 0 : acc above)) + product
// The schedule is a sequence of folds (fo, fc) (OS: fold row x fold column, WS: K fold x fold
// column) of fl cycles each:
//   OS  fl = kt + SR + SC - 2; at a fold's last cycle the accumulators move to the drain
//       registers and restart; the drain runs during the first SR cycles of the next fold (and
//       SR cycles after the last fold);
//   WS  fl = 2 SR + SC + mt - 2: SR weight-load cycles (weights shift down from the top of each
//       sub-array, the A path and partial sums are zeroed), then mt + SR + SC - 2 stream cycles.
// Every address is a counter (no runtime multiply in the loop, review S4). Returns its cycles.
uint32_t array_step(const ArrayCfg &ac, const StepC &st, const A0Block &a0, const AXBlock &ax0, const AXBlock &ax1,
                    const AXBlock &ax2, const AXBlock &ax3, const B0Block &b0, const BXBlock &bx0,
                    const BXBlock &bx1, const BXBlock &bx2, const BXBlock &bx3, AccPBlock &accp, AccXBlock &accx) {
    const bool os = ac.os;
    const uint32_t sr = 1u << ac.lgsr, sc = 1u << ac.lgsc;
    const uint32_t LGLR = ac.lglr, LGLC = ac.lglc;  // log2 of the logical sides
    const uint32_t alen = os ? st.kt : st.mt;  // A words per fold in a bank
    const uint32_t lp = os ? 0u : sr;          // weight-load cycles at the start of a fold
    const uint32_t nfo = os ? ceil_shift(st.mt, LGLR) : ceil_shift(st.kt, ac.lgsr);
    const uint32_t nfc = ceil_shift(st.nt, LGLC);
    const uint32_t nga = ceil_shift(st.mt, ac.ea > 0 || ac.eb == 0 ? (uint32_t)LGR : ac.lgsr);  // OS A groups
    const uint32_t ngb = ceil_shift(st.nt, ac.eb > 0 || ac.ea == 0 ? (uint32_t)LGC : ac.lgsc);  // B groups
    const uint32_t fl = lp + alen + sr + sc - 2;
    const uint32_t total = nfo * nfc * fl + (os ? sr : 0u);  // once per step

    int8_t areg[R][C], breg[R][C];   // A moving right; B moving down (OS) or the weight (WS)
    int32_t acc[R][C], pout[R][C];   // accumulator / partial sum; OS drain register
#pragma HLS ARRAY_PARTITION variable=areg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=breg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=acc type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=pout type=complete dim=0
    uint8_t ha[NBA][R][R], hb[NBB][C][C];  // skew histories (LUTRAM per lane), read masked
#pragma HLS ARRAY_PARTITION variable=ha type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=ha type=complete dim=2
#pragma HLS ARRAY_PARTITION variable=hb type=complete dim=1
#pragma HLS ARRAY_PARTITION variable=hb type=complete dim=2
    int8_t ea_v[NBA][R], eb_v[NBB][C];  // edge inputs of this cycle
#pragma HLS ARRAY_PARTITION variable=ea_v type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=eb_v type=complete dim=0
    int32_t dsk[NBB][C][C - 1];  // WS de-skew shift registers: column j uses C - 1 - j stages
#pragma HLS ARRAY_PARTITION variable=dsk type=complete dim=0
    for (int i = 0; i < R; i++) {
#pragma HLS UNROLL
        for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
            areg[i][j] = 0; breg[i][j] = 0; acc[i][j] = 0; pout[i][j] = 0;
        }
    }
    for (int t = 0; t < NBB; t++) {
#pragma HLS UNROLL
        for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
            for (int k = 0; k < C - 1; k++) {
#pragma HLS UNROLL
                dsk[t][j][k] = 0;
            }
        }
    }
    // fold sequencer: cycle c of fold (fo, fc); every base address a counter
    uint32_t c = 0, fo = 0, fc = 0, hp = 0;
    uint32_t abase = 0;               // fo * alen: A word of the fold
    uint32_t bbase = 0;               // fc * kt: B word of the fold
    uint32_t wk0 = sr - 1;            // WS: (fo << lgsr) + SR - 1, the K index of the first weight row
    uint32_t cbase = 0;               // WS: fc * mt, accumulator row base of the fold
    uint32_t fidx = 0;                // OS: fo * nfc + fc, the fold's accumulator block
    uint32_t dd = sr, dbase = 0;      // OS drain: cycle (sr: idle), accumulator block being drained
array_cycles:
    for (uint32_t cyc = 0; cyc < total; cyc++) {
#pragma HLS LOOP_TRIPCOUNT min=64 max=32768
#pragma HLS PIPELINE II=1
#pragma HLS DEPENDENCE variable=accp type=inter false
#pragma HLS DEPENDENCE variable=accx type=inter false
        const bool infold = cyc < total - (os ? sr : 0u);
        const bool draining = os && dd < sr;
        const uint32_t il = sr - 1 - dd;  // OS: local row the taps deliver this drain cycle
        // ---- OS drain values of this cycle (before the shift), then shift down inside each sub-array
        int32_t dv[NBB][C];
#pragma HLS ARRAY_PARTITION variable=dv type=complete dim=0
        for (int t = 0; t < NBB; t++) {
#pragma HLS UNROLL
            for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                dv[t][j] = pout[(t + 1) * MS - 1][j];
            }
        }
        if (draining) {
            for (int i = R - 1; i >= 0; i--) {
#pragma HLS UNROLL
                const bool top = ((uint32_t)i & (sr - 1)) == 0;
                for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                    pout[i][j] = top ? 0 : pout[i - 1 >= 0 ? i - 1 : 0][j];
                }
            }
        }
        // ---- feeders: A one word per active bank per cycle (OS: every fold cycle, WS: stream
        //      cycles), skewed per lane through the history; B one word per active bank (OS: every
        //      fold cycle, skewed; WS: the weight rows of the load phase, not skewed)
        const bool afeed = infold && c >= lp;
        const uint32_t tau = c - lp;
        const uint32_t bk = os ? c : wk0 - c;
        const bool bfeed = infold && (os || c < lp);
        for (int b = 0; b < NBA; b++) {
#pragma HLS UNROLL
            if (!a_act(ac, b)) continue;
            const bool gok = !os || (fo << ac.ea) + a_q(ac, b) < nga;
            feeder<R, NAX, QTA_A_SIDE_DEPTH, AWord, true>(ac, b, afeed && tau < alen && gok, abase + tau, tau, hp, a0,
                                                          ax0, ax1, ax2, ax3, ha[b], ea_v[b]);
        }
        for (int b = 0; b < NBB; b++) {
#pragma HLS UNROLL
            if (!b_act(ac, b)) continue;
            const uint32_t g = (fc << ac.eb) + b_p(ac, b);
            feeder<C, NBX, QTA_B_SIDE_DEPTH, BWord, false>(ac, b, bfeed && bk < st.kt && g < ngb, bbase + bk, c, hp,
                                                           b0, bx0, bx1, bx2, bx3, hb[b], eb_v[b]);
        }
        if (infold) hp++;
        // ---- PEs: one multiply-add each; A from the left neighbour or a boundary feeder, B from
        //      above or a boundary feeder (2:1 selects), mode selects on the multiplier and adder inputs
        const bool fold_end = c == fl - 1;
        const bool wload = !os && c < lp;
        if (infold) {
            for (int i = R - 1; i >= 0; i--) {
#pragma HLS UNROLL
                for (int j = C - 1; j >= 0; j--) {
#pragma HLS UNROLL
                    const int8_t av = a_edge_col(ac, j) ? ea_v[j >> LGMS][i] : areg[i][j - 1 >= 0 ? j - 1 : 0];
                    const int8_t bin = b_edge_row(ac, i) ? eb_v[i >> LGMS][j] : breg[i - 1 >= 0 ? i - 1 : 0][j];
                    const int8_t bop = os ? bin : breg[i][j];
                    const int32_t add = os ? acc[i][j] : (b_edge_row(ac, i) ? 0 : acc[i - 1 >= 0 ? i - 1 : 0][j]);
                    // the INT8 x INT8 product on a DSP48, not fabric (review 2 S7; the gate's DSP >= R x C
                    // check would only see it after a synthesis run)
                    const int32_t prod = (int16_t)av * (int16_t)bop;
#pragma HLS BIND_OP variable=prod op=mul impl=dsp
                    const int32_t sum = add + prod;
                    areg[i][j] = wload ? (int8_t)0 : av;
                    if (os || wload) breg[i][j] = bin;
                    acc[i][j] = (os ? fold_end : wload) ? 0 : sum;
                    if (os && fold_end) pout[i][j] = sum;
                }
            }
        }
        // ---- taps: ONE read-modify-write of one accumulator row word per cycle (and of the other
        //      tap rows' word in stacked modes). OS: the drained local row il of fold (drow, dcol),
        //      the same address for every tap column. WS: column j of a tap row holds output row m
        //      after stream cycle m + SR + j - 1; a de-skew of C - 1 - j cycles per column makes every
        //      column deliver row tau - SR - (C - 2) at stream cycle tau (shift registers).
        //      Lanes past the tile (rows >= mt in side-by-side OS, columns >= nt) are written too:
        //      each lane is the only place its (row, column) lives and the store never reads them.
        int32_t tv[NBB][C];
#pragma HLS ARRAY_PARTITION variable=tv type=complete dim=0
        for (int t = 0; t < NBB; t++) {
#pragma HLS UNROLL
            const int bt = (t + 1) * MS - 1;
            for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                const int len = C - 1 - j;  // de-skew stages of column j
                const int32_t ws_out = len == 0 ? acc[bt][j] : dsk[t][j][len - 1 >= 0 ? len - 1 : 0];
                for (int k = C - 2; k > 0; k--) {
#pragma HLS UNROLL
                    if (k < len) dsk[t][j][k] = dsk[t][j][k - 1];
                }
                if (len > 0) dsk[t][j][0] = acc[bt][j];
                tv[t][j] = os ? dv[t][j] : ws_out;
            }
        }
        const int32_t mrow = (int32_t)tau - (int32_t)sr - (C - 2);  // WS: the row the taps deliver
        const bool wstream = !os && infold && c >= lp && mrow >= 0 && (uint32_t)mrow < st.mt;
        const bool assign = st.first && (os || fo == 0);
        const uint32_t taddr = os ? dbase + il : cbase + (uint32_t)mrow;
        if (os ? draining : wstream) {
            const AccRow old = accp[taddr];
            AccRow nw;
            for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                const uint32_t o = (uint32_t)old.range(32 * j + 31, 32 * j);
                nw.range(32 * j + 31, 32 * j) = assign ? (uint32_t)tv[NBB - 1][j] : o + (uint32_t)tv[NBB - 1][j];
            }
            accp[taddr] = nw;
            if (ac.eb > 0) {  // stacked: the other tap rows (capacity: acc_side_depth)
                const AccXRow oldx = accx[taddr];
                AccXRow nx;
                for (int t = 0; t < NBB - 1; t++) {
#pragma HLS UNROLL
                    for (int j = 0; j < C; j++) {
#pragma HLS UNROLL
                        const int lo = 32 * (t * C + j);
                        const uint32_t o = (uint32_t)oldx.range(lo + 31, lo);
                        nx.range(lo + 31, lo) = assign ? (uint32_t)tv[t][j] : o + (uint32_t)tv[t][j];
                    }
                }
                accx[taddr] = nx;
            }
        }
        if (draining) dd++;
        // ---- fold sequencer (counters only)
        if (infold) {
            if (fold_end) {
                c = 0;
                if (os) {
                    dd = 0;
                    dbase = fidx << ac.lgsr;
                }
                fidx++;
                if (fc == nfc - 1) {
                    fc = 0; bbase = 0; cbase = 0;
                    fo++;
                    abase += alen;
                    wk0 += sr;
                } else {
                    fc++;
                    bbase += st.kt;
                    cbase += st.mt;
                }
            } else {
                c++;
            }
        }
    }
    return total;
}

void array(HdrStream &hs, hls::stream<StepC> &ss, QTA_BLOCKS(A0Block, ) &a0s,
           QTA_BLOCKS(AXBlock, ) &ax0s QTA_IF_AX2(, QTA_BLOCKS(AXBlock, ) &ax1s) QTA_IF_AX4(, QTA_BLOCKS(AXBlock, ) &ax2s, QTA_BLOCKS(AXBlock, ) &ax3s),
           QTA_BLOCKS(B0Block, ) &b0s,
           QTA_BLOCKS(BXBlock, ) &bx0s QTA_IF_BX2(, QTA_BLOCKS(BXBlock, ) &bx1s) QTA_IF_BX4(, QTA_BLOCKS(BXBlock, ) &bx2s, QTA_BLOCKS(BXBlock, ) &bx3s),
           QTA_BLOCKS(AccPBlock, ) &accps, QTA_BLOCKS(AccXBlock, ) &accxs, hls::stream<uint32_t> &cnt) {
    const Hdr h = recv_hdr(hs);
    const ArrayCfg ac = array_cfg(h);
array_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
        QTA_WRITE_LOCK(AccPBlock, accp, accps);
        QTA_WRITE_LOCK(AccXBlock, accx, accxs);
    array_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
            const StepC st = ss.read();
            QTA_READ_LOCK(A0Block, a0, a0s);
            QTA_READ_LOCK(AXBlock, ax0, ax0s);
            QTA_IF_AX2(QTA_READ_LOCK(AXBlock, ax1, ax1s);)
            QTA_IF_AX4(QTA_READ_LOCK(AXBlock, ax2, ax2s); QTA_READ_LOCK(AXBlock, ax3, ax3s);)
            QTA_READ_LOCK(B0Block, b0, b0s);
            QTA_READ_LOCK(BXBlock, bx0, bx0s);
            QTA_IF_BX2(QTA_READ_LOCK(BXBlock, bx1, bx1s);)
            QTA_IF_BX4(QTA_READ_LOCK(BXBlock, bx2, bx2s); QTA_READ_LOCK(BXBlock, bx3, bx3s);)
            const uint32_t it = array_step(ac, st, a0, ax0, QTA_AX1, QTA_AX2, QTA_AX3, b0, bx0, QTA_BX1, QTA_BX2,
                                           QTA_BX3, accp, accx);
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

void store(HdrStream &hs, hls::stream<StepC> &ss, QTA_BLOCKS(AccPBlock, ) &accps,
           QTA_BLOCKS(AccXBlock, ) &accxs, hls::stream<SWord> cold[P], hls::stream<Beat> &scl,
           hls::stream<SWord> wout[P], hls::stream<uint32_t> &cnt, uint32_t *status, uint32_t *sat_count,
           uint32_t *amax) {
    const Hdr h = recv_hdr(hs);
    const int s = h.split;
    int32_t smul[SCALE_MAX];
    uint8_t ssh[SCALE_MAX];
#pragma HLS ARRAY_PARTITION variable=smul type=cyclic factor=MS
#pragma HLS ARRAY_PARTITION variable=ssh type=cyclic factor=MS
    // amax and sat_count (review B4): per iteration the ER x MS lanes are reduced by a max tree and
    // a sum of the saturation flags; the only loop-carried operations are one compare/select and
    // one 64-bit add (the 32-bit cap is applied after the loop).
    uint64_t nsat = 0;
    uint32_t mx = 0;
    const uint32_t ers = ER * h.n;
store_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
        const StepC st = ss.read();
        QTA_READ_LOCK(AccPBlock, accp, accps);
        QTA_READ_LOCK(AccXBlock, accx, accxs);
        uint32_t iters = 0;
        const bool scaled = h.out8 && h.smode != 0;
        if (scaled) {
            const uint32_t cnt_s = h.smode == 1 ? st.mt : st.nt, nsb = ceil_shift(cnt_s * 8, LGBB);
        scales:
            for (uint32_t e = 0; e < nsb; e++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=SCALE_BEATS_MAX
#pragma HLS PIPELINE II=1
                const Beat bt = scl.read();
                for (int q = 0; q < BB / 8; q++) {
#pragma HLS UNROLL
                    const uint32_t idx = e * (BB / 8) + q;
                    if (idx >= (uint32_t)SCALE_MAX) continue;
                    smul[idx] = (int32_t)(uint32_t)bt.range(64 * q + 31, 64 * q);
                    ssh[idx] = (uint8_t)bt.range(64 * q + 39, 64 * q + 32);
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
            // Output row r lives on port r mod P. m0 is a multiple of P (tiles are beat multiples,
            // BB >= 8, or start at 0), so row (rp ER + v) is on port pq + v with pq = (rp ER) mod P
            // a multiple of ER: each FIFO cold[x] / wout[x] has ONE access site per iteration (v =
            // x mod ER), selected by the runtime pq (review B4).
            const uint32_t pq = (rp << LGER) & (P - 1);
            uint32_t lab[ER * MS];
            bool lsat[ER * MS];
#pragma HLS ARRAY_PARTITION variable=lab type=complete
#pragma HLS ARRAY_PARTITION variable=lsat type=complete
            for (int l = 0; l < ER * MS; l++) {
#pragma HLS UNROLL
                lab[l] = 0;
                lsat[l] = false;
            }
            for (int v = 0; v < ER; v++) {
#pragma HLS UNROLL
                const uint32_t r = row + v;
                const bool rv = r < st.mt;
                if (wpos == 0) {
                    sw[v] = 0;
                    if (h.accum && rv) {
                        for (int x = 0; x < P; x += ER) {
#pragma HLS UNROLL
                            if (pq == (uint32_t)x) cw[v] = cold[x + v].read();
                        }
                    }
                }
                // the row word of tap row t, then the MS columns of group jg (muxes)
                AccRow rw = 0;
                if (rv) {
                    if (t == NBB - 1) {
                        rw = accp[addr + v];
                    } else {
                        const AccXRow xw = accx[addr + v];
                        for (int tt = 0; tt < NBB - 1; tt++) {
#pragma HLS UNROLL
                            if ((uint32_t)tt == t) rw = xw.range(32 * C * tt + 32 * C - 1, 32 * C * tt);
                        }
                    }
                }
                ap_uint<32 * MS> gw = 0;
                for (int gg = 0; gg < CG; gg++) {
#pragma HLS UNROLL
                    if ((uint32_t)gg == jg) gw = rw.range(32 * MS * gg + 32 * MS - 1, 32 * MS * gg);
                }
                for (int hh = 0; hh < PG; hh++) {
#pragma HLS UNROLL
                    for (int y = 0; y < 2; y++) {
#pragma HLS UNROLL
                        const int u = 2 * hh + y;
                        const uint32_t cc = col + u;
                        if (!rv || cc >= st.nt) continue;
                        const int32_t acc = (int32_t)(uint32_t)gw.range(32 * u + 31, 32 * u);
                        const uint32_t byte = (wpos * MS + u) * h.eb;  // position in the store word
                        int64_t pre;
                        bool s8;
                        if (!h.out8) {
                            int64_t tot = acc;
                            if (h.accum) {
                                tot += (int32_t)(uint32_t)cw[v].range(32 * u + 31, 32 * u);  // INT32: byte = 4 u
                            }
                            pre = tot;
                            const int64_t o = tot < INT32_MIN ? INT32_MIN : (tot > INT32_MAX ? INT32_MAX : tot);
                            s8 = o != tot;
                            const uint32_t ou = (uint32_t)(int32_t)o;
                            sw[v].range(32 * u + 31, 32 * u) = ou;
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
                            if (h.accum) q8 += (int8_t)byte_at(cw[v], byte);
                            pre = q8;
                            const int64_t o = q8 < -128 ? -128 : (q8 > 127 ? 127 : q8);
                            s8 = o != q8;
                            sw[v].range(8 * byte + 7, 8 * byte) = (uint8_t)(int8_t)o;
                        }
                        lab[v * MS + u] = cap_abs(pre);
                        lsat[v * MS + u] = s8;
                    }
                }
                if (rv && (wpos == (wpos_mask >> LGMS) || g == ncg - 1)) {
                    for (int x = 0; x < P; x += ER) {
#pragma HLS UNROLL
                        if (pq == (uint32_t)x) wout[x + v].write(sw[v]);
                    }
                }
            }
            // lane reductions: a max tree and a flag count, then one carried max and one add
            for (int w = ER * MS / 2; w >= 1; w >>= 1) {
#pragma HLS UNROLL
                for (int l = 0; l < w; l++) {
#pragma HLS UNROLL
                    lab[l] = lab[l] > lab[l + w] ? lab[l] : lab[l + w];
                }
            }
            uint32_t nit = 0;
            for (int l = 0; l < ER * MS; l++) {
#pragma HLS UNROLL
                nit += lsat[l] ? 1u : 0u;
            }
            mx = lab[0] > mx ? lab[0] : mx;
            nsat += nit;
            if (g == ncg - 1) {
                g = 0;
                rp++;
                hrow += ers;
            } else {
                g++;
            }
        }
        iters += nrp * ncg + QTA_STORE_PIPELINE;
        // S of the block (review S1, S2, S12): the epilogue and its last write response, or the
        // busiest writer's row bursts (port 0: ceil(mt / P) rows), which are also the old-C row
        // bursts the fetchers feed the epilogue in accumulate mode (the same rows and beats).
        // The store reports them so that no writer or fetcher waits on the model process.
        const uint32_t wrows = ceil_shift(st.mt, LGP), nbw = ceil_shift(st.nt * h.eb, LGBB);
        cnt.write(umax(iters + QTA_DDR_LATENCY, wrows * (nbw + BURST_COST)));
    }
    *status = (h.ok ? 0u : (1u << QTA_STATUS_BAD_ARGS)) | (nsat != 0 ? (1u << QTA_STATUS_SATURATED) : 0u);
    *sat_count = nsat > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)nsat;
    *amax = mx;
}

// ---------------------------------------------------------------------------------- write

template <int PORT>
void write(qta_beat_t *wr, HdrStream &hs, hls::stream<StepW> &ss, hls::stream<SWord> &win,
           hls::stream<bool> &done) {
    const Hdr h = recv_hdr(hs);
write_blocks:
    for (uint32_t blk = 0; blk < h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=1024
        const StepW st = ss.read();
        // no runtime multiply (review S4): the row address is a counter of the descriptors, eb = 1
        // or 4 is a shift, PORT a constant
        const uint32_t ldc_b = h.out8 ? h.ldc : h.ldc << 2;
        const uint32_t nbw = ceil_shift(h.out8 ? st.nt : st.nt << 2, LGBB);
        uint64_t base = (st.c_row + (uint64_t)PORT * ldc_b) >> LGBB;
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
                qta_beat_t x = 0;
                for (int q = 0; q < SWB; q++) {
#pragma HLS UNROLL
                    if ((uint32_t)q == slot) x = w.range(8 * BB * q + 8 * BB - 1, 8 * BB * q);
                }
                wr[base + e] = x;
            }
            base += (uint64_t)(ldc_b >> LGBB) * P;
        }
    }
    done.write(true);
}

// ------------------------------------------------------------------------- model, counter

// cycles_model: the overlap recurrence of hls/README.md ("Cycle model") over the costs the
// processes report, plus the fixed latencies of hardware.toml [schedule].
// It never back-pressures a producer (review S12): before the steps of block b it waits only for
// the store's count of block b-2, which the store writes before it frees the accumulator slot
// that array(b) needs, and (accumulate) of block b-1, which the fetchers' old-C rows of b-1 hold
// up anyway (review S2); every step count it reads was written before the array could go on.
void model(HdrStream &hs, hls::stream<uint32_t> fcnt[P], hls::stream<uint32_t> &lcnt,
           hls::stream<uint32_t> &pcnt, hls::stream<uint32_t> &scnt, uint64_t *cycles_model) {
    const Hdr h = recv_hdr(hs);
    uint64_t lend = 0, pend1 = 0, pend2 = 0;
    uint64_t send = 0;          // Send of the newest block whose store count was read
    uint64_t q0 = 0, q1 = 0;    // Pend of the last step of the blocks not read yet, oldest first
    uint32_t nq = 0;
    const uint32_t keep = h.accum ? 0 : 1;  // blocks left unread before a block's steps
model_blocks:
    for (uint32_t blk = 0; blk <= h.nblocks; blk++) {
#pragma HLS LOOP_TRIPCOUNT min=2 max=1025
#pragma HLS PIPELINE off
        // Send[b] = max(Pend of b's last step, Send[b-1]) + S[b], read in block order
        const uint32_t left = blk == h.nblocks ? 0u : keep;
        for (int r = 0; r < 2; r++) {
            if (nq > left) {
                const uint64_t S = scnt.read();
                send = (q0 > send ? q0 : send) + S;
                q0 = q1;
                nq--;
            }
        }
        if (blk == h.nblocks) break;
        // now send = Send[b-2] (Send[b-1] in accumulate mode; 0 before the first blocks)
    model_steps:
        for (uint32_t kc = 0; kc < h.nkc; kc++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=128
#pragma HLS PIPELINE off
            uint64_t L = (uint64_t)lcnt.read() + QTA_DDR_LATENCY;
            for (int p = 0; p < P; p++) {
#pragma HLS UNROLL
                const uint64_t f = fcnt[p].read();
                L = L > f ? L : f;
            }
            const uint64_t Pc = pcnt.read();
            uint64_t ls = lend > pend2 ? lend : pend2;  // slot of step t-2 free
            if (kc == 0 && h.accum && send > ls) ls = send;  // fetch waits behind the old C of b-1
            lend = ls + L;
            uint64_t start = lend > pend1 ? lend : pend1;
            if (kc == 0 && send > start) start = send;  // accumulator slot of block b-2 free
            pend2 = pend1;
            pend1 = start + Pc;
        }
        if (nq == 0) {
            q0 = pend1;
        } else {
            q1 = pend1;
        }
        nq++;
    }
    *cycles_model = QTA_CALL_OVERHEAD + send;
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
    HdrStream h_fetch[P], h_write[P], h_load, h_array, h_store, h_model;
    hls::stream<StepF> s_fetch[P];
    hls::stream<StepW> s_write[P];
    hls::stream<StepC> s_load, s_array, s_store;
    hls::stream<Beat> ops[P], scl;
    hls::stream<SWord> cold[P], wout[P];
    hls::stream<uint32_t> fcnt[P], lcnt, pcnt, scnt;
    hls::stream<bool> done[P];
#pragma HLS STREAM variable=s_fetch depth=4
#pragma HLS STREAM variable=s_load depth=4
#pragma HLS STREAM variable=s_array depth=4
#pragma HLS STREAM variable=s_store depth=4
#pragma HLS STREAM variable=s_write depth=4
#pragma HLS STREAM variable=ops depth=64
#pragma HLS STREAM variable=cold depth=64
    QTA_PRAGMA(HLS STREAM variable=scl depth=QTA_SCL_DEPTH)
#pragma HLS STREAM variable=wout depth=64
#pragma HLS STREAM variable=fcnt depth=64
#pragma HLS STREAM variable=lcnt depth=64
#pragma HLS STREAM variable=pcnt depth=64
    // Every block is one memory of ap_uint words (no partition or aggregate on a stream of blocks)
    QTA_BLOCKS(A0Block, a0s);
    QTA_BLOCKS(AXBlock, ax0s);
    QTA_IF_AX2(QTA_BLOCKS(AXBlock, ax1s);)
    QTA_IF_AX4(QTA_BLOCKS(AXBlock, ax2s); QTA_BLOCKS(AXBlock, ax3s);)
    QTA_BLOCKS(B0Block, b0s);
    QTA_BLOCKS(BXBlock, bx0s);
    QTA_IF_BX2(QTA_BLOCKS(BXBlock, bx1s);)
    QTA_IF_BX4(QTA_BLOCKS(BXBlock, bx2s); QTA_BLOCKS(BXBlock, bx3s);)
    QTA_BLOCKS(AccPBlock, accps);
    QTA_BLOCKS(AccXBlock, accxs);
    QTA_PRAGMA(HLS BIND_STORAGE variable=a0s type=ram_t2p impl=QTA_OPND_IMPL)
    QTA_PRAGMA(HLS BIND_STORAGE variable=b0s type=ram_t2p impl=QTA_OPND_IMPL)
    QTA_PRAGMA(HLS BIND_STORAGE variable=ax0s type=ram_t2p impl=bram)
    QTA_IF_AX2(QTA_PRAGMA(HLS BIND_STORAGE variable=ax1s type=ram_t2p impl=bram))
    QTA_IF_AX4(QTA_PRAGMA(HLS BIND_STORAGE variable=ax2s type=ram_t2p impl=bram)
               QTA_PRAGMA(HLS BIND_STORAGE variable=ax3s type=ram_t2p impl=bram))
    QTA_PRAGMA(HLS BIND_STORAGE variable=bx0s type=ram_t2p impl=bram)
    QTA_IF_BX2(QTA_PRAGMA(HLS BIND_STORAGE variable=bx1s type=ram_t2p impl=bram))
    QTA_IF_BX4(QTA_PRAGMA(HLS BIND_STORAGE variable=bx2s type=ram_t2p impl=bram)
               QTA_PRAGMA(HLS BIND_STORAGE variable=bx3s type=ram_t2p impl=bram))
    QTA_PRAGMA(HLS BIND_STORAGE variable=accps type=ram_t2p impl=QTA_ACC_IMPL)
#pragma HLS BIND_STORAGE variable=accxs type=ram_1wnr impl=lutram

    descriptors(a, b, c, scales, m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift, seed, batch,
                stride_a, stride_b, stride_c, conv_in, conv_out, conv_cin, conv_win, conv_dil, h_fetch, h_load,
                h_array, h_store, h_write, h_model, s_fetch, s_load, s_array, s_store, s_write);
    fetch<0>(rd0, h_fetch[0], s_fetch[0], ops[0], cold[0], scl, fcnt[0]);
    fetch<1>(rd1, h_fetch[1], s_fetch[1], ops[1], cold[1], fcnt[1]);
    fetch<2>(rd2, h_fetch[2], s_fetch[2], ops[2], cold[2], fcnt[2]);
    fetch<3>(rd3, h_fetch[3], s_fetch[3], ops[3], cold[3], fcnt[3]);
    load(h_load, s_load, ops, a0s, ax0s QTA_IF_AX2(, ax1s) QTA_IF_AX4(, ax2s, ax3s), b0s,
         bx0s QTA_IF_BX2(, bx1s) QTA_IF_BX4(, bx2s, bx3s), lcnt);
    array(h_array, s_array, a0s, ax0s QTA_IF_AX2(, ax1s) QTA_IF_AX4(, ax2s, ax3s), b0s,
          bx0s QTA_IF_BX2(, bx1s) QTA_IF_BX4(, bx2s, bx3s), accps, accxs, pcnt);
    store(h_store, s_store, accps, accxs, cold, scl, wout, scnt, status, sat_count, amax);
    write<0>(wr0, h_write[0], s_write[0], wout[0], done[0]);
    write<1>(wr1, h_write[1], s_write[1], wout[1], done[1]);
    write<2>(wr2, h_write[2], s_write[2], wout[2], done[2]);
    write<3>(wr3, h_write[3], s_write[3], wout[3], done[3]);
    model(h_model, fcnt, lcnt, pcnt, scnt, cycles_model);
    counter(done, cycles_measured);
}
