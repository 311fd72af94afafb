// lora-qta GEMM kernel for Vitis HLS (see qta_gemm.h and README "Accelerator").
//
// Schedule. The GEMM is cut into blocks of tile_m x tile_n outputs; each block is summed
// over K in chunks of tile_k. One (block, chunk) pair is a *step*. Steps run through a
// three-stage software pipeline with ping-pong buffers:
//
//     iteration t:   fill(step t)  ||  compute(step t-1)  ||  store(block of step t-2)
//
// fill reads the A and B chunks of a step from DDR (two m_axi ports in parallel), compute
// runs the PE array over the chunk and accumulates into the block's INT32 accumulator,
// store applies the epilogue to a finished block and writes it to DDR. An iteration lasts
// as long as its slowest stage plus QTA_STEP_OVERHEAD.
//
// The PE array is QTA_ROWS x QTA_COLS. A runtime partition exponent s regroups it into
// 2^|s| independent sub-arrays that act as one logical array of LR x LC PEs:
//   s >= 0: sub-arrays of R x C/2^s side by side, LR = R*2^s, LC = C/2^s (row blocks)
//   s <  0: sub-arrays of R/2^-s x C stacked,     LR = R/2^-s, LC = C*2^-s (column blocks)
// Output-stationary (OS) maps (M, N) onto (LR, LC) and streams K; weight-stationary (WS)
// maps (K, N) onto (LR, LC), holds B in the PEs and streams the rows of A (s <= 0 only).
//
// Cycle counter. The kernel counts its own schedule as the loops run: every pipelined
// loop adds its trip count (II = 1) and every stage its documented fixed latency. The
// formulas are in README "Cycle model" and are reproduced by the host planner, which the
// tests check against this count.
#include "qta_gemm.h"

#define QTA_PRAGMA_SUB(x) _Pragma(#x)
#define QTA_PRAGMA(x) QTA_PRAGMA_SUB(x)

namespace {

// Decoded and validated arguments of one call.
struct Args {
    uint32_t m, n, k, lda, ldb, ldc, tm, tn, tk;
    bool trans_a, trans_b, os, out8, accumulate, stochastic;
    int split;
    uint32_t scale_mode;
    int32_t mult;
    uint32_t shift, seed_hash;
    int lr, lc;  // logical array sides
    int sr, sc;  // physical sub-array sides
    uint32_t nbm, nbn, nkc;  // blocks along M, N and chunks along K
};

// Position of one step or block in the iteration space.
struct Step {
    uint32_t m0, n0, k0, mt, nt, kt;
    bool first, last;  // first / last K chunk of its block
    uint32_t block;
};

inline uint32_t ceil_div(uint32_t a, uint32_t b) { return (a + b - 1) / b; }
inline uint32_t min_u(uint32_t a, uint32_t b) { return a < b ? a : b; }
inline uint32_t max_u(uint32_t a, uint32_t b) { return a > b ? a : b; }

Step step_at(const Args &g, uint32_t t) {
    Step s;
    uint32_t kc = t % g.nkc;
    uint32_t blk = t / g.nkc;
    uint32_t bm = blk / g.nbn, bn = blk % g.nbn;
    s.m0 = bm * g.tm;
    s.n0 = bn * g.tn;
    s.k0 = kc * g.tk;
    s.mt = min_u(g.tm, g.m - s.m0);
    s.nt = min_u(g.tn, g.n - s.n0);
    s.kt = min_u(g.tk, g.k - s.k0);
    s.first = kc == 0;
    s.last = kc == g.nkc - 1;
    s.block = blk;
    return s;
}

// Logical position (li, lj) of physical PE (i, j) under partition exponent s.
inline void pe_map(int i, int j, int split, int &li, int &lj) {
#pragma HLS INLINE
    if (split >= 0) {
        int sc = QTA_COLS >> split;
        li = (j / sc) * QTA_ROWS + i;
        lj = j % sc;
    } else {
        int sr = QTA_ROWS >> (-split);
        li = i % sr;
        lj = (i / sr) * QTA_COLS + j;
    }
}

// Beats of one burst of len elements of elem_bytes each.
inline uint32_t beats(uint32_t len, uint32_t elem_bytes) {
    return ceil_div(len * elem_bytes, QTA_AXI_BYTES);
}

// ------------------------------------------------------------------------------- fill

// Reads the rows x cols tile at (row0, col0) of op(X) into buf[rows][cols], where X is stored
// with leading dimension ld and op(X) = X or X^T. Memory is read along the stored rows (bursts
// of AXI_BYTES elements per beat); a transposed operand is written transposed into the buffer.
// Returns its cycles.
template <int R, int C>
uint32_t fill_tile(const int8_t *src, opnd_t buf[R][C], uint32_t ld, uint32_t row0, uint32_t col0,
                   uint32_t rows, uint32_t cols, bool trans) {
    uint32_t cyc = QTA_DDR_LATENCY;
    uint32_t stored_rows = trans ? cols : rows;
    uint32_t len = trans ? rows : cols;
fill_rows:
    for (uint32_t r = 0; r < stored_rows; r++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=R
        uint32_t base = trans ? (col0 + r) * ld + row0 : (row0 + r) * ld + col0;
    fill_beats:
        for (uint32_t e = 0; e < len; e += QTA_AXI_BYTES) {
#pragma HLS PIPELINE II=1
#pragma HLS LOOP_TRIPCOUNT min=1 max=C/QTA_AXI_BYTES
            for (uint32_t u = 0; u < QTA_AXI_BYTES; u++) {
#pragma HLS UNROLL
                uint32_t x = e + u;
                if (x < len) {
                    if (trans) buf[x][r] = src[base + x];
                    else buf[r][x] = src[base + x];
                }
            }
        }
        cyc += beats(len, 1);
    }
    return cyc;
}

// Reads the A chunk (op(A)[m0:m0+mt, k0:k0+kt]) and the B chunk (op(B)[k0:k0+kt, n0:n0+nt]) of a
// step on their two ports in parallel; the stage lasts as long as the slower one.
uint32_t fill(const int8_t *a, const int8_t *b, opnd_t abuf[QTA_TILE_M_MAX][QTA_TILE_K_MAX],
              opnd_t bbuf[QTA_TILE_K_MAX][QTA_TILE_N_MAX], const Args &g, const Step &s) {
    uint32_t ca = fill_tile<QTA_TILE_M_MAX, QTA_TILE_K_MAX>(a, abuf, g.lda, s.m0, s.k0, s.mt, s.kt, g.trans_a);
    uint32_t cb = fill_tile<QTA_TILE_K_MAX, QTA_TILE_N_MAX>(b, bbuf, g.ldb, s.k0, s.n0, s.kt, s.nt, g.trans_b);
    return max_u(ca, cb);
}

// ---------------------------------------------------------------------------- compute

// Output-stationary: each fold keeps an LR x LC output tile in the PEs and streams K.
uint32_t compute_os(const opnd_t abuf[QTA_TILE_M_MAX][QTA_TILE_K_MAX],
                    const opnd_t bbuf[QTA_TILE_K_MAX][QTA_TILE_N_MAX],
                    acc_t acc[QTA_TILE_M_MAX][QTA_TILE_N_MAX], const Args &g, const Step &s) {
    uint32_t cyc = 0;
    acc_t pe[QTA_ROWS][QTA_COLS];
#pragma HLS ARRAY_PARTITION variable=pe type=complete dim=0
    uint32_t fr_n = ceil_div(s.mt, g.lr), fc_n = ceil_div(s.nt, g.lc);
os_folds:
    for (uint32_t f = 0; f < fr_n * fc_n; f++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=64
        uint32_t r0 = (f / fc_n) * g.lr, c0 = (f % fc_n) * g.lc;
    os_clear:
        for (int i = 0; i < QTA_ROWS; i++) {
#pragma HLS UNROLL
            for (int j = 0; j < QTA_COLS; j++) {
#pragma HLS UNROLL
                pe[i][j] = 0;
            }
        }
    os_stream:
        for (uint32_t kk = 0; kk < s.kt; kk++) {
#pragma HLS PIPELINE II=1
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_K_MAX
            for (int i = 0; i < QTA_ROWS; i++) {
#pragma HLS UNROLL
                for (int j = 0; j < QTA_COLS; j++) {
#pragma HLS UNROLL
                    int li, lj;
                    pe_map(i, j, g.split, li, lj);
                    uint32_t mi = r0 + li, nj = c0 + lj;
                    if (mi < s.mt && nj < s.nt) {
                        prod_t p = abuf[mi][kk] * bbuf[kk][nj];
                        pe[i][j] += p;
                    }
                }
            }
        }
    os_drain:
        for (int i = 0; i < QTA_ROWS; i++) {
#pragma HLS UNROLL
            for (int j = 0; j < QTA_COLS; j++) {
#pragma HLS UNROLL
                int li, lj;
                pe_map(i, j, g.split, li, lj);
                uint32_t mi = r0 + li, nj = c0 + lj;
                if (mi < s.mt && nj < s.nt) {
                    if (s.first) acc[mi][nj] = pe[i][j];
                    else acc[mi][nj] += pe[i][j];
                }
            }
        }
        // Stream K, plus the operand skew across the sub-array (its drain overlaps the
        // next fold) and the pipeline depth.
        cyc += s.kt + g.sr + g.sc - 2 + QTA_PIPELINE_DEPTH;
    }
    return cyc;
}

// Weight-stationary: each fold holds an LR x LC block of B in the PEs and streams the
// rows of A; column sums of each sub-array add into the accumulator.
uint32_t compute_ws(const opnd_t abuf[QTA_TILE_M_MAX][QTA_TILE_K_MAX],
                    const opnd_t bbuf[QTA_TILE_K_MAX][QTA_TILE_N_MAX],
                    acc_t acc[QTA_TILE_M_MAX][QTA_TILE_N_MAX], const Args &g, const Step &s) {
    uint32_t cyc = 0;
    opnd_t w[QTA_ROWS][QTA_COLS];
#pragma HLS ARRAY_PARTITION variable=w type=complete dim=0
    acc_t colsum[QTA_LC_MAX];
#pragma HLS ARRAY_PARTITION variable=colsum type=complete dim=0
    uint32_t fk_n = ceil_div(s.kt, g.lr), fc_n = ceil_div(s.nt, g.lc);
ws_folds:
    for (uint32_t f = 0; f < fk_n * fc_n; f++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=64
        uint32_t k0 = (f / fc_n) * g.lr, c0 = (f % fc_n) * g.lc;
    ws_load:
        for (int i = 0; i < QTA_ROWS; i++) {
#pragma HLS UNROLL
            for (int j = 0; j < QTA_COLS; j++) {
#pragma HLS UNROLL
                int li, lj;
                pe_map(i, j, g.split, li, lj);
                uint32_t kk = k0 + li, nj = c0 + lj;
                w[i][j] = (kk < s.kt && nj < s.nt) ? bbuf[kk][nj] : opnd_t(0);
            }
        }
    ws_stream:
        for (uint32_t mm = 0; mm < s.mt; mm++) {
#pragma HLS PIPELINE II=1
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_M_MAX
            for (int x = 0; x < QTA_LC_MAX; x++) {
#pragma HLS UNROLL
                colsum[x] = 0;
            }
            for (int i = 0; i < QTA_ROWS; i++) {
#pragma HLS UNROLL
                for (int j = 0; j < QTA_COLS; j++) {
#pragma HLS UNROLL
                    int li, lj;
                    pe_map(i, j, g.split, li, lj);
                    uint32_t kk = k0 + li;
                    if (kk < s.kt) {
                        prod_t p = abuf[mm][kk] * w[i][j];
                        colsum[lj] += p;
                    }
                }
            }
            for (int x = 0; x < QTA_LC_MAX; x++) {
#pragma HLS UNROLL
                uint32_t nj = c0 + x;
                if (x < g.lc && nj < s.nt) {
                    if (s.first && k0 == 0) acc[mm][nj] = colsum[x];
                    else acc[mm][nj] += colsum[x];
                }
            }
        }
        // Weight load (one sub-array row per cycle), then M rows streamed through the
        // skewed sub-array, plus the pipeline depth.
        cyc += g.sr + s.mt + g.sr + g.sc - 2 + QTA_PIPELINE_DEPTH;
    }
    return cyc;
}

uint32_t compute(const opnd_t abuf[QTA_TILE_M_MAX][QTA_TILE_K_MAX],
                 const opnd_t bbuf[QTA_TILE_K_MAX][QTA_TILE_N_MAX],
                 acc_t acc[QTA_TILE_M_MAX][QTA_TILE_N_MAX], const Args &g, const Step &s) {
    return g.os ? compute_os(abuf, bbuf, acc, g, s) : compute_ws(abuf, bbuf, acc, g, s);
}

// --------------------------------------------------------------------------- epilogue

inline int64_t round_shift(int64_t p, uint32_t sh, bool stochastic, uint32_t bits) {
#pragma HLS INLINE
    if (sh == 0) return p;
    if (stochastic) {
        // floor((p + u) / 2^sh) with u uniform on [0, 2^sh) from the hash bits
        uint64_t u = sh <= 32 ? (uint64_t)(bits >> (32 - sh)) : ((uint64_t)bits << (sh - 32));
        return (p + (int64_t)u) >> sh;
    }
    // round half to even
    int64_t q = p >> sh;
    int64_t rem = p - (q << sh);
    int64_t half = (int64_t)1 << (sh - 1);
    if (rem > half || (rem == half && (q & 1))) q += 1;
    return q;
}

inline int64_t saturate(int64_t v, int64_t lo, int64_t hi, bool &sat) {
#pragma HLS INLINE
    if (v < lo) { sat = true; return lo; }
    if (v > hi) { sat = true; return hi; }
    return v;
}

// Applies the epilogue to a finished block and writes it. Returns its cycles.
uint32_t store(uint8_t *c, const int32_t *scales, const acc_t acc[QTA_TILE_M_MAX][QTA_TILE_N_MAX],
               const Args &g, const Step &s, bool &sat) {
    uint32_t cyc = QTA_DDR_LATENCY;
    int32_t smul[QTA_TILE_M_MAX > QTA_TILE_N_MAX ? QTA_TILE_M_MAX : QTA_TILE_N_MAX];
    uint32_t ssh[QTA_TILE_M_MAX > QTA_TILE_N_MAX ? QTA_TILE_M_MAX : QTA_TILE_N_MAX];
    const uint32_t eb = g.out8 ? 1 : 4;
    if (g.out8 && g.scale_mode != QTA_SCALE_TENSOR) {
        uint32_t base = g.scale_mode == QTA_SCALE_ROW ? s.m0 : s.n0;
        uint32_t cnt = g.scale_mode == QTA_SCALE_ROW ? s.mt : s.nt;
    store_scales:
        for (uint32_t x = 0; x < cnt; x++) {
#pragma HLS PIPELINE II=1
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_N_MAX
            smul[x] = scales[2 * (base + x)];
            ssh[x] = (uint32_t)scales[2 * (base + x) + 1];
        }
        cyc += QTA_DDR_LATENCY + beats(2 * cnt, 4);
    }
    if (g.accumulate) cyc += QTA_DDR_LATENCY;  // read latency of the C rows
store_rows:
    for (uint32_t i = 0; i < s.mt; i++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_M_MAX
        uint32_t row = s.m0 + i;
        uint32_t rbase = row * g.ldc + s.n0;
    store_lanes:
        for (uint32_t j0 = 0; j0 < s.nt; j0 += QTA_EPI_LANES) {
#pragma HLS PIPELINE II=1
#pragma HLS LOOP_TRIPCOUNT min=1 max=QTA_TILE_N_MAX/QTA_EPI_LANES
            for (uint32_t u = 0; u < QTA_EPI_LANES; u++) {
#pragma HLS UNROLL
                uint32_t j = j0 + u;
                if (j >= s.nt) continue;
                uint32_t col = s.n0 + j;
                uint8_t *dst = c + (uint64_t)(rbase + j) * eb;
                int64_t v = (int32_t)acc[i][j];
                if (!g.out8) {
                    if (g.accumulate) {
                        int32_t old = (int32_t)((uint32_t)dst[0] | ((uint32_t)dst[1] << 8) |
                                                ((uint32_t)dst[2] << 16) | ((uint32_t)dst[3] << 24));
                        v = saturate(v + old, INT32_MIN, INT32_MAX, sat);
                    }
                    uint32_t w = (uint32_t)(int32_t)v;
                    dst[0] = w & 0xFF;
                    dst[1] = (w >> 8) & 0xFF;
                    dst[2] = (w >> 16) & 0xFF;
                    dst[3] = (w >> 24) & 0xFF;
                } else {
                    int32_t mu = g.mult;
                    uint32_t sh = g.shift;
                    if (g.scale_mode == QTA_SCALE_ROW) { mu = smul[i]; sh = ssh[i]; }
                    if (g.scale_mode == QTA_SCALE_COL) { mu = smul[j]; sh = ssh[j]; }
                    uint32_t bits = qta_mix32(g.seed_hash + row * g.n + col);
                    int64_t q = round_shift(v * (int64_t)mu, sh, g.stochastic, bits);
                    if (g.accumulate) q += (int8_t)dst[0];
                    dst[0] = (uint8_t)(int8_t)saturate(q, -128, 127, sat);
                }
            }
        }
        uint32_t row_beats = beats(s.nt, eb);
        cyc += max_u(row_beats, ceil_div(s.nt, QTA_EPI_LANES));
    }
    return cyc;
}

bool decode(Args &g, uint32_t m, uint32_t n, uint32_t k, uint32_t lda, uint32_t ldb, uint32_t ldc,
            uint32_t tile_m, uint32_t tile_n, uint32_t tile_k, uint32_t flags, int32_t mult,
            uint32_t shift, uint32_t seed) {
    g.m = m; g.n = n; g.k = k; g.lda = lda; g.ldb = ldb; g.ldc = ldc;
    g.tm = tile_m; g.tn = tile_n; g.tk = tile_k;
    g.trans_a = (flags >> QTA_FLAG_TRANS_A) & 1;
    g.trans_b = (flags >> QTA_FLAG_TRANS_B) & 1;
    g.os = (flags >> QTA_FLAG_DATAFLOW) & 1;
    int s4 = (flags >> QTA_FLAG_SPLIT_LSB) & 0xF;
    g.split = s4 >= 8 ? s4 - 16 : s4;
    g.out8 = (flags >> QTA_FLAG_OUT_INT8) & 1;
    g.accumulate = (flags >> QTA_FLAG_ACCUMULATE) & 1;
    g.scale_mode = (flags >> QTA_FLAG_SCALE_MODE_LSB) & 3;
    g.stochastic = (flags >> QTA_FLAG_STOCHASTIC) & 1;
    g.mult = mult;
    g.shift = shift;
    g.seed_hash = qta_mix32(seed);
    if (m < 1 || m > QTA_MAX_M || n < 1 || n > QTA_MAX_N || k < 1 || k > QTA_MAX_K) return false;
    if (lda < (g.trans_a ? m : k) || ldb < (g.trans_b ? k : n) || ldc < n) return false;
    if (tile_m < 1 || tile_m > QTA_TILE_M_MAX || tile_n < 1 || tile_n > QTA_TILE_N_MAX ||
        tile_k < 1 || tile_k > QTA_TILE_K_MAX) return false;
    if (g.split < QTA_SPLIT_MIN || g.split > QTA_SPLIT_MAX || (!g.os && g.split > 0)) return false;
    if (g.scale_mode > QTA_SCALE_COL || shift > 62) return false;
    if (g.split >= 0) { g.sr = QTA_ROWS; g.sc = QTA_COLS >> g.split; g.lr = QTA_ROWS << g.split; g.lc = g.sc; }
    else { g.sr = QTA_ROWS >> (-g.split); g.sc = QTA_COLS; g.lr = g.sr; g.lc = QTA_COLS << (-g.split); }
    g.nbm = ceil_div(m, tile_m);
    g.nbn = ceil_div(n, tile_n);
    g.nkc = ceil_div(k, tile_k);
    return true;
}

}  // namespace

void qta_gemm(QTA_TOP_PARAMS) {
    QTA_INTERFACE_PRAGMAS

    // Ping-pong operand buffers (partitioned so every PE reads its operand each cycle)
    // and ping-pong block accumulators.
    static opnd_t abuf0[QTA_TILE_M_MAX][QTA_TILE_K_MAX], abuf1[QTA_TILE_M_MAX][QTA_TILE_K_MAX];
    static opnd_t bbuf0[QTA_TILE_K_MAX][QTA_TILE_N_MAX], bbuf1[QTA_TILE_K_MAX][QTA_TILE_N_MAX];
    static acc_t acc0[QTA_TILE_M_MAX][QTA_TILE_N_MAX], acc1[QTA_TILE_M_MAX][QTA_TILE_N_MAX];
#pragma HLS ARRAY_PARTITION variable=abuf0 type=cyclic factor=QTA_ROWS dim=1
#pragma HLS ARRAY_PARTITION variable=abuf1 type=cyclic factor=QTA_ROWS dim=1
#pragma HLS ARRAY_PARTITION variable=bbuf0 type=cyclic factor=QTA_COLS dim=2
#pragma HLS ARRAY_PARTITION variable=bbuf1 type=cyclic factor=QTA_COLS dim=2
#pragma HLS ARRAY_PARTITION variable=acc0 type=cyclic factor=QTA_COLS dim=2
#pragma HLS ARRAY_PARTITION variable=acc1 type=cyclic factor=QTA_COLS dim=2
    QTA_PRAGMA(HLS BIND_STORAGE variable=acc0 type=ram_2p impl=QTA_ACC_IMPL)
    QTA_PRAGMA(HLS BIND_STORAGE variable=acc1 type=ram_2p impl=QTA_ACC_IMPL)

    Args g;
    uint64_t cyc = QTA_CALL_OVERHEAD;
    if (!decode(g, m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift, seed)) {
        *status = 1u << QTA_STATUS_BAD_ARGS;
        *cycles = cyc;
        return;
    }
    bool sat = false;
    const uint32_t steps = g.nbm * g.nbn * g.nkc;
pipeline:
    for (uint32_t t = 0; t < steps + 2; t++) {
#pragma HLS LOOP_TRIPCOUNT min=3 max=4096
        uint32_t lf = 0, lc = 0, ls = 0;
        bool do_fill = t < steps, do_comp = t >= 1 && t <= steps, do_store = false;
        Step sf = step_at(g, do_fill ? t : 0);
        Step sc = step_at(g, do_comp ? t - 1 : 0);
        Step ss = step_at(g, t >= 2 ? t - 2 : 0);
        do_store = t >= 2 && ss.last;
        // Operand buffers alternate by step, accumulators by block: the three stages
        // below touch disjoint buffers, so they run concurrently.
        bool fodd = t & 1, codd = sc.block & 1;
        if (fodd) {
            if (do_fill) lf = fill(a, b, abuf1, bbuf1, g, sf);
            if (do_comp) lc = compute(abuf0, bbuf0, codd ? acc1 : acc0, g, sc);
        } else {
            if (do_fill) lf = fill(a, b, abuf0, bbuf0, g, sf);
            if (do_comp) lc = compute(abuf1, bbuf1, codd ? acc1 : acc0, g, sc);
        }
        if (do_store) ls = store(c, scales, (ss.block & 1) ? acc1 : acc0, g, ss, sat);
        cyc += max_u(lf, max_u(lc, ls)) + QTA_STEP_OVERHEAD;
    }
    *status = sat ? (1u << QTA_STATUS_SATURATED) : 0u;
    *cycles = cyc;
}
