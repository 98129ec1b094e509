// Runs kernels/masks.cu on the CPU, one std::thread per CUDA thread, so that the kernels' logic
// (radix select, tie ranks, NaN keys) can be checked against the Rust CPU path on a machine with
// no GPU (tests/it/kernels.rs). It emulates only what masks.cu uses; it says nothing about
// speed, memory ordering on a real GPU, or NVRTC (which tests/it/kernels.rs checks separately).
//
//   g++ -std=c++20 -O2 -pthread -ffp-contract=off kernels/emulate.cpp -o emulate
//   emulate CASES_IN RESULTS_OUT
//
// CASES_IN is a sequence of cases, little-endian: u32 kind (0 = prune_rows_f32, 1 =
// prune_n_of_m_f32), rows, cols, has_norms, p1, p2 (kind 0: p1 = ties_high_first; kind 1: p1 = n,
// p2 = m), then f32 weights[rows·cols], f32 norms[cols] when has_norms, u32 counts[rows] for kind
// 0. RESULTS_OUT gets, per case, u8 mask[rows·cols] then the f32 weights after the kernel.

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 0, y = 1, z = 1;
};
static thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

static std::barrier<>* block_barrier = nullptr;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static unsigned warp_slots[1024];

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

// Every lane of the warp publishes `value`, then each gets the lanes whose value `same` matches.
template <class Same>
inline unsigned warp_vote(unsigned value, Same same) {
    const unsigned warp = threadIdx.x >> 5, lane0 = warp << 5;
    warp_slots[threadIdx.x] = value;
    warp_barriers[warp]->arrive_and_wait();
    unsigned lanes = 0;
    for (unsigned i = 0; i < 32; ++i) {
        if (same(warp_slots[lane0 + i])) lanes |= 1u << i;
    }
    warp_barriers[warp]->arrive_and_wait();
    return lanes;
}
inline unsigned __ballot_sync(unsigned, bool pred) {
    return warp_vote(pred ? 1u : 0u, [](unsigned v) { return v != 0; });
}
inline unsigned __match_any_sync(unsigned, unsigned value) {
    return warp_vote(value, [value](unsigned v) { return v == value; });
}

#include "masks.cu"

// Runs `body` as a grid of `grid` blocks of `block` threads, one block after another.
template <class F>
static void launch(unsigned grid, unsigned block, F body) {
    blockDim.x = block;
    gridDim.x = grid;
    std::barrier<> bar(block);
    block_barrier = &bar;
    warp_barriers.clear();
    for (unsigned w = 0; w < block / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx.x = t;
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx.x = b;
                body();
                bar.arrive_and_wait(); // shared memory is reused by the next block
            }
        });
    }
    for (auto& th : threads) th.join();
}

template <class T>
static bool read_into(FILE* f, std::vector<T>& v, size_t n) {
    v.resize(n);
    return n == 0 || std::fread(v.data(), sizeof(T), n, f) == n;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: emulate CASES_IN RESULTS_OUT\n");
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    FILE* out = std::fopen(argv[2], "wb");
    if (!in || !out) {
        std::perror("emulate");
        return 2;
    }
    uint32_t h[6];
    while (std::fread(h, 4, 6, in) == 6) {
        const unsigned kind = h[0], rows = h[1], cols = h[2], has_norms = h[3], p1 = h[4], p2 = h[5];
        const size_t n = (size_t)rows * cols;
        std::vector<float> w, norms;
        std::vector<unsigned> counts;
        if (!read_into(in, w, n) || !read_into(in, norms, has_norms ? cols : 0) ||
            !read_into(in, counts, kind == 0 ? rows : 0)) {
            std::fprintf(stderr, "emulate: truncated case\n");
            return 2;
        }
        std::vector<unsigned char> mask(n, 0xAA); // poisoned: every entry must be written
        const float* a = has_norms ? norms.data() : nullptr;
        if (kind == 0) {
            launch(rows, ROW_THREADS, [&] {
                prune_rows_f32(w.data(), a, counts.data(), rows, cols, (int)p1, mask.data());
            });
        } else {
            launch(3, 64, [&] { prune_n_of_m_f32(w.data(), a, rows, cols, p1, p2, mask.data()); });
        }
        std::fwrite(mask.data(), 1, n, out);
        std::fwrite(w.data(), 4, n, out);
    }
    std::fclose(out);
    return 0;
}
