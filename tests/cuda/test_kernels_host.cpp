/* The CUDA engine's kernels run on the host (tests/cuda/emulation.h) against
 * float64 references, so that their arithmetic and indexing are checked where
 * there is no GPU: attention over a paged cache with shuffled block ids,
 * ragged head lengths and poisoned (NaN) entries past each head's end, for the
 * decode (a head per block, or split over several) and prompt variants; the fused matrix-vector kernels with their layer
 * norm prologue and QKV-append, residual, GELU and store epilogues, on grids
 * smaller than the output so that the kernels stride, with one warp an output
 * and with several sharing each output (every row count 1..8, every epilogue,
 * f32/bf16/f16 weights, every output written exactly once); the cuBLAS path's
 * epilogue and layer norm; embedding and the advance of positions; streaming
 * rings (where a decoded entry goes, what attention sees, how the ring
 * moves); compaction of kept entries in place and their read-back; the press
 * measures over a list of slots with gaps. */
#include "emulation.h"

#include "backend/cuda/kernels.cuh"
#include "backend/cuda/measure_kernels.cuh"

extern "C" {
#include "../check.h"
#include "router/kmeans.h"
}

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

using namespace pkcuda;

static std::mt19937 rng(12345);

static float uniform() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

template <typename W> static std::vector<W> random_w(size_t n)
{
    std::vector<W> v(n);
    for (auto &x : v) x = from_f<W>(uniform());
    return v;
}

static std::vector<float> random_f(size_t n)
{
    std::vector<float> v(n);
    for (auto &x : v) x = uniform();
    return v;
}

static double rel(const std::vector<double> &ref, const float *got, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return std::isnan(num) ? INFINITY : std::sqrt(num / (den > 0 ? den : 1));
}

/* A paged cache: max_seq sequences, n_layer * n_head heads, every block of
 * every list assigned a distinct shuffled id, all entries NaN until written. */
template <typename W> struct paged_cache {
    int max_seq, n_lh, max_blocks, head_dim, n_head, C;
    std::vector<int32_t> table, kv_len, seq_pos;
    std::vector<ring_state> ring;
    std::vector<W> pool;

    paged_cache(int seqs, int n_layer, int heads, int hd, int blocks_per_head)
        : max_seq(seqs), n_lh(n_layer * heads), max_blocks(blocks_per_head), head_dim(hd), n_head(heads),
          C(heads * hd)
    {
        const int n_blocks = max_seq * n_lh * max_blocks;
        table.resize((size_t)n_blocks);
        for (int i = 0; i < n_blocks; i++) table[i] = i;
        std::shuffle(table.begin(), table.end(), rng);
        pool.assign((size_t)n_blocks * 2 * PK_CUDA_BLOCK * hd, from_f<W>(NAN));
        kv_len.assign((size_t)max_seq * n_lh, 0);
        ring.assign((size_t)max_seq * n_lh, ring_state{});
        seq_pos.assign((size_t)max_seq, 0);
    }
    rows_ctx<W> ctx(int seq0, int rows_per_seq)
    {
        rows_ctx<W> c;
        c.seq0 = seq0;
        c.rows_per_seq = rows_per_seq;
        c.seq_pos = seq_pos.data();
        c.kv_len = kv_len.data();
        c.ring = ring.data();
        c.table = table.data();
        c.pool = pool.data();
        c.discard = nullptr;
        c.max_blocks = max_blocks;
        c.n_lh = n_lh;
        c.n_head = n_head;
        c.head_dim = head_dim;
        c.C = C;
        c.route_seq = -1;
        return c;
    }
    W &at(int b, int lh, int slot, int values, int d)
    {
        const int32_t blk = table[((size_t)b * max_blocks + slot / PK_CUDA_BLOCK) * n_lh + lh];
        return pool[((size_t)blk * 2 + values) * PK_CUDA_BLOCK * head_dim + (size_t)(slot % PK_CUDA_BLOCK) * head_dim +
                    d];
    }
};

/* Softmax attention of one query q [hd] over n entries, in float64: key(j, d)
 * and value(j, d) give the entries, out [hd] the result. The reference the
 * attention kernels are held to. */
template <typename KeyF, typename ValueF>
static void dense_attention(const float *q, int hd, int n, double scale, KeyF key, ValueF value, double *out)
{
    std::vector<double> p((size_t)n);
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++) {
        double s = 0;
        for (int d = 0; d < hd; d++) s += (double)q[d] * key(j, d);
        mx = std::max(mx, p[j] = s * scale);
    }
    for (int j = 0; j < n; j++) sum += p[j] = std::exp(p[j] - mx);
    for (int d = 0; d < hd; d++) {
        double o = 0;
        for (int j = 0; j < n; j++) o += p[j] * value(j, d);
        out[d] = o / sum;
    }
}

/* Attention of rows_per_seq rows in each of n_seq sequences (from seq0) of
 * layer 1, against softmax attention computed densely in float64. With
 * n_split > 0, the decode kernel that splits each head's context over n_split
 * blocks (more splits than blocks, so that some are empty), run twice: its
 * completion counts must be back at zero after each run. With full_ring, the
 * first head is a full streaming ring, whose decoded entry replaced one: it
 * sees its len entries, not len + 1. With windows (prompt rows), three heads
 * stream: each row sees only the sinks and the last `recent` slots up to its
 * own (a window starting inside the sinks' block, one starting on a block
 * boundary with no sinks, and sinks that cover every row). With routed, the
 * first sequence's queries are routed: its first head reads, of its first
 * len - 2 slots, only those whose mask shares a bit with the row's (none of
 * slots 16..31, a KV block skipped whole, and only the slots marked for every
 * query for a row routed nowhere), its second head (empty for decode) every
 * slot it routes. */
template <typename W, int HD, int NW>
static void check_attention(int rows_per_seq, const char *what, int n_split = 0, bool full_ring = false,
                            int per_split = 0, bool windows = false, bool routed = false)
{
    const int n_head = 2, n_layer = 2, layer = 1, seq0 = 1, n_seq = 2;
    paged_cache<W> kv(3, n_layer, n_head, HD, 4);
    const int R = n_seq * rows_per_seq, C = kv.C;
    /* Ragged lengths, block boundaries included, and an empty head. */
    const int lens[8] = {37, 0, 16, 5, 44, 17, 31, 1};
    for (int b = seq0, i = 0; b < seq0 + n_seq; b++)
        for (int h = 0; h < n_head; h++, i++) {
            const int lh = layer * n_head + h;
            kv.kv_len[(size_t)b * kv.n_lh + lh] = lens[i + (rows_per_seq > 1 ? 4 : 0)];
            if (full_ring && i == 0) kv.ring[(size_t)b * kv.n_lh + lh] = ring_state{2, lens[0] - 2, 5, 0};
            /* Prompt lengths 44, 17, 31, 1: windows from slot 44 + r + 1 - 35, 18 + r - 5, and sinks past 4. */
            static const ring_state window_of[4] = {{3, 35, 3, 0}, {0, 5, 0, 0}, {}, {40, 4, 40, 0}};
            if (windows) kv.ring[(size_t)b * kv.n_lh + lh] = window_of[i];
            for (int s = 0; s < kv.kv_len[(size_t)b * kv.n_lh + lh] + rows_per_seq; s++)
                for (int d = 0; d < HD; d++) {
                    kv.at(b, lh, s, 0, d) = from_f<W>(uniform());
                    kv.at(b, lh, s, 1, d) = from_f<W>(uniform());
                }
        }
    std::vector<float> q = random_f((size_t)R * C), out((size_t)R * C, NAN);
    const float scale = 0.125f;
    /* Experts 0..3 are bits 0..3; bit 63 marks a slot every query reads. */
    const int stride = 4 * PK_CUDA_BLOCK;
    std::vector<int32_t> route_len((size_t)kv.n_lh, 0);
    std::vector<uint64_t> route_slot((size_t)kv.n_lh * stride, 0), route_row((size_t)R * n_head, 0);
    if (routed) {
        for (int h = 0; h < n_head; h++) {
            const int lh = layer * n_head + h, len = kv.kv_len[(size_t)seq0 * kv.n_lh + lh];
            route_len[lh] = h == 0 ? len - 2 : len;
            for (int j = 0; j < route_len[lh]; j++) {
                const uint64_t m = (uint64_t)(rng() % 16) | (rng() % 5 == 0 ? 1ull << 63 : 0);
                route_slot[(size_t)lh * stride + j] = h == 0 && j >= 16 && j < 32 ? 0 : m;
            }
        }
        for (int i = 0; i < R * n_head; i++) route_row[i] = (1ull << 63) | (i == 0 ? 0 : 1ull << (rng() % 4));
    }
    auto ctx = [&](int rows) {
        rows_ctx<W> c = kv.ctx(seq0, rows);
        if (routed) {
            c.route_seq = seq0;
            c.route_stride = stride;
            c.route_len = route_len.data();
            c.route_slot = route_slot.data();
            c.route_row = route_row.data();
        }
        return c;
    };
    if (n_split > 0) {
        std::vector<float> part((size_t)kv.max_seq * n_head * n_split * (HD + 2), NAN);
        std::vector<int> done((size_t)kv.max_seq * n_head, 0);
        for (int run = 0; run < 2; run++) {
            emu_launch(dim3(n_split, n_head, n_seq), dim3(NW * 32), 0,
                       routed ? attention_decode_kernel<W, float, HD, NW, true>
                              : attention_decode_kernel<W, float, HD, NW>,
                       (const float *)q.data(), out.data(), layer, scale, ctx(1), part.data(), done.data(),
                       per_split, (float *)nullptr);
            CHECK(std::all_of(done.begin(), done.end(), [](int v) { return v == 0; }),
                  "attention %s: completion counts not reset after run %d", what, run + 1);
        }
    } else {
        emu_launch(dim3(rows_per_seq, n_head, n_seq), dim3(NW * 32), 0,
                   routed ? attention_kernel<W, float, HD, NW, true> : attention_kernel<W, float, HD, NW>,
                   (const float *)q.data(), out.data(), layer, scale, ctx(rows_per_seq));
    }
    std::vector<double> ref((size_t)R * C);
    for (int row = 0; row < R; row++) {
        const int b = seq0 + row / rows_per_seq, r = row % rows_per_seq;
        for (int h = 0; h < n_head; h++) {
            const int lh = layer * n_head + h, len = kv.kv_len[(size_t)b * kv.n_lh + lh];
            const ring_state ring = kv.ring[(size_t)b * kv.n_lh + lh];
            const int visible = rows_per_seq == 1 && ring_full(ring, len) ? len : len + r + 1;
            std::vector<int> seen; /* the slots this row attends to */
            for (int j = 0; j < visible; j++) {
                const bool skipped = routed && b == seq0 && j < route_len[lh] &&
                                     !(route_slot[(size_t)lh * stride + j] & route_row[(size_t)row * n_head + h]);
                if (!skipped && (rows_per_seq == 1 || ring.recent == 0 || j < ring.sink || j >= visible - ring.recent))
                    seen.push_back(j);
            }
            dense_attention(&q[(size_t)row * C + h * HD], HD, (int)seen.size(), scale,
                            [&](int j, int d) { return (double)to_f<W>(kv.at(b, lh, seen[j], 0, d)); },
                            [&](int j, int d) { return (double)to_f<W>(kv.at(b, lh, seen[j], 1, d)); },
                            &ref[(size_t)row * C + h * HD]);
        }
    }
    const double d = rel(ref, out.data(), out.size());
    printf("attention %s: rel L2 %.2e\n", what, d);
    CHECK(d < 1e-5, "attention %s: rel L2 %.3e to the dense reference", what, d);
}

/* One sequence's decode step as the engine runs it: attention_decode_kernel
 * leaves each head's split states unmerged (done NULL), and the output
 * projection (gemv_kernel, one row, EPI_STORE) merges them as it reads its
 * input. Sequence 1 of three, heads of 37 and 5 entries over n_split splits
 * (the short head's later splits empty). Against attention and the product
 * in float64, and bit for bit against the path whose last attention block
 * merges the states and the projection reads merged rows. */
template <typename W, int HD, int NW> static void check_projection_merge(const char *what, int n_split)
{
    const int n_head = 2, n_layer = 2, layer = 1, seq = 1, out = 45;
    paged_cache<W> kv(3, n_layer, n_head, HD, 4);
    const int C = kv.C, lens[2] = {37, 5};
    for (int h = 0; h < n_head; h++) {
        const int lh = layer * n_head + h;
        kv.kv_len[(size_t)seq * kv.n_lh + lh] = lens[h];
        for (int j = 0; j <= lens[h]; j++)
            for (int d = 0; d < HD; d++) {
                kv.at(seq, lh, j, 0, d) = from_f<W>(uniform());
                kv.at(seq, lh, j, 1, d) = from_f<W>(uniform());
            }
    }
    std::vector<float> q = random_f((size_t)C), bias = random_f((size_t)out);
    std::vector<W> Wt = random_w<W>((size_t)out * C);
    const float scale = 0.125f;
    const split_input parts{n_split, HD};
    const size_t per_seq = (size_t)split_input_floats(parts, C);
    std::vector<float> part(3 * per_seq, NAN), merged((size_t)C, NAN), y_merged((size_t)out, NAN),
        y((size_t)out, NAN);
    std::vector<int> done((size_t)kv.max_seq * n_head, 0);
    /* Merged by the attention's last block, then a projection of the merged row. */
    emu_launch(dim3(n_split, n_head, 1), dim3(NW * 32), 0, attention_decode_kernel<W, float, HD, NW>,
               (const float *)q.data(), merged.data(), layer, scale, kv.ctx(seq, 1), part.data(), done.data(), 0,
               (float *)nullptr);
    epilogue<W, float, EPI_STORE> e{y_merged.data(), out, layer, kv.ctx(seq, 1)};
    emu_launch(dim3(2), dim3(256), (size_t)C * 4, gemv_kernel<W, 1, false, float, EPI_STORE>, (const W *)Wt.data(),
               (const float *)bias.data(), (const float *)merged.data(), 1, C, 1, (const float *)nullptr,
               (const float *)nullptr, 1e-5f, split_input{0, 0}, e);
    /* Left in parts, merged by the projection. */
    std::fill(part.begin(), part.end(), NAN);
    emu_launch(dim3(n_split, n_head, 1), dim3(NW * 32), 0, attention_decode_kernel<W, float, HD, NW>,
               (const float *)q.data(), (float *)nullptr, layer, scale, kv.ctx(seq, 1), part.data(), (int *)nullptr,
               0, (float *)nullptr);
    e.y = y.data();
    emu_launch(dim3(2), dim3(256), ((size_t)C + per_seq) * 4, gemv_kernel<W, 1, false, float, EPI_STORE>,
               (const W *)Wt.data(), (const float *)bias.data(), (const float *)(part.data() + seq * per_seq), 1, C,
               1, (const float *)nullptr, (const float *)nullptr, 1e-5f, parts, e);
    std::vector<double> att((size_t)C), ref((size_t)out);
    for (int h = 0; h < n_head; h++) {
        const int lh = layer * n_head + h;
        dense_attention(&q[(size_t)h * HD], HD, lens[h] + 1, scale,
                        [&](int j, int d) { return (double)to_f<W>(kv.at(seq, lh, j, 0, d)); },
                        [&](int j, int d) { return (double)to_f<W>(kv.at(seq, lh, j, 1, d)); }, &att[(size_t)h * HD]);
    }
    for (int j = 0; j < out; j++) {
        double acc = bias[j];
        for (int i = 0; i < C; i++) acc += att[i] * to_f<W>(Wt[(size_t)j * C + i]);
        ref[j] = acc;
    }
    const double d = rel(ref, y.data(), y.size());
    const bool same = std::memcmp(y.data(), y_merged.data(), y.size() * sizeof(float)) == 0;
    printf("projection merging %s: rel L2 %.2e, %s the projection of merged rows\n", what, d,
           same ? "equal to" : "DIFFERENT from");
    CHECK(d < 1e-5 && same, "projection merging %s: rel L2 %.3e, bit-equal to merged rows: %d", what, d, same);
}

/* Layer norm of one row in float64. */
static std::vector<double> layernorm_ref(const float *x, const float *w, const float *b, int C, double eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= C;
    std::vector<double> y((size_t)C);
    for (int i = 0; i < C; i++) y[i] = (x[i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
    return y;
}

/* ref[r][j] = xn[r] · Wt[j] + bias[j], xn layer-normed when ln. */
template <typename W>
static std::vector<double> product_ref(const std::vector<float> &x, int rows, int in, const std::vector<W> &Wt, int out,
                                       const float *bias, const float *ln_w, const float *ln_b)
{
    std::vector<double> y((size_t)rows * out);
    for (int r = 0; r < rows; r++) {
        std::vector<double> xn(x.begin() + (size_t)r * in, x.begin() + (size_t)(r + 1) * in);
        if (ln_w) xn = layernorm_ref(x.data() + (size_t)r * in, ln_w, ln_b, in, 1e-5);
        for (int j = 0; j < out; j++) {
            double s = bias ? bias[j] : 0;
            for (int i = 0; i < in; i++) s += xn[i] * to_f<W>(Wt[(size_t)j * in + i]);
            y[(size_t)r * out + j] = s;
        }
    }
    return y;
}

template <typename W> static void check_gemv(const char *what, double limit)
{
    const int n_head = 2, hd = 32, C = n_head * hd, F = 4 * C, layer = 1, rows = 3;
    paged_cache<W> kv(3, 2, n_head, hd, 4);
    for (int i = 0; i < 3 * kv.n_lh; i++) kv.kv_len[i] = (i * 7) % 40;
    std::vector<float> x = random_f((size_t)rows * C), ln_w = random_f(C), ln_b = random_f(C);
    std::vector<float> bias = random_f((size_t)F);

    /* LN + QKV with the KV append, 3 decode rows (one per sequence), grid of 5 blocks striding over 3C rows. */
    std::vector<W> Wqkv = random_w<W>((size_t)3 * C * C);
    std::vector<float> q((size_t)rows * C, NAN);
    epilogue<W, float, EPI_QKV> qkv;
    qkv.y = q.data();
    qkv.out = 3 * C;
    qkv.layer = layer;
    qkv.kv = kv.ctx(0, 1);
    emu_launch(dim3(5), dim3(256), (size_t)(rows + 2) * C * 4, gemv_kernel<W, 4, true, float, EPI_QKV>,
               (const W *)Wqkv.data(), (const float *)bias.data(), (const float *)x.data(), rows, C, 1,
               (const float *)ln_w.data(), (const float *)ln_b.data(), 1e-5f, split_input{0, 0}, qkv);
    std::vector<double> ref = product_ref(x, rows, C, Wqkv, 3 * C, bias.data(), ln_w.data(), ln_b.data());
    std::vector<double> qref((size_t)rows * C);
    std::vector<double> kvref;
    std::vector<float> kvgot;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < 3 * C; j++) {
            if (j < C) {
                qref[(size_t)r * C + j] = ref[(size_t)r * 3 * C + j];
                continue;
            }
            const int values = j >= 2 * C, c = j - C - values * C, lh = layer * n_head + c / hd;
            kvref.push_back(ref[(size_t)r * 3 * C + j]);
            kvgot.push_back(to_f<W>(kv.at(r, lh, kv.kv_len[(size_t)r * kv.n_lh + lh], values, c % hd)));
        }
    size_t written = 0;
    for (auto &v : kv.pool) written += !std::isnan(to_f<W>(v));
    double dq = rel(qref, q.data(), q.size()), dkv = rel(kvref, kvgot.data(), kvgot.size());
    printf("gemv %s, LN + QKV: queries rel L2 %.2e, appended keys/values %.2e, %zu cache values written\n", what, dq,
           dkv, written);
    CHECK(dq < 1e-5 && dkv < limit, "gemv %s QKV: queries %.3e, keys/values %.3e", what, dq, dkv);
    CHECK(written == (size_t)rows * 2 * C, "gemv %s QKV: %zu cache values written, expected %d", what, written,
          rows * 2 * C);

    /* Residual add over F inputs, 5 rows of the 8-row variant. */
    const int r5 = 5;
    std::vector<float> h = random_f((size_t)r5 * F), resid = random_f((size_t)r5 * C), before = resid;
    std::vector<W> Wp = random_w<W>((size_t)C * F);
    epilogue<W, float, EPI_RESIDUAL> res;
    res.y = resid.data();
    res.out = C;
    res.layer = layer;
    res.kv = kv.ctx(0, 1);
    emu_launch(dim3(3), dim3(256), (size_t)r5 * F * 4, gemv_kernel<W, 8, false, float, EPI_RESIDUAL>, (const W *)Wp.data(),
               (const float *)bias.data(), (const float *)h.data(), r5, F, 1, (const float *)nullptr,
               (const float *)nullptr, 1e-5f, split_input{0, 0}, res);
    ref = product_ref(h, r5, F, Wp, C, bias.data(), nullptr, nullptr);
    for (size_t i = 0; i < ref.size(); i++) ref[i] += before[i];
    double dr = rel(ref, resid.data(), resid.size());
    printf("gemv %s, residual: rel L2 %.2e\n", what, dr);
    CHECK(dr < 1e-5, "gemv %s residual: %.3e", what, dr);

    /* LN + GELU, 2 rows; LN + store without bias (the LM head), 1 row. */
    std::vector<W> Wfc = random_w<W>((size_t)F * C);
    std::vector<float> fc((size_t)2 * F, NAN);
    epilogue<W, float, EPI_GELU> ge;
    ge.y = fc.data();
    ge.out = F;
    ge.layer = 0;
    ge.kv = kv.ctx(0, 1);
    emu_launch(dim3(4), dim3(256), (size_t)4 * C * 4, gemv_kernel<W, 2, true, float, EPI_GELU>, (const W *)Wfc.data(),
               (const float *)bias.data(), (const float *)x.data(), 2, C, 1, (const float *)ln_w.data(),
               (const float *)ln_b.data(), 1e-5f, split_input{0, 0}, ge);
    ref = product_ref(x, 2, C, Wfc, F, bias.data(), ln_w.data(), ln_b.data());
    for (auto &v : ref) v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    double dg = rel(ref, fc.data(), fc.size());
    std::vector<float> logits((size_t)F, NAN);
    epilogue<W, float, EPI_STORE> st;
    st.y = logits.data();
    st.out = F;
    st.layer = 0;
    st.kv = kv.ctx(0, 1);
    emu_launch(dim3(3), dim3(256), (size_t)3 * C * 4, gemv_kernel<W, 1, true, float, EPI_STORE>, (const W *)Wfc.data(),
               (const float *)nullptr, (const float *)x.data(), 1, C, 1, (const float *)ln_w.data(),
               (const float *)ln_b.data(), 1e-5f, split_input{0, 0}, st);
    ref = product_ref(x, 1, C, Wfc, F, nullptr, ln_w.data(), ln_b.data());
    double ds = rel(ref, logits.data(), logits.size());
    printf("gemv %s, LN + GELU: rel L2 %.2e; LN + store: %.2e\n", what, dg, ds);
    CHECK(dg < 1e-5 && ds < 1e-5, "gemv %s GELU %.3e, store %.3e", what, dg, ds);

    /* LN over a row many times wider than the block (F inputs, 32 threads: each
     * thread sums, and normalises, 8 of them). */
    std::vector<float> ln_wf = random_f(F), ln_bf = random_f(F), wide((size_t)C, NAN);
    st.y = wide.data();
    st.out = C;
    emu_launch(dim3(2), dim3(32), (size_t)3 * F * 4, gemv_kernel<W, 1, true, float, EPI_STORE>, (const W *)Wp.data(),
               (const float *)nullptr, (const float *)h.data(), 1, F, 1, (const float *)ln_wf.data(),
               (const float *)ln_bf.data(), 1e-5f, split_input{0, 0}, st);
    ref = product_ref(h, 1, F, Wp, C, nullptr, ln_wf.data(), ln_bf.data());
    double dw = rel(ref, wide.data(), wide.size());
    printf("gemv %s, LN over %d inputs on 32 threads: rel L2 %.2e\n", what, F, dw);
    CHECK(dw < 1e-5, "gemv %s LN over a wide row: %.3e", what, dw);
}

/* An output element that counts the writes it receives, so that a test sees
 * each output written exactly once (and nothing written beside them). */
struct tally {
    float v = NAN;
    int writes = 0;
    tally() = default;
    explicit tally(float x) : v(x) {}
    tally(const tally &) = default;
    tally &operator=(const tally &o)
    {
        v = o.v;
        writes++;
        return *this;
    }
};
template <> inline tally pkcuda::from_f<tally>(float v) { return tally(v); }

/* gemv_kernel with the row template the engine picks for n_rows, on a grid
 * of `grid` blocks of 8 warps, the shared memory the engine gives it. */
template <typename W, bool LN, typename OutT, int EPI>
static void launch_gemv(int grid, const W *Wt, const float *bias, const float *x, int n_rows, int in, int split,
                        const float *ln_w, const float *ln_b, epilogue<W, OutT, EPI> epi)
{
    const size_t smem = (size_t)(n_rows + (LN ? 2 : 0)) * in * 4;
#define GEMV_ROWS(R)                                                                                                 \
    emu_launch(dim3(grid), dim3(256), smem, gemv_kernel<W, R, LN, OutT, EPI>, Wt, bias, x, n_rows, in, split, ln_w,  \
               ln_b, 1e-5f, split_input{0, 0}, epi)
    if (n_rows <= 1)
        GEMV_ROWS(1);
    else if (n_rows <= 2)
        GEMV_ROWS(2);
    else if (n_rows <= 4)
        GEMV_ROWS(4);
    else
        GEMV_ROWS(8);
#undef GEMV_ROWS
}

/* Elements of y written other than expected: once each between the `pad`
 * guard elements at either end, never the guards. */
static int writes_wrong(const std::vector<tally> &y, size_t pad)
{
    int wrong = 0;
    for (size_t i = 0; i < y.size(); i++) wrong += y[i].writes != (i < pad || i >= y.size() - pad ? 0 : 1);
    return wrong;
}

/* One matrix-vector product with `split` warps an output on `grid` blocks
 * (fewer than the outputs' groups, so that blocks stride over rounds; more
 * leave blocks idle), against float64: n_rows rows of in inputs (layer-normed
 * when LN), out outputs, epilogue EPI. STORE and GELU write tallies, so every
 * output must be written exactly once; RESIDUAL adds to the rows it is given;
 * QKV (out = 3 * 3 heads of 33) writes queries as tallies and keys and values
 * into a paged cache where every other entry is NaN, either as one sequence
 * of n_rows prompt rows or as n_rows sequences of one decode row. */
template <typename W, bool LN, int EPI>
static void check_split(const char *type, double kv_limit, int in, int out, int n_rows, int split, int grid)
{
    static const char *epi_names[] = {"store", "residual", "GELU", "QKV"};
    const size_t pad = 16;
    std::vector<float> x = random_f((size_t)n_rows * in), bias = random_f((size_t)out);
    std::vector<float> ln_w = random_f((size_t)in), ln_b = random_f((size_t)in);
    std::vector<W> Wt = random_w<W>((size_t)out * in);
    std::vector<double> ref = product_ref(x, n_rows, in, Wt, out, bias.data(), LN ? ln_w.data() : nullptr,
                                          ln_b.data());
    const int n_head = 3, hd = 33, C = n_head * hd, layer = 1;
    const bool prompt = EPI == EPI_QKV && n_rows % 2 == 1; /* one sequence of n_rows rows */
    paged_cache<W> kv(8, 2, n_head, hd, 5);
    for (size_t i = 0; i < kv.kv_len.size(); i++) kv.kv_len[i] = (int)(i * 13 % 60);
    const rows_ctx<W> ctx = kv.ctx(prompt ? 2 : 0, prompt ? n_rows : 1);
    std::vector<tally> y((size_t)n_rows * (EPI == EPI_QKV ? C : out) + 2 * pad);
    std::vector<float> resid = random_f((size_t)n_rows * out + 2 * pad), before = resid;
    double d = 0, dkv = 0;
    int wrong = 0;
    size_t cache_written = 0;
    if (EPI == EPI_RESIDUAL) {
        epilogue<W, float, EPI> e{resid.data() + pad, out, layer, ctx};
        launch_gemv<W, LN>(grid, Wt.data(), bias.data(), x.data(), n_rows, in, split, ln_w.data(), ln_b.data(), e);
        for (size_t i = 0; i < ref.size(); i++) ref[i] += before[pad + i];
        d = rel(ref, resid.data() + pad, ref.size());
        for (size_t i = 0; i < pad; i++)
            wrong += resid[i] != before[i] || resid[resid.size() - 1 - i] != before[before.size() - 1 - i];
    } else {
        epilogue<W, tally, EPI> e{y.data() + pad, out, layer, ctx};
        launch_gemv<W, LN>(grid, Wt.data(), bias.data(), x.data(), n_rows, in, split, ln_w.data(), ln_b.data(), e);
        wrong = writes_wrong(y, pad);
        std::vector<double> want;
        std::vector<float> got, kvgot;
        std::vector<double> kvref;
        for (int r = 0; r < n_rows; r++)
            for (int j = 0; j < out; j++) {
                double v = ref[(size_t)r * out + j];
                if (EPI == EPI_GELU) v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
                if (EPI != EPI_QKV || j < C) {
                    want.push_back(v);
                    got.push_back(y[pad + (size_t)r * (EPI == EPI_QKV ? C : out) + j].v);
                    continue;
                }
                const int values = j >= 2 * C, c = j - C - values * C, lh = layer * n_head + c / hd;
                const int b = ctx.seq0 + r / ctx.rows_per_seq;
                const int slot = kv.kv_len[(size_t)b * kv.n_lh + lh] + r % ctx.rows_per_seq;
                kvref.push_back(v);
                kvgot.push_back(to_f<W>(kv.at(b, lh, slot, values, c % hd)));
            }
        d = rel(want, got.data(), got.size());
        if (EPI == EPI_QKV) {
            dkv = rel(kvref, kvgot.data(), kvgot.size());
            for (auto &v : kv.pool) cache_written += !std::isnan(to_f<W>(v));
        }
    }
    const size_t cache_want = EPI == EPI_QKV ? (size_t)n_rows * 2 * C : 0;
    printf("gemv %s, %s%s, in %d, out %d, %d rows, %d warps an output, %d blocks: rel L2 %.2e%s\n", type,
           LN ? "LN + " : "", epi_names[EPI], in, out, n_rows, split, grid, d,
           EPI == EPI_QKV ? ", keys/values" : "");
    if (EPI == EPI_QKV) printf("    keys/values rel L2 %.2e, %zu cache values written\n", dkv, cache_written);
    CHECK(d < 1e-6 && dkv < kv_limit && wrong == 0 && cache_written == cache_want,
          "gemv %s %s in %d out %d rows %d split %d: rel L2 %.3e, keys/values %.3e, %d outputs written other than "
          "once (or guards touched), %zu cache values written (want %zu)",
          type, epi_names[EPI], in, out, n_rows, split, d, dkv, wrong, cache_written, cache_want);
}

/* The split products over the shapes that matter and their awkward cases:
 * gpt2-medium's down-projection (in 4,096, out 1,024; in parts of 2 and of 8,
 * and in one part walked in batches of loads) and up-projection (in 1,024,
 * out 4,096); a row of 97 or 194 16-byte vectors, which leaves lanes, and
 * with 8 parts whole parts, with nothing to load; outputs (301, 297) that no
 * number of outputs a block divides. Every row count 1..8 meets every
 * epilogue and several splits. */
template <typename W> static void check_gemv_splits(const char *type, double kv_limit)
{
    check_split<W, false, EPI_RESIDUAL>(type, kv_limit, 4096, 1024, 1, 2, 37);
    check_split<W, false, EPI_RESIDUAL>(type, kv_limit, 4096, 1024, 2, 8, 37);
    check_split<W, false, EPI_STORE>(type, kv_limit, 4096, 1024, 1, 1, 37);
    check_split<W, true, EPI_GELU>(type, kv_limit, 1024, 4096, 1, 1, 131);
    check_split<W, true, EPI_STORE>(type, kv_limit, 1024, 4096, 2, 4, 131);
    const int splits[4] = {1, 2, 4, 8};
    for (int rows = 1; rows <= 8; rows++) {
        const int split = splits[rows % 4], other = splits[(rows + 1) % 4];
        check_split<W, true, EPI_STORE>(type, kv_limit, 776, 301, rows, split, 5);
        check_split<W, false, EPI_RESIDUAL>(type, kv_limit, 776, 301, rows, other, 7);
        check_split<W, true, EPI_GELU>(type, kv_limit, 776, 301, rows, other, 301);
        check_split<W, true, EPI_QKV>(type, kv_limit, 776, 297, rows, split, 6);
    }
}

/* The prompt path's pieces: QKV epilogue of 5 rows of sequence 1 into the
 * cache after its 20 entries, layer norm into bf16, embedding, advance. */
static void check_prompt_pieces()
{
    typedef __nv_bfloat16 W;
    const int n_head = 2, hd = 32, C = n_head * hd, rows = 5;
    paged_cache<W> kv(2, 2, n_head, hd, 4);
    for (auto &l : kv.kv_len) l = 20;
    std::vector<float> prod = random_f((size_t)rows * 3 * C), bias = random_f((size_t)3 * C), q((size_t)rows * C);
    epilogue<W, float, EPI_QKV> e;
    e.y = q.data();
    e.out = 3 * C;
    e.layer = 0;
    e.kv = kv.ctx(1, rows);
    emu_launch(dim3(3), dim3(64), 0, epilogue_kernel<W, float, EPI_QKV>, (const float *)prod.data(),
               (const float *)bias.data(), rows, e);
    int wrong = 0;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < 3 * C; j++) {
            const float v = prod[(size_t)r * 3 * C + j] + bias[j];
            if (j < C) {
                wrong += q[(size_t)r * C + j] != v;
                continue;
            }
            const int values = j >= 2 * C, c = j - C - values * C;
            wrong += to_f<W>(kv.at(1, c / hd, 20 + r, values, c % hd)) != to_f<W>(from_f<W>(v));
        }
    CHECK(wrong == 0, "prompt QKV epilogue: %d values misplaced", wrong);

    std::vector<float> x = random_f((size_t)rows * C), w = random_f(C), b = random_f(C);
    std::vector<W> y((size_t)rows * C);
    emu_launch(dim3(rows), dim3(64), 0, layernorm_kernel<W>, y.data(), (const float *)x.data(), (const float *)w.data(),
               (const float *)b.data(), C, 1e-5f);
    std::vector<double> ref;
    std::vector<float> got;
    for (int r = 0; r < rows; r++) {
        std::vector<double> l = layernorm_ref(x.data() + (size_t)r * C, w.data(), b.data(), C, 1e-5);
        ref.insert(ref.end(), l.begin(), l.end());
    }
    for (auto v : y) got.push_back(to_f<W>(v));
    const double d = rel(ref, got.data(), got.size());
    CHECK(d < 5e-3, "layer norm into bf16: rel L2 %.3e", d);

    /* Embedding of 2 decode rows at positions 7 and 3, then the advance. */
    std::vector<W> wte = random_w<W>((size_t)10 * C);
    std::vector<float> wpe = random_f((size_t)16 * C);
    kv.seq_pos = {7, 3};
    const int32_t tokens[2] = {9, 2};
    std::vector<float> ex((size_t)2 * C);
    emu_launch(dim3(2), dim3(32), 0, embed_kernel<W>, ex.data(), (const W *)wte.data(), wpe.data(),
               (const int32_t *)tokens, kv.ctx(0, 1));
    wrong = 0;
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < C; i++)
            wrong += ex[(size_t)r * C + i] != to_f<W>(wte[(size_t)tokens[r] * C + i]) +
                                                   wpe[(size_t)kv.seq_pos[r] * C + i];
    CHECK(wrong == 0, "embedding: %d values wrong", wrong);
    emu_launch(dim3(1), dim3(64), 0, advance_kernel<W>, kv.ctx(1, rows), 1);
    CHECK(kv.seq_pos[0] == 7 && kv.seq_pos[1] == 3 + rows && kv.kv_len[0] == 20 && kv.kv_len[kv.n_lh] == 20 + rows &&
              kv.kv_len[2 * kv.n_lh - 1] == 20 + rows,
          "advance: positions %d %d, lengths %d %d", kv.seq_pos[0], kv.seq_pos[1], kv.kv_len[0], kv.kv_len[kv.n_lh]);
}

/* A decode step with streaming rings (sink 2, recent 3): the QKV epilogue
 * writes a full ring's new entry over slot `next` and a filling ring's after
 * its entries; the advance moves a full ring's `next` on (wrapping back to
 * the first slot after the sinks) and lengthens every other head. */
static void check_ring_step()
{
    typedef float W;
    const int n_head = 3, hd = 32, C = n_head * hd;
    paged_cache<W> kv(1, 1, n_head, hd, 2);
    kv.kv_len = {5, 3, 9};                                  /* a full ring, a filling ring, a full head */
    kv.ring = {ring_state{2, 3, 4, 0}, ring_state{2, 3, 2, 0}, ring_state{}};
    std::vector<float> prod = random_f((size_t)3 * C), bias((size_t)3 * C, 0.f), q((size_t)C);
    epilogue<W, float, EPI_QKV> e;
    e.y = q.data();
    e.out = 3 * C;
    e.layer = 0;
    e.kv = kv.ctx(0, 1);
    emu_launch(dim3(2), dim3(64), 0, epilogue_kernel<W, float, EPI_QKV>, (const float *)prod.data(),
               (const float *)bias.data(), 1, e);
    const int slot[3] = {4, 3, 9};
    int wrong = 0;
    for (int h = 0; h < n_head; h++)
        for (int d = 0; d < hd; d++)
            wrong += kv.at(0, h, slot[h], 0, d) != prod[C + h * hd + d] ||
                     kv.at(0, h, slot[h], 1, d) != prod[2 * C + h * hd + d];
    CHECK(wrong == 0, "ring step: %d key or value elements not in slots 4, 3 and 9", wrong);
    emu_launch(dim3(1), dim3(64), 0, advance_kernel<W>, kv.ctx(0, 1), 1);
    CHECK(kv.kv_len[0] == 5 && kv.ring[0].next == 2 && kv.kv_len[1] == 4 && kv.ring[1].next == 2 && kv.kv_len[2] == 10,
          "ring advance: lengths %d %d %d, next %d %d (expected 5 4 10, next 2 2)", kv.kv_len[0], kv.kv_len[1],
          kv.kv_len[2], kv.ring[0].next, kv.ring[1].next);
    emu_launch(dim3(1), dim3(64), 0, advance_kernel<W>, kv.ctx(0, 1), 1);
    CHECK(kv.ring[0].next == 3 && kv.kv_len[1] == 5 && kv.ring[1].next == 2,
          "second advance: next %d (expected 3), filling ring now %d entries, next %d", kv.ring[0].next, kv.kv_len[1],
          kv.ring[1].next);
}

/* Decode attention of heads cut into slices on 3 GPUs (backend/cuda/
 * group.h): each rank's cache holds one contiguous slice of a head, or none;
 * the rank with a head's last slice holds the step's new entry, the others
 * are detached. Each rank's kernel writes merged states, merge_ranks_kernel
 * merges the gathered states in rank order, and the result must match dense
 * attention over the whole head. Also: a detached head's new key and value
 * go to the discard rows, its slots stay untouched, and it does not grow. */
template <typename W, int HD> static void check_sharded_decode(const char *what)
{
    const int G = 3, n_head = 3, n_seq = 2, C = n_head * HD, n_split = 2, NW = 4;
    /* Entries before the step of each (sequence, head), and where ranks 0 and 1 stop: slices [0,a), [a,b), [b,len]. */
    const int lens[n_seq][n_head] = {{40, 7, 0}, {16, 33, 21}};
    const int cut_a[n_seq][n_head] = {{10, 0, 0}, {16, 5, 21}};
    const int cut_b[n_seq][n_head] = {{30, 7, 0}, {16, 20, 21}};
    std::vector<paged_cache<W>> ranks;
    for (int g = 0; g < G; g++) ranks.emplace_back(n_seq, 1, n_head, HD, 4);
    std::vector<std::vector<W>> keys((size_t)n_seq * n_head), values((size_t)n_seq * n_head);
    for (int b = 0; b < n_seq; b++)
        for (int h = 0; h < n_head; h++) {
            const int total = lens[b][h] + 1, bounds[G + 1] = {0, cut_a[b][h], cut_b[b][h], total};
            keys[b * n_head + h] = random_w<W>((size_t)total * HD);
            values[b * n_head + h] = random_w<W>((size_t)total * HD);
            for (int g = 0; g < G; g++) {
                const int n = bounds[g + 1] - bounds[g], tail = g == G - 1;
                ranks[g].kv_len[(size_t)b * n_head + h] = tail ? n - 1 : n;
                ranks[g].ring[(size_t)b * n_head + h].detached = !tail;
                for (int j = 0; j < n; j++)
                    for (int d = 0; d < HD; d++) {
                        ranks[g].at(b, h, j, 0, d) = keys[b * n_head + h][(size_t)(bounds[g] + j) * HD + d];
                        ranks[g].at(b, h, j, 1, d) = values[b * n_head + h][(size_t)(bounds[g] + j) * HD + d];
                    }
            }
        }
    std::vector<float> q = random_f((size_t)n_seq * C), out((size_t)n_seq * C, NAN);
    std::vector<float> gathered((size_t)G * n_seq * n_head * (HD + 2), NAN);
    const float scale = 0.125f;
    for (int g = 0; g < G; g++) {
        std::vector<float> part((size_t)n_seq * n_head * n_split * (HD + 2), NAN);
        std::vector<int> done((size_t)n_seq * n_head, 0);
        emu_launch(dim3(n_split, n_head, n_seq), dim3(NW * 32), 0, attention_decode_kernel<W, float, HD, NW>,
                   (const float *)q.data(), (float *)nullptr, 0, scale, ranks[g].ctx(0, 1), part.data(), done.data(), 0,
                   gathered.data() + (size_t)g * n_seq * n_head * (HD + 2));
    }
    emu_launch(dim3(n_head, n_seq), dim3(HD), 0, merge_ranks_kernel<float, HD>, (const float *)gathered.data(), G,
               out.data(), C);
    std::vector<double> ref((size_t)n_seq * C);
    for (int b = 0; b < n_seq; b++)
        for (int h = 0; h < n_head; h++) {
            const int total = lens[b][h] + 1;
            const std::vector<W> &K = keys[b * n_head + h], &V = values[b * n_head + h];
            dense_attention(&q[(size_t)b * C + h * HD], HD, total, scale,
                            [&](int j, int d) { return (double)to_f<W>(K[(size_t)j * HD + d]); },
                            [&](int j, int d) { return (double)to_f<W>(V[(size_t)j * HD + d]); },
                            &ref[(size_t)b * C + h * HD]);
        }
    const double d = rel(ref, out.data(), out.size());
    printf("sharded decode %s: rel L2 %.2e\n", what, d);
    CHECK(d < 1e-5, "sharded decode %s: rel L2 %.3e to dense attention over whole heads", what, d);

    /* Rank 0 holds head 0 of sequence 0 detached (entries 0..9): the step's key and value must miss it. */
    paged_cache<W> &r0 = ranks[0];
    std::vector<W> discard((size_t)n_seq * 2 * C, from_f<W>(NAN));
    std::vector<float> prod = random_f((size_t)n_seq * 3 * C), bias((size_t)3 * C, 0.f), qs((size_t)n_seq * C);
    const std::vector<W> before = r0.pool;
    epilogue<W, float, EPI_QKV> e;
    e.y = qs.data();
    e.out = 3 * C;
    e.layer = 0;
    e.kv = r0.ctx(0, 1);
    e.kv.discard = discard.data();
    emu_launch(dim3(4), dim3(64), 0, epilogue_kernel<W, float, EPI_QKV>, (const float *)prod.data(),
               (const float *)bias.data(), n_seq, e);
    int changed = 0;
    for (size_t i = 0; i < before.size(); i++)
        changed += memcmp(&before[i], &r0.pool[i], sizeof(W)) != 0;
    CHECK(changed == 0, "sharded decode %s: %d pool elements written on a rank whose heads are all detached", what,
          changed);
    CHECK(to_f<W>(discard[0]) == to_f<W>(from_f<W>(prod[C])), "sharded decode %s: the discard rows got no key", what);
    const std::vector<int32_t> lens0 = r0.kv_len;
    emu_launch(dim3(1), dim3(64), 0, advance_kernel<W>, r0.ctx(0, 1), n_seq);
    CHECK(r0.kv_len == lens0 && r0.seq_pos[0] == 1, "sharded decode %s: detached heads grew, or the position did not move",
          what);
}

/* Compaction in place of a 40-entry head and a 16-entry head to kept slots
 * that include runs, gaps and a block boundary, then the read of both heads
 * back as float32. */
template <typename W> static void check_compaction(const char *what)
{
    const int n_head = 2, hd = 64, layer = 1, b = 1;
    paged_cache<W> kv(2, 2, n_head, hd, 3);
    const int len[2] = {40, 16};
    for (int h = 0; h < n_head; h++) {
        const int lh = layer * n_head + h;
        kv.kv_len[(size_t)b * kv.n_lh + lh] = len[h];
        for (int sl = 0; sl < len[h]; sl++)
            for (int d = 0; d < hd; d++) {
                kv.at(b, lh, sl, 0, d) = from_f<W>((float)(sl * 100 + d));
                kv.at(b, lh, sl, 1, d) = from_f<W>((float)(-sl * 100 - d));
            }
    }
    const int stride = 9;
    std::vector<int32_t> keep = {0, 1, 5, 15, 16, 17, 18, 33, 39, /* head 1: */ 2, 3, 4, 9, 15, 0, 0, 0, 0};
    std::vector<int32_t> n_keep = {9, 5};
    emu_launch(dim3(n_head), dim3(64), (size_t)PK_CUDA_BLOCK * 2 * hd * sizeof(W), compact_layer_kernel<W>,
               kv.ctx(b, 1), b, layer, (const int32_t *)keep.data(), (const int32_t *)n_keep.data(), stride);
    int wrong = 0;
    for (int h = 0; h < n_head; h++)
        for (int j = 0; j < n_keep[h]; j++)
            for (int d = 0; d < hd; d++) {
                const int from = keep[(size_t)h * stride + j];
                wrong += to_f<W>(kv.at(b, layer * n_head + h, j, 0, d)) != to_f<W>(from_f<W>((float)(from * 100 + d))) ||
                         to_f<W>(kv.at(b, layer * n_head + h, j, 1, d)) != to_f<W>(from_f<W>((float)(-from * 100 - d)));
            }
    CHECK(wrong == 0, "compaction %s: %d elements not where the kept slots go", what, wrong);
    /* Read back the first 5 slots of both heads. */
    const int rl = 5;
    std::vector<float> k((size_t)n_head * rl * hd, NAN), v((size_t)n_head * rl * hd, NAN);
    emu_launch(dim3(1, n_head), dim3(256), 0, read_heads_kernel<W>, kv.ctx(b, 1), b, layer, 0, rl, k.data(), v.data());
    wrong = 0;
    for (int h = 0; h < n_head; h++)
        for (int j = 0; j < rl; j++)
            for (int d = 0; d < hd; d++)
                wrong += k[((size_t)h * rl + j) * hd + d] != to_f<W>(kv.at(b, layer * n_head + h, j, 0, d)) ||
                         v[((size_t)h * rl + j) * hd + d] != to_f<W>(kv.at(b, layer * n_head + h, j, 1, d));
    CHECK(wrong == 0, "read of compacted heads %s: %d elements differ", what, wrong);
    printf("compaction %s: 9 of 40 and 5 of 16 entries moved in place, read back as float32\n", what);
}

/* The fused residual epilogue + layer norm of the cuBLAS path against the two
 * kernels it replaces, run one after the other: the same residual stream and
 * the same normalised rows, bit for bit. */
static void check_residual_layernorm()
{
    typedef __nv_bfloat16 W;
    const int rows = 3, C = 96;
    paged_cache<W> kv(1, 1, 1, 32, 1);
    std::vector<float> x = random_f((size_t)rows * C), prod = random_f((size_t)rows * C), bias = random_f(C);
    std::vector<float> w = random_f(C), b = random_f(C), x2 = x;
    std::vector<W> fused((size_t)rows * C), apart((size_t)rows * C);
    emu_launch(dim3(rows), dim3(64), 0, residual_layernorm_kernel<W>, fused.data(), x.data(), (const float *)prod.data(),
               (const float *)bias.data(), (const float *)w.data(), (const float *)b.data(), C, 1e-5f);
    epilogue<W, float, EPI_RESIDUAL> e;
    e.y = x2.data();
    e.out = C;
    e.layer = 0;
    e.kv = kv.ctx(0, rows);
    emu_launch(dim3(2), dim3(64), 0, epilogue_kernel<W, float, EPI_RESIDUAL>, (const float *)prod.data(),
               (const float *)bias.data(), rows, e);
    emu_launch(dim3(rows), dim3(64), 0, layernorm_kernel<W>, apart.data(), (const float *)x2.data(),
               (const float *)w.data(), (const float *)b.data(), C, 1e-5f);
    int wrong = 0;
    for (size_t i = 0; i < x.size(); i++)
        wrong += x[i] != x2[i] || to_f<W>(fused[i]) != to_f<W>(apart[i]);
    CHECK(wrong == 0, "residual + layer norm in one kernel: %d values differ from the two kernels", wrong);
}

/* The device's greedy choice against the CPU's first-largest rule: rows
 * with a repeated maximum, a maximum in the last element, and a width that
 * is not a multiple of the block. */
static void check_argmax()
{
    const int V = 1000, rows = 3;
    std::vector<float> x = random_f((size_t)rows * V);
    x[(size_t)0 * V + 700] = x[(size_t)0 * V + 300] = 5.f;  /* tie: 300 wins */
    x[(size_t)1 * V + V - 1] = 7.f;
    x[(size_t)2 * V + 0] = 9.f;
    std::vector<int32_t> got(rows, -1), pos = {4, 0, 9}, by_position((size_t)rows * 10, -1);
    emu_launch(dim3(rows), dim3(256), 0, argmax_kernel, (const float *)x.data(), V, got.data(),
               (const int32_t *)pos.data(), by_position.data(), 10);
    CHECK(got[0] == 300 && got[1] == V - 1 && got[2] == 0, "argmax: %d %d %d, expected 300 %d 0", got[0], got[1],
          got[2], V - 1);
    int placed = 0;
    for (int i = 0; i < rows * 10; i++) placed += by_position[i] != -1;
    CHECK(placed == rows && by_position[4] == 300 && by_position[10] == V - 1 && by_position[29] == 0,
          "argmax: the choices by position are not each at its sequence's position (%d written)", placed);
}

/* The press measures over one head's listed slots (gaps, block boundaries,
 * entries later than some rows, NaN in every slot not listed), against
 * float64: the attention sums of 6 query rows at positions 38..43 (softmax
 * over the listed entries each row sees), the key norms, and expected
 * attention's logits and value norms from the statistics of rows 2..5. */
template <typename W> static void check_measures(const char *what)
{
    const int HD = 64, n_head = 2, layer = 1, head = 1, lh = layer * n_head + head, C = n_head * HD;
    const int rows = 6, qpos0 = 38, first = 2;
    paged_cache<W> kv(1, 2, n_head, HD, 3);
    const std::vector<int32_t> slots = {0, 1, 2, 5, 7, 8, 15, 16, 17, 20, 30, 31, 32, 40, 44};
    const int n = (int)slots.size();
    for (int j : slots)
        for (int d = 0; d < HD; d++) {
            kv.at(0, lh, j, 0, d) = from_f<W>(uniform());
            kv.at(0, lh, j, 1, d) = from_f<W>(uniform());
        }
    const std::vector<float> q = random_f((size_t)rows * C);
    const float *qh = q.data() + head * HD;
    const float scale = 0.125f;
    auto key = [&](int j, int d) { return (double)to_f<W>(kv.at(0, lh, slots[j], 0, d)); };
    auto value = [&](int j, int d) { return (double)to_f<W>(kv.at(0, lh, slots[j], 1, d)); };
    std::vector<double> want_sums(n, 0.0), want_norms(n), want_logit(n), want_sq(n);
    for (int r = 0; r < rows; r++) {
        std::vector<double> x(n, -INFINITY);
        double m = -INFINITY, sum = 0;
        for (int j = 0; j < n; j++) {
            if (slots[j] > qpos0 + r) continue;
            double dot = 0;
            for (int d = 0; d < HD; d++) dot += qh[(size_t)r * C + d] * key(j, d);
            x[j] = scale * dot;
            m = std::max(m, x[j]);
        }
        for (int j = 0; j < n; j++) sum += std::isinf(x[j]) ? 0 : std::exp(x[j] - m);
        for (int j = 0; j < n; j++) want_sums[j] += std::isinf(x[j]) ? 0 : std::exp(x[j] - m) / sum;
    }
    std::vector<double> mu(HD, 0.0), cov((size_t)HD * HD, 0.0);
    for (int a = 0; a < HD; a++) {
        for (int t = first; t < rows; t++) mu[a] += qh[(size_t)t * C + a];
        mu[a] /= rows - first;
    }
    for (int a = 0; a < HD; a++)
        for (int b = 0; b < HD; b++) {
            for (int t = first; t < rows; t++)
                cov[(size_t)a * HD + b] += (qh[(size_t)t * C + a] - mu[a]) * (qh[(size_t)t * C + b] - mu[b]);
            cov[(size_t)a * HD + b] /= rows - first;
        }
    for (int j = 0; j < n; j++) {
        double sq = 0, lin = 0, quad = 0, vsq = 0;
        for (int a = 0; a < HD; a++) {
            sq += key(j, a) * key(j, a);
            lin += key(j, a) * mu[a];
            for (int b = 0; b < HD; b++) quad += key(j, a) * cov[(size_t)a * HD + b] * key(j, b);
            vsq += value(j, a) * value(j, a);
        }
        want_norms[j] = std::sqrt(sq);
        want_logit[j] = lin / std::sqrt((double)HD) + quad / (2.0 * HD);
        want_sq[j] = vsq;
    }
    std::vector<float> lse(rows), norms(n);
    std::vector<double> sums(n), logit(n), value_sq(n), stats((size_t)HD + HD * HD);
    const rows_ctx<W> c = kv.ctx(0, 1);
    emu_launch(dim3(rows), dim3(LSE_WARPS * 32), 0, row_logsumexp_kernel<W>, c, 0, lh, slots.data(), n, qh, C,
               qpos0, scale, lse.data());
    emu_launch(dim3((n + MEASURE_WARPS - 1) / MEASURE_WARPS), dim3(MEASURE_WARPS * 32), 0, attention_sums_kernel<W>,
               c, 0, lh, slots.data(), n, qh, C, qpos0, rows, scale, (const float *)lse.data(), sums.data());
    emu_launch(dim3(1), dim3(64), 0, key_norms_kernel<W>, c, 0, lh, slots.data(), n, norms.data());
    emu_launch(dim3((HD * HD + 255) / 256), dim3(256), 0, query_statistics_kernel, qh, C, first, rows, HD, stats.data(),
               stats.data() + HD);
    emu_launch(dim3(1), dim3(32), 0, expected_logits_kernel<W>, c, 0, lh, slots.data(), n,
               (const double *)stats.data(), (const double *)stats.data() + HD, logit.data(), value_sq.data());
    auto rel_d = [](const std::vector<double> &ref, const std::vector<double> &got) {
        double num = 0, den = 0;
        for (size_t i = 0; i < ref.size(); i++) {
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        return std::isnan(num) ? INFINITY : std::sqrt(num / den);
    };
    const double e_sums = rel_d(want_sums, sums), e_norms = rel(want_norms, norms.data(), (size_t)n);
    const double e_logit = rel_d(want_logit, logit), e_sq = rel_d(want_sq, value_sq);
    double row_total = 0;
    for (double x : sums) row_total += x;
    CHECK(e_sums < 1e-6 && std::fabs(row_total - rows) < 1e-5, "%s: attention sums rel L2 %.2e, total %.6f (want %d)",
          what, e_sums, row_total, rows);
    int norms_exact = 1;
    for (int j = 0; j < n; j++) norms_exact &= norms[j] == (float)want_norms[j];
    CHECK(e_norms < 1e-7 && norms_exact, "%s: key norms rel L2 %.2e, %s the host's floats", what, e_norms,
          norms_exact ? "equal to" : "not");
    CHECK(e_logit < 1e-12 && e_sq < 1e-12, "%s: expected logits rel L2 %.2e, value norms %.2e", what, e_logit, e_sq);
    printf("%s measures over %d listed slots: attention sums %.1e, key norms %.1e, expected logits %.1e, value "
           "norms %.1e\n",
           what, n, e_sums, e_norms, e_logit, e_sq);
}

/* moe_router's clustering on the device against router/kmeans.c on the same
 * keys, bit for bit: n keys around a few directions (one of them zero) in
 * listed slots with gaps, k-means into k clusters on a block of `threads`,
 * then the cosines of every unit key to the centroids. The first iteration's
 * assignment must differ from the last, so that the loop is tested and not
 * just its start. */
template <typename W> static void check_kmeans(const char *what, int n, int k, int threads, int sort_in_shared)
{
    const int HD = 64, len = n + n / 2 + 3, iterations = PK_KMEANS_ITERATIONS;
    paged_cache<W> kv(1, 1, 1, HD, (len + PK_CUDA_BLOCK - 1) / PK_CUDA_BLOCK);
    std::vector<int32_t> slots;
    for (int j = 0; j < len && (int)slots.size() < n; j++)
        if (j % 3 != 1 || len - j <= n - (int)slots.size()) slots.push_back(j);
    const std::vector<float> centres = random_f((size_t)5 * HD);
    std::vector<float> keys((size_t)n * HD);
    for (int i = 0; i < n; i++)
        for (int d = 0; d < HD; d++) {
            W &e = kv.at(0, 0, slots[i], 0, d);
            e = from_f<W>(i == n / 2 ? 0.f : centres[(size_t)(i % 5) * HD + d] + 0.6f * uniform());
            keys[(size_t)i * HD + d] = to_f<W>(e);
        }
    pk_unit_rows(keys.data(), n, HD);
    std::vector<float> want((size_t)k * HD), first((size_t)k * HD), want_cos((size_t)n * k);
    std::vector<int> want_assign(n), first_assign(n);
    pk_kmeans_balanced(keys.data(), n, HD, k, iterations, want.data(), want_assign.data());
    pk_kmeans_balanced(keys.data(), n, HD, k, 1, first.data(), first_assign.data());
    pk_dot_rows(keys.data(), n, want.data(), k, HD, want_cos.data());

    unsigned pow2 = 1;
    while (pow2 < (unsigned)(n * k)) pow2 <<= 1;
    std::vector<float> unit((size_t)n * HD), centroids((size_t)k * HD), cosines((size_t)n * k);
    std::vector<unsigned long long> order(pow2);
    std::vector<double> sum((size_t)k * HD);
    std::vector<int> next(n), assign(n);
    const rows_ctx<W> c = kv.ctx(0, 1);
    order.assign(pow2, 0); /* poisoned below when the sort is in shared memory: the kernel must not touch it */
    if (sort_in_shared) order.clear();
    const kmeans_scratch used = {unit.data(), sort_in_shared ? nullptr : order.data(), sum.data(), next.data()};
    emu_launch(dim3(1), dim3(threads), (sort_in_shared ? (size_t)pow2 * 8 : 0) + (size_t)k * 4 + n, kmeans_kernel<W>, c,
               0, 0, (const int32_t *)slots.data(), n, k, iterations, pow2, sort_in_shared, used, centroids.data(),
               assign.data());
    emu_launch(dim3((n + 63) / 64), dim3(64), 0, key_cosines_kernel<W>, c, 0, 0, (const int32_t *)slots.data(), n,
               (const float *)centroids.data(), k, unit.data(), cosines.data());
    CHECK(std::memcmp(centroids.data(), want.data(), want.size() * sizeof(float)) == 0 && assign == want_assign,
          "%s: k-means of %d keys into %d differs from router/kmeans.c", what, n, k);
    CHECK(std::memcmp(cosines.data(), want_cos.data(), want_cos.size() * sizeof(float)) == 0,
          "%s: cosines to the centroids differ from pk_dot_rows", what);
    CHECK(n < k || first_assign != want_assign, "%s: k-means settled at its start: the test runs no iteration", what);
    printf("%s k-means: %d keys into %d on %d threads, sort in %s memory: centroids, clusters and cosines equal the "
           "host's\n",
           what, n, k, threads, sort_in_shared ? "shared" : "global");
}

int main()
{
    check_attention<float, 32, 32>(1, "f32, decode (32 warps per head)");
    check_attention<__nv_bfloat16, 64, 4>(3, "bf16, 3 prompt rows (4 warps)");
    check_attention<__half, 128, 4>(1, "f16 head_dim 128, decode (4 warps)");
    check_attention<__nv_bfloat16, 64, 4>(1, "bf16, decode split over 5 blocks per head (4 warps)", 5);
    check_attention<float, 128, 2>(1, "f32 head_dim 128, decode split over 2 blocks per head (2 warps)", 2);
    check_gemv<float>("f32", 1e-5);
    check_gemv<__nv_bfloat16>("bf16", 8e-3);
    check_gemv_splits<float>("f32", 1e-6);
    check_gemv_splits<__nv_bfloat16>("bf16", 8e-3);
    check_gemv_splits<__half>("f16", 1e-3);
    check_attention<float, 64, 4>(1, "f32, decode in one block per head with a full streaming ring (4 warps)", 1, true);
    check_attention<__nv_bfloat16, 64, 4>(1, "bf16, decode split over 3 blocks with a full ring (4 warps)", 3, true);
    check_attention<__nv_bfloat16, 64, 2>(1, "bf16, decode in fixed shares of 1 KV block, 4 splits (2 warps)", 4, true, 1);
    check_attention<float, 64, 4>(3, "f32, 3 prompt rows, three streaming heads' windows (4 warps)", 0, false, 0, true);
    check_attention<__half, 32, 2>(5, "f16, 5 prompt rows, three streaming heads' windows (2 warps)", 0, false, 0, true);
    check_attention<float, 64, 4>(1, "f32, routed decode in one block per head (4 warps)", 1, false, 0, false, true);
    check_attention<__nv_bfloat16, 64, 4>(1, "bf16, routed decode split over 5 blocks (4 warps)", 5, false, 0, false,
                                          true);
    check_attention<__half, 32, 2>(3, "f16, 3 routed prompt rows (2 warps)", 0, false, 0, false, true);
    check_attention<float, 128, 4>(5, "f32 head_dim 128, 5 routed prompt rows (4 warps)", 0, false, 0, false, true);
    check_prompt_pieces();
    check_ring_step();
    check_projection_merge<float, 64, 4>("f32 split states, 5 splits of 4 warps", 5);
    check_projection_merge<__nv_bfloat16, 32, 2>("bf16 split states, 8 splits of 2 warps", 8);
    check_sharded_decode<float, 64>("f32");
    check_sharded_decode<__nv_bfloat16, 32>("bf16");
    check_argmax();
    check_residual_layernorm();
    check_compaction<float>("f32");
    check_compaction<__nv_bfloat16>("bf16");
    check_measures<float>("f32");
    check_measures<__nv_bfloat16>("bf16");
    check_kmeans<float>("f32", 300, 4, KMEANS_THREADS, 1);
    check_kmeans<__nv_bfloat16>("bf16", 300, 4, 64, 0);
    check_kmeans<__half>("f16", 200, 8, 96, 1);
    check_kmeans<float>("f32", 2, 3, 32, 0);
    check_kmeans<__nv_bfloat16>("bf16", 1000, 16, KMEANS_THREADS, 1);
    return check_done("test_kernels_host");
}
