// Mask kernels: score, select and zero in one pass over a row-major [rows, cols] f32 weight matrix.
//
// Contract: prune EXACTLY the entries that src/prune/mask.rs::prune_mask prunes for the same
// score matrix, ties included. Scores are magnitude |w| or, when `norms` is given, Wanda's
// |w|·a_j; entries are ordered by f32::total_cmp of the score (the order mask.rs sorts by) and then
// by column index. Compiled at run time by NVRTC (src/prune/cuda.rs); see kernels/README.md.
//
// Only plain CUDA C++ is used (static shared memory, __syncthreads, warp vote and match
// intrinsics, shared atomics), so that the file also compiles as host C++ under a small
// emulation header for the CPU-only logic test in tests/it/kernels.rs.

#ifndef NEUROAL_DEFAULT_NAN
// The NaN the CPU's multiply makes from 0·∞ (x86-64 SSE: the negative "QNaN floating-point
// indefinite"). The host defines it for its own architecture.
#define NEUROAL_DEFAULT_NAN 0xFFC00000u
#endif

// Threads per block of prune_rows_f32; the host launches exactly this many.
#define ROW_THREADS 256
#define ROW_WARPS (ROW_THREADS / 32)
// Radix select: 4 passes of 8 bits over the 32-bit key.
#define RADIX_BINS 256
// Keys of the first KEY_CACHE columns of a row stay in shared memory between passes (44 KiB:
// every column of LLaMA-7B's 11008-wide down projection); later columns are recomputed.
#define KEY_CACHE 11264

// The score's bits, exactly as the CPU computes them: |w| (a bit operation, as f32::abs), or
// |w|·a rounded to nearest with IEEE denormals. NaN operands follow x86-64 SSE (the first NaN
// operand, |w|, quieted; else a's, quieted; 0·∞ gives the default NaN), which is what the CPU
// path computes there; Rust itself leaves NaN signs and payloads of a product unspecified.
__device__ __forceinline__ unsigned score_bits(float w, const float* norms, unsigned c)
{
    const unsigned x = __float_as_uint(w) & 0x7fffffffu;
    if (norms == nullptr) {
        return x;
    }
    const float a = norms[c];
    const unsigned y = __float_as_uint(a);
    const unsigned y_abs = y & 0x7fffffffu;
    if (x > 0x7f800000u) {
        return x | 0x00400000u;
    }
    if (y_abs > 0x7f800000u) {
        return y | 0x00400000u;
    }
    if ((x == 0u && y_abs == 0x7f800000u) || (x == 0x7f800000u && y_abs == 0u)) {
        return NEUROAL_DEFAULT_NAN;
    }
    return __float_as_uint(__fmul_rn(__uint_as_float(x), a));
}

// Maps f32 bits to an unsigned key whose order is f32::total_cmp's: negative NaN < -inf < ... <
// -0 < +0 < ... < +inf < positive NaN (NaNs further ordered by payload).
__device__ __forceinline__ unsigned order_key(unsigned bits)
{
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ unsigned key_at(const float* row, const float* norms, unsigned c)
{
    return order_key(score_bits(row[c], norms, c));
}

// Per-row variable-k selection: row r prunes counts[r] entries (all of them when counts[r] >=
// cols), the lowest under (key, tie), where tie is the column index when ties_high_first == 0
// (granularity "row": the lower index is pruned first) and the reversed column index otherwise
// (granularity "neuron": the higher index is pruned first). Pruned weights are set to +0.0; when
// `mask` is not null it receives 1 for pruned entries and 0 for kept ones. One block of
// ROW_THREADS threads per row (gridDim.x >= rows); `norms` (length cols) may be null.
//
// Radix select over the key: four 8-bit passes find the key T of the k-th lowest entry, how many
// entries lie below it (all pruned) and how many equal it; a last pass prunes those below T and
// the first (or last) `rank` of those equal to T in column order. No sort, any number of columns.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
prune_rows_f32(float* __restrict__ weights, const float* __restrict__ norms,
               const unsigned* __restrict__ counts, unsigned rows, unsigned cols,
               int ties_high_first, unsigned char* __restrict__ mask)
{
    __shared__ unsigned keys[KEY_CACHE];
    __shared__ unsigned hist[RADIX_BINS];
    __shared__ unsigned warp_counts[ROW_WARPS];
    __shared__ unsigned chosen[3]; // digit, entries below its bin, entries in its bin

    const unsigned row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    const unsigned tid = threadIdx.x;
    const unsigned lane = tid & 31u;
    const unsigned warp = tid >> 5;
    float* w = weights + (unsigned long long)row * cols;
    unsigned char* m = mask ? mask + (unsigned long long)row * cols : nullptr;
    const unsigned k = counts[row] < cols ? counts[row] : cols;

    if (k == 0u || k == cols) {
        for (unsigned c = tid; c < cols; c += ROW_THREADS) {
            if (k != 0u) {
                w[c] = 0.0f;
            }
            if (m) {
                m[c] = k != 0u;
            }
        }
        return;
    }

    // The k-th lowest entry has 1-based rank `rank` among the entries whose key starts with
    // `prefix` (under `prefix_mask`); after the last pass, among those equal to T = prefix.
    unsigned prefix = 0u, prefix_mask = 0u, rank = k, equal = 0u;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (unsigned i = tid; i < RADIX_BINS; i += ROW_THREADS) {
            hist[i] = 0u;
        }
        __syncthreads();
        // Uniform trip count: every lane of a warp reaches the warp intrinsics together.
        for (unsigned base = 0; base < cols; base += ROW_THREADS) {
            const unsigned c = base + tid;
            unsigned key = 0u;
            if (c < cols) {
                if (shift == 24) {
                    key = key_at(w, norms, c);
                    if (c < KEY_CACHE) {
                        keys[c] = key;
                    }
                } else {
                    key = c < KEY_CACHE ? keys[c] : key_at(w, norms, c);
                }
            }
            const bool live = c < cols && (key & prefix_mask) == prefix;
            const unsigned digit = live ? (key >> shift) & 0xffu : 0xffffffffu;
            // Lanes with the same digit add once, from their lowest lane.
            const unsigned peers = __match_any_sync(0xffffffffu, digit);
            if (live && lane == (unsigned)(__ffs(peers) - 1)) {
                atomicAdd(&hist[digit], (unsigned)__popc(peers));
            }
        }
        __syncthreads();
        // Inclusive prefix sum over the bins (one bin per thread), in place.
        for (unsigned offset = 1; offset < RADIX_BINS; offset <<= 1) {
            unsigned add = 0u;
            if (tid < RADIX_BINS && tid >= offset) {
                add = hist[tid - offset];
            }
            __syncthreads();
            if (tid < RADIX_BINS) {
                hist[tid] += add;
            }
            __syncthreads();
        }
        if (tid < RADIX_BINS) {
            const unsigned below = tid ? hist[tid - 1] : 0u;
            if (below < rank && rank <= hist[tid]) {
                chosen[0] = tid;
                chosen[1] = below;
                chosen[2] = hist[tid] - below;
            }
        }
        __syncthreads();
        prefix |= chosen[0] << shift;
        prefix_mask |= 0xffu << shift;
        rank -= chosen[1];
        equal = chosen[2];
        __syncthreads(); // chosen[] and hist[] are rewritten by the next pass
    }

    // Entries below T are pruned; of the `equal` entries equal to T, `rank` are, in column order.
    const unsigned t = prefix;
    unsigned ties_before = 0u; // entries equal to T in earlier tiles
    for (unsigned base = 0; base < cols; base += ROW_THREADS) {
        const unsigned c = base + tid;
        const unsigned key = c < cols ? (c < KEY_CACHE ? keys[c] : key_at(w, norms, c)) : 0u;
        const bool tie = c < cols && key == t;
        bool pruned = key < t || tie;
        if (rank < equal) { // uniform over the block
            const unsigned votes = __ballot_sync(0xffffffffu, tie);
            if (lane == 0u) {
                warp_counts[warp] = (unsigned)__popc(votes);
            }
            __syncthreads();
            unsigned position = ties_before + (unsigned)__popc(votes & ((1u << lane) - 1u));
            unsigned tile = 0u;
            for (unsigned i = 0; i < ROW_WARPS; ++i) {
                position += i < warp ? warp_counts[i] : 0u;
                tile += warp_counts[i];
            }
            __syncthreads();
            ties_before += tile;
            if (tie) {
                pruned = ties_high_first ? position >= equal - rank : position < rank;
            }
        }
        if (c < cols) {
            if (pruned) {
                w[c] = 0.0f;
            }
            if (m) {
                m[c] = pruned;
            }
        }
    }
}

// N:M selection along the input dimension: in every group of m consecutive columns of a row, the
// n lowest under (key, column index) are pruned (the lower index first on ties, as mask.rs's
// MaskRule::NofM). cols must be a multiple of m and n < m. One thread per group, grid-stride;
// `norms` and `mask` as in prune_rows_f32.
extern "C" __global__ void prune_n_of_m_f32(float* __restrict__ weights,
                                            const float* __restrict__ norms, unsigned rows,
                                            unsigned cols, unsigned n, unsigned m,
                                            unsigned char* __restrict__ mask)
{
    const unsigned groups_per_row = cols / m;
    const unsigned long long groups = (unsigned long long)rows * groups_per_row;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         g < groups; g += stride) {
        const unsigned long long row = g / groups_per_row;
        const unsigned first = (unsigned)(g % groups_per_row) * m;
        float* w = weights + row * cols;
        unsigned char* out = mask ? mask + row * cols : nullptr;
        // The n-th lowest entry (threshold key and column): the one with exactly n - 1 below it.
        unsigned t_key = 0u, t_col = 0u;
        bool any = false;
        if (n > 0u) {
            for (unsigned j = 0; j < m; ++j) {
                const unsigned kj = key_at(w, norms, first + j);
                unsigned below = 0u;
                for (unsigned i = 0; i < m; ++i) {
                    const unsigned ki = key_at(w, norms, first + i);
                    below += (ki < kj || (ki == kj && i < j)) ? 1u : 0u;
                }
                if (below == n - 1u) {
                    t_key = kj;
                    t_col = j;
                    any = true;
                }
            }
        }
        for (unsigned j = 0; j < m; ++j) {
            const unsigned kj = key_at(w, norms, first + j);
            const bool pruned = any && (kj < t_key || (kj == t_key && j <= t_col));
            if (pruned) {
                w[first + j] = 0.0f;
            }
            if (out) {
                out[first + j] = pruned;
            }
        }
    }
}
