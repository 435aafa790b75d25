// ReDGE's fused sampler on CPU: the forward pass and its adjoint as one C++ call each
// (compiled on first use by redge_mini._cpp_sampler).
//
// The PyTorch path (redge_mini.diffusion) dispatches about 50 small torch operations per call;
// at the sizes where one ReDGE call takes a few hundred microseconds, that dispatch, not the
// arithmetic, is the cost. Here a block of rows runs its whole trajectory in loops that stay in
// the cache.
//
// Notation (as in redge_mini._op._FusedSampler): w_j = logits + c_j x_j, D_j = softmax(w_j),
// x_{j-1} = r_j x_j + b_j D_j, from x_{n-1} = noise down to the soft sample S = D_1. The
// adjoint recomputes D_{n-1}, ..., D_1 of the block into scratch (nothing is stored between the
// passes) and walks back. Both passes carry the scaled variables of
// redge_mini.schedule.StepTable, as the PyTorch path and the Triton kernels do (the same
// arithmetic in float32 on all three): the state u_j = x_j / scale_j,
//   w_j = logits + weight_j u_j,  u_{j-1} = u_j + move_j D_j,
// and the adjoint v_j = g_{x_j} / k_j, from v_1 = g_logits = J(S)^T g:
//   t_j = J(D_j)^T v_{j-1},  g_logits += to_logits_j t_j,  v_j = v_{j-1} + to_state_j t_j,
// with the noise's gradient k_{n-1} v_{n-1}. The coefficients are read from
// redge_mini.schedule.step_table (see Grid).
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <memory>
#include <string>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

// x86-64 GCC builds carry an AVX2/FMA copy of the kernels next to the baseline one; the
// loader picks the copy the CPU supports (function multiversioning).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REDGE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define REDGE_CLONES
#endif
#define REDGE_INLINE inline __attribute__((always_inline))

// Layout. A block of LANES rows is copied side by side, category-major: entry (i, b) of the
// block (category i of its row b) sits at i * LANES + b. Every operation is then a loop over
// the K categories of one vector of LANES values (GCC vector extensions), and the reductions
// over the categories (max, sum, dot product) are per lane: no horizontal step, and the same
// speed at K = 2 as at K = 16384. (A loop along a row of 2 categories spends its time entering
// and leaving loops; 8 float lanes fill one AVX2 register.)
constexpr int64_t LANES = 8;

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
  typedef std::int32_t bits __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(LANES * 8), aligned(8), may_alias));
  typedef std::int64_t bits __attribute__((vector_size(LANES * 8), aligned(8), may_alias));
};

template <typename T>
REDGE_INLINE typename Vec<T>::type& at(T* block, int64_t i) {
  return *reinterpret_cast<typename Vec<T>::type*>(block + i * LANES);
}
template <typename T>
REDGE_INLINE const typename Vec<T>::type& at(const T* block, int64_t i) {
  return *reinterpret_cast<const typename Vec<T>::type*>(block + i * LANES);
}
template <typename V>
REDGE_INLINE V splat(typename std::remove_reference_t<decltype(V{}[0])> value) {
  return V{} + value;
}

// exp(x) for x <= 0 (a softmax after subtracting the maximum): x = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by a degree-6 polynomial (Cephes' coefficients, relative error ~1e-7), 2^n through the
// exponent bits; exactly 0 at and below -87, so a masked category (-inf) gets probability 0.
REDGE_INLINE Vec<float>::type exp_nonpositive(Vec<float>::type x) {
  using V = Vec<float>::type;
  using I = Vec<float>::bits;
  const V low = splat<V>(-87.0f);
  const V xc = x > low ? x : low;
  const V round = splat<V>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (xc * 1.44269504088896341f + round) - round;
  V r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I bits = ((__builtin_convertvector(n, I) + 127) << 23) & (x > low);
  const V result = p * reinterpret_cast<const V&>(bits);
  return x == x ? result : x;  // NaN stays NaN (and so does the softmax of its row)
}

// float64: std::exp lane by lane (float64 is for checking, not for speed)
REDGE_INLINE Vec<double>::type exp_nonpositive(Vec<double>::type x) {
  Vec<double>::type out;
  for (int64_t b = 0; b < LANES; ++b) out[b] = std::exp(x[b]);
  return out;
}

// out = softmax(w) per lane, where weights(i) gives the weights of category i (one vector)
template <typename T, typename Weights>
REDGE_INLINE void softmax(Weights weights, T* out, int64_t k) {
  using V = typename Vec<T>::type;
  V top = splat<V>(-std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < k; ++i) {
    const V w = weights(i);
    at(out, i) = w;
    top = w > top ? w : top;
  }
  V total = V{};
  for (int64_t i = 0; i < k; ++i) {
    const V e = exp_nonpositive(at(out, i) - top);
    at(out, i) = e;
    total += e;
  }
  const V inverse = T(1) / total;
  for (int64_t i = 0; i < k; ++i) at(out, i) *= inverse;
}

// out = J(d)^T g = d * (g - d . g), J the softmax Jacobian at d (in this form, torch's softmax
// backward: the difference of two nearly equal numbers is taken before the product, not after,
// which loses less when d is nearly one-hot)
template <typename T>
REDGE_INLINE void softmax_vjp(const T* d, const T* g, T* out, int64_t k) {
  using V = typename Vec<T>::type;
  V dot = V{};
  for (int64_t i = 0; i < k; ++i) dot += at(d, i) * at(g, i);
  for (int64_t i = 0; i < k; ++i) at(out, i) = at(d, i) * (at(g, i) - dot);
}

// The step coefficients of one call, j = 0, ..., n_steps - 1 (alpha_j, sigma_j,
// c_j = alpha_j / sigma_j^2 and the scaled forms' scale, weight, move, k, to_logits, to_state;
// see redge_mini.schedule.StepTable). Nothing is derived here: every number is a row of
// redge_mini.schedule.step_tensor, the one table of step coefficients (float64), which the
// PyTorch and Triton backends read too.
enum Column : int64_t {  // the rows of step_tensor (redge_mini.schedule.STEP_COLUMNS)
  ALPHA, SIGMA, C, R, B, SCALE, WEIGHT, MOVE, K, TO_LOGITS, TO_STATE, COLUMNS
};

struct Grid {
  std::vector<double> alpha, sigma, c, scale, weight, move, k, to_logits, to_state;
  int64_t last() const { return static_cast<int64_t>(c.size()) - 1; }
};

Grid make_grid(const at::Tensor& table) {
  TORCH_CHECK(table.device().is_cpu() && table.scalar_type() == at::kDouble &&
                  table.dim() == 2 && table.size(0) == COLUMNS && table.size(1) >= 2 &&
                  table.is_contiguous(),
              "table must be redge_mini.schedule.step_tensor(n_steps, t_1): a contiguous "
              "float64 CPU tensor of shape (", int64_t(COLUMNS), ", n_steps)");
  const int64_t n = table.size(1);
  const double* data = table.const_data_ptr<double>();
  auto row = [&](Column column) {
    return std::vector<double>(data + column * n, data + (column + 1) * n);
  };
  return Grid{row(ALPHA), row(SIGMA),  row(C),         row(SCALE),   row(WEIGHT),
              row(MOVE),  row(Column::K), row(TO_LOGITS), row(TO_STATE)};
}

// The denoiser's inputs of one block. ReDGE: w_j = logits + c_j x. ReDGE-cov (p given): the
// reference noise is N(p, diag v), p = softmax(logits), v = max(p (1 - p), 0.1), and
// w_j = logits + c_j q_j with q_j = (x - sigma_j p - alpha_j / 2) / v.
template <typename T>
struct Block {
  const T* logits;
  const T* p = nullptr;      // ReDGE-cov only
  const T* inv_v = nullptr;  // 1 / v, ReDGE-cov only
};

// out = D_j(x_j) = softmax(w_j), from the scaled state u = u_j (x_j = scale_j u_j): ReDGE's
// w_j = logits + weight_j u with weight_j = c_j scale_j, as the PyTorch path computes it
template <typename T>
REDGE_INLINE void denoise(const Block<T>& blk, const Grid& g, int64_t j, const T* u, T* out,
                          int64_t k) {
  if (!blk.p) {
    const T weight = T(g.weight[j]);
    softmax([&](int64_t i) { return at(blk.logits, i) + weight * at(u, i); }, out, k);
    return;
  }
  const T c = T(g.c[j]), scale = T(g.scale[j]);
  const T sigma = T(g.sigma[j]), half_alpha = T(g.alpha[j] / 2);
  softmax(
      [&](int64_t i) {
        return at(blk.logits, i) +
               c * (scale * at(u, i) - sigma * at(blk.p, i) - half_alpha) * at(blk.inv_v, i);
      },
      out, k);
}

// The DDIM move x_{j-1} = r_j x_j + b_j d on the scaled state: u <- u + move_j d. (On x
// itself, the float32 roundings of the n_steps - 2 factors r_j would multiply up; their
// product sigma_1 / sigma_{n-1} is one float64 number, scale_1, in the table.)
template <typename T>
REDGE_INLINE void move(T* u, const T* d, T step, int64_t k) {
  for (int64_t i = 0; i < k; ++i) at(u, i) += step * at(d, i);
}

// The forward pass of a block from the starting state in `x` (overwritten; the scaled state
// u_j from here on): D_j goes to `denoised + (j - 1) * m` for j = n-1, ..., 2 when `denoised`
// is given (else to `d`), and u_j to `states + (j - 1) * m` for j = n-1, ..., 1 when `states`
// is given;
// S = D_1 goes to `soft`.
template <typename T>
REDGE_INLINE void trajectory(const Block<T>& blk, const Grid& g, int64_t k, T* x, T* d,
                             T* denoised, T* states, T* soft) {
  const int64_t m = k * LANES;
  for (int64_t j = g.last(); j >= 2; --j) {
    if (states) std::memcpy(states + (j - 1) * m, x, sizeof(T) * m);
    T* dj = denoised ? denoised + (j - 1) * m : d;
    denoise(blk, g, j, x, dj, k);
    move(x, dj, T(g.move[j]), k);
  }
  if (states) std::memcpy(states, x, sizeof(T) * m);
  denoise(blk, g, 1, x, soft, k);
}

// The starting state x of a block and the denoiser's inputs. ReDGE: x = noise. ReDGE-cov
// (`moments` given, 3 blocks): p = softmax(logits), v (floored), 1 / v and s = sqrt(v) go to
// moments = {p, 1 / v, s}, and x = p + s * noise.
template <typename T>
REDGE_INLINE Block<T> start(const T* logits, const T* noise, int64_t k, T* moments, T* x) {
  using V = typename Vec<T>::type;
  const int64_t m = k * LANES;
  if (!moments) {
    std::memcpy(x, noise, sizeof(T) * m);
    return Block<T>{logits};
  }
  T *p = moments, *inv_v = p + m, *s = inv_v + m;
  softmax([&](int64_t i) { return at(logits, i); }, p, k);
  const V floor = splat<V>(T(0.1));
  for (int64_t i = 0; i < k; ++i) {
    const V q = at(p, i);
    const V raw = q * (T(1) - q);
    const V v = raw > floor ? raw : floor;
    V root;
    for (int64_t b = 0; b < LANES; ++b) root[b] = std::sqrt(v[b]);
    at(inv_v, i) = T(1) / v;
    at(s, i) = root;
    at(x, i) = q + root * at(noise, i);
  }
  return Block<T>{logits, p, inv_v};
}

// Bytes of denoiser outputs (per thread) that the backward pass of a block keeps at most before
// it checkpoints: above, it keeps every `seg`-th state (seg = ceil(sqrt(n - 1))) and recomputes
// each segment of seg denoiser outputs from its checkpoint, so that scratch grows as
// sqrt(n_steps) K instead of n_steps K (measured by benchmarks/bench_memory.py). The recomputed
// values are those of the first pass (the same operations on the same numbers). Set by
// set_store_bytes (the tests check that both policies give the same bits).
std::atomic<int64_t> store_bytes{int64_t(1) << 22};

template <typename T>
int64_t segment_length(int64_t n, int64_t k) {
  const int64_t slots = n - 1;
  if (slots * k * LANES * int64_t(sizeof(T)) <= store_bytes.load()) return slots;
  int64_t seg = 1;
  while (seg * seg < slots) ++seg;
  return seg;
}

// Slots of scratch (m values each) that one block's backward pass needs: denoiser outputs,
// states (ReDGE-cov) and checkpoints.
int64_t adjoint_slots(int64_t n, int64_t seg, bool cov) {
  if (seg >= n - 1) return (n - 1) * (cov ? 2 : 1);
  const int64_t marks = (n - 2) / seg + 1;
  return (seg + 1) + (cov ? seg : 0) + marks;
}

// The backward pass of a block: recompute the trajectory (D_1 = S, ..., D_{n-1} into
// `denoised`, and for ReDGE-cov the states into `states`), then walk back from the gradient
// `grad` of S. Writes the logits' gradient to `gl` and the noise's to `gx`; `x` and `gw` are
// scratch. ReDGE-cov (`cov` given) also differentiates through p and v:
// cov = {p, 1 / v, sqrt v, g_p, g_v} (5 blocks). With seg < n - 1 the trajectory is walked in
// segments of seg steps recomputed from checkpoints in `marks` (see store_bytes); S stays in
// the first slot of `denoised` either way.
template <typename T>
REDGE_INLINE void adjoint_block(const T* logits, const T* noise, const T* grad, const Grid& g,
                                int64_t k, T* x, T* gw, T* denoised, T* states, T* cov, T* gl,
                                T* gx, int64_t seg, T* marks) {
  using V = typename Vec<T>::type;
  const int64_t m = k * LANES, n = g.last() + 1;
  const Block<T> blk = start(logits, noise, k, cov, x);
  const T *p = blk.p, *inv_v = blk.inv_v, *s = cov ? cov + 2 * m : nullptr;
  T *gp = cov ? cov + 3 * m : nullptr, *gv = cov ? cov + 4 * m : nullptr;
  if (cov) {
    std::memset(gx, 0, sizeof(T) * m);
    std::memset(gp, 0, sizeof(T) * m);
    std::memset(gv, 0, sizeof(T) * m);
  }
  // The adjoint in the scaled form of schedule.StepTable: `gx` holds v_j = g_{x_j} / k_j
  // (as the PyTorch path's _op._adjoint), so no product of rounded factors r_j builds up.
  // j = 1: t = J(S)^T g, g_logits = t, v_1 = t (ReDGE; k_1 = c_1); then for j >= 2:
  // t = J(D_j)^T v_{j-1}, g_logits += to_logits_j t (= g_{w_j}), v_j = v_{j-1} + to_state_j t
  // (ReDGE) or + to_state_j t / v; ReDGE-cov also collects g_p -= c_j sigma_j g_{w_j} / v and
  // g_v -= c_j q_j g_{w_j} / v with q_j = (x_j - sigma_j p - alpha_j / 2) / v.
  auto step = [&](int64_t j, const T* dj, const T* uj) {
    softmax_vjp(dj, j > 1 ? gx : grad, gw, k);
    const T to_logits = T(g.to_logits[j]), to_state = T(j > 1 ? g.to_state[j] : 1.0);
    if (!cov) {
      for (int64_t i = 0; i < k; ++i) {
        const V t = at(gw, i);
        at(gl, i) = j > 1 ? at(gl, i) + to_logits * t : t;
        at(gx, i) = j > 1 ? at(gx, i) + to_state * t : t;
      }
      return;
    }
    const T sigma = T(g.sigma[j]), half_alpha = T(g.alpha[j] / 2), scale = T(g.scale[j]);
    const T c_to_logits = T(g.c[j] * g.to_logits[j]);
    for (int64_t i = 0; i < k; ++i) {
      const V t = at(gw, i), iv = at(inv_v, i);
      const V tv = t * iv, cw = c_to_logits * tv;  // c_j g_{w_j} / v
      const V q = (scale * at(uj, i) - sigma * at(p, i) - half_alpha) * iv;
      at(gl, i) = j > 1 ? at(gl, i) + to_logits * t : t;
      at(gx, i) += to_state * tv;
      at(gp, i) -= sigma * cw;
      at(gv, i) -= q * cw;
    }
  };
  if (seg >= n - 1) {  // every denoiser output fits: one forward pass
    trajectory(blk, g, k, x, gw, denoised, cov ? states : nullptr, denoised);
    for (int64_t j = 1; j < n; ++j) step(j, denoised + (j - 1) * m, states + (j - 1) * m);
  } else {
    // checkpoints: x_j at the top of every segment, j = n - 1 and the multiples of seg
    for (int64_t j = n - 1; j >= 1; --j) {
      if (j == n - 1 || j % seg == 0) std::memcpy(marks + ((j - 1) / seg) * m, x, sizeof(T) * m);
      if (j == 1) break;
      denoise(blk, g, j, x, gw, k);
      move(x, gw, T(g.move[j]), k);
    }
    for (int64_t a = 1; a < n; a += seg) {
      const int64_t b = std::min(a + seg - 1, n - 1);
      // segment 0 starts at slot 0 (S = D_1 stays there), the others at slot 1
      T* slots = denoised + (a > 1 ? m : 0);
      std::memcpy(x, marks + ((a - 1) / seg) * m, sizeof(T) * m);
      for (int64_t j = b; j >= a; --j) {
        if (cov) std::memcpy(states + (j - a) * m, x, sizeof(T) * m);
        denoise(blk, g, j, x, slots + (j - a) * m, k);
        if (j > a) move(x, slots + (j - a) * m, T(g.move[j]), k);
      }
      for (int64_t j = a; j <= b; ++j) step(j, slots + (j - a) * m, states + (j - a) * m);
    }
  }
  const T k_last = T(g.k[n - 1]);  // g_{x_{n-1}} = k_{n-1} v_{n-1}
  if (!cov) {
    for (int64_t i = 0; i < k; ++i) at(gx, i) *= k_last;
    return;
  }
  // x_{n-1} = p + sqrt(v) noise, v = max(p (1 - p), 0.1), p = softmax(logits)
  const V floor = splat<V>(T(0.1));
  for (int64_t i = 0; i < k; ++i) {
    const V q = at(p, i), root = at(s, i), gxi = k_last * at(gx, i);
    const V gvi = at(gv, i) + gxi * at(noise, i) / (T(2) * root);
    const V raw = q * (T(1) - q);
    const V zero = V{};
    at(gp, i) += gxi + (raw >= floor ? gvi * (T(1) - T(2) * q) : zero);
    at(gx, i) = gxi * root;  // the noise's gradient
  }
  softmax_vjp(p, gp, gw, k);
  for (int64_t i = 0; i < k; ++i) at(gl, i) += at(gw, i);
}

// ReinDGE: the hard sample's gradient (from `gh`) replaces half of the last denoiser's direct
// term J(S)^T g_h by ReinMax's step at t_1: gl += (g_h . d) d / 2 - J(S)^T g_h / 2, with
// d = H - S and H the one-hot draw of category `index` (per lane).
template <typename T>
REDGE_INLINE void reinmax_step(const T* soft, const T* gh, const int64_t* index, int64_t k,
                               T* gl) {
  using V = typename Vec<T>::type;
  using I = typename Vec<T>::bits;
  I drawn;
  for (int64_t b = 0; b < LANES; ++b) drawn[b] = index[b];
  const V one = splat<V>(T(1)), zero = V{};
  V along = V{}, dot = V{};  // g_h . d and S . g_h
  for (int64_t i = 0; i < k; ++i) {
    const V sv = at(soft, i), g = at(gh, i);
    const V d = (drawn == splat<I>(i) ? one : zero) - sv;
    along += g * d;
    dot += sv * g;
  }
  for (int64_t i = 0; i < k; ++i) {
    const V sv = at(soft, i), g = at(gh, i);
    const V d = (drawn == splat<I>(i) ? one : zero) - sv;
    at(gl, i) += T(0.5) * (along * d - sv * (g - dot));
  }
}

// Rows [first, first + count) of a (rows, K) array into block layout (zeros past count), and
// back.
template <typename T>
REDGE_INLINE void to_block(const T* src, int64_t first, int64_t count, int64_t k, T* dst) {
  if (count < LANES) std::memset(dst, 0, sizeof(T) * k * LANES);
  for (int64_t b = 0; b < count; ++b) {
    const T* row = src + (first + b) * k;
    for (int64_t i = 0; i < k; ++i) dst[i * LANES + b] = row[i];
  }
}

template <typename T>
REDGE_INLINE void from_block(const T* src, int64_t first, int64_t count, int64_t k, T* dst) {
  for (int64_t b = 0; b < count; ++b) {
    T* row = dst + (first + b) * k;
    for (int64_t i = 0; i < k; ++i) row[i] = src[i * LANES + b];
  }
}

// The one-hot draw H ~ Cat(S) of each row by inversion: the first category whose cumulative
// sum reaches (1 - u) times the total (sums in the working dtype, as torch.cumsum); a category
// of probability zero is never drawn. `index` receives the categories (always in [0, K - 1],
// whatever the uniforms); the return value is the per-lane level (1 - u) * total, NaN for a row
// whose soft sample is NaN (non-finite logits or every category masked) or whose uniform is.
template <typename T>
REDGE_INLINE typename Vec<T>::type inverse_cdf(const T* soft, const T* uniform, int64_t k,
                                               int64_t* index) {
  using V = typename Vec<T>::type;
  using I = typename Vec<T>::bits;
  V total = V{};
  for (int64_t i = 0; i < k; ++i) total += at(soft, i);
  const V level = (T(1) - at(uniform, 0)) * total;
  // the number of cumulative sums below the level (at most K - 1 up to rounding)
  V running = V{};
  I below = I{};
  for (int64_t i = 0; i < k; ++i) {
    running += at(soft, i);
    below -= running < level;  // a true comparison is -1
  }
  for (int64_t b = 0; b < LANES; ++b) index[b] = std::min<int64_t>(below[b], k - 1);
  return level;
}

// The categories drawn for rows [first, first + count) from their block's soft sample and
// uniforms (unused lanes draw with u = 0).
template <typename T>
REDGE_INLINE typename Vec<T>::type draw(const T* soft, const T* uniform, int64_t first,
                                        int64_t count, int64_t k, int64_t* index) {
  T u[LANES];
  for (int64_t b = 0; b < LANES; ++b) u[b] = b < count ? uniform[first + b] : T(0);
  return inverse_cdf(soft, u, k, index);
}

template <typename T>
REDGE_INLINE void sample_range(const T* logits, const T* noise, const T* uniform, const Grid& g,
                               bool cov, int64_t k, int64_t begin, int64_t end, T* hard,
                               T* soft, int64_t* drawn) {
  const int64_t m = k * LANES;
  // logits, noise, x, a denoiser output, S, and for ReDGE-cov p, 1 / v, sqrt v
  std::vector<T> scratch((cov ? 8 : 5) * m);
  T *lg = scratch.data(), *z = lg + m, *x = z + m, *d = x + m, *s = d + m;
  T* moments = cov ? s + m : nullptr;
  int64_t index[LANES];
  for (int64_t first = begin; first < end; first += LANES) {
    const int64_t count = std::min(LANES, end - first);
    to_block(logits, first, count, k, lg);
    to_block(noise, first, count, k, z);
    const Block<T> blk = start(lg, z, k, moments, x);
    trajectory(blk, g, k, x, d, static_cast<T*>(nullptr), static_cast<T*>(nullptr), s);
    from_block(s, first, count, k, soft);
    const auto level = draw(s, uniform, first, count, k, index);
    std::memset(hard + first * k, 0, sizeof(T) * count * k);
    for (int64_t b = 0; b < count; ++b) {
      if (drawn) drawn[first + b] = index[b];
      if (std::isfinite(level[b])) {
        hard[(first + b) * k + index[b]] = T(1);
      } else {  // nothing can be drawn from a NaN soft sample (or uniform): a NaN hard row
        std::fill(hard + (first + b) * k, hard + (first + b + 1) * k,
                  std::numeric_limits<T>::quiet_NaN());
      }
    }
  }
}

// ReinDGE's extra inputs of the adjoint: the hard sample's own gradient and the categories
// drawn by the forward pass (both null for ReDGE and ReDGE-cov).
template <typename T>
struct ReinMaxInputs {
  const T* grad_hard = nullptr;
  const int64_t* drawn = nullptr;
};

template <typename T>
REDGE_INLINE void adjoint_range(const T* logits, const T* noise, const T* grad, const Grid& g,
                                bool cov, ReinMaxInputs<T> rm, int64_t k, int64_t begin,
                                int64_t end, T* grad_logits, T* grad_noise) {
  const int64_t m = k * LANES, n = g.last() + 1, seg = segment_length<T>(n, k);
  const bool marked = seg < n - 1;
  // logits, noise, grad, x, g_w, g_logits, g_x, the denoiser outputs (n - 1 slots, or seg + 1
  // with checkpoints), for ReDGE-cov the states (n - 1 or seg slots), then the checkpoints, for
  // ReDGE-cov p, 1 / v, sqrt v, g_p, g_v and for ReinDGE g_h
  const int64_t d_slots = marked ? seg + 1 : n - 1, x_slots = cov ? (marked ? seg : n - 1) : 0;
  std::vector<T> scratch((7 + adjoint_slots(n, seg, cov) + (cov ? 5 : 0) +
                          (rm.grad_hard ? 1 : 0)) * m);
  T *lg = scratch.data(), *z = lg + m, *gr = z + m, *x = gr + m, *gw = x + m, *gl = gw + m;
  T *gx = gl + m, *denoised = gx + m, *states = denoised + d_slots * m;
  T* marks = states + x_slots * m;
  T* moments = marks + (marked ? (n - 2) / seg + 1 : 0) * m;
  T* gh = moments + (cov ? 5 * m : 0);  // the block after those in use
  int64_t index[LANES];
  for (int64_t first = begin; first < end; first += LANES) {
    const int64_t count = std::min(LANES, end - first);
    to_block(logits, first, count, k, lg);
    to_block(noise, first, count, k, z);
    to_block(grad, first, count, k, gr);
    adjoint_block(lg, z, gr, g, k, x, gw, denoised, states, cov ? moments : nullptr, gl, gx,
                  seg, marks);
    if (rm.grad_hard) {  // S = D_1 is the first slot of `denoised`
      to_block(rm.grad_hard, first, count, k, gh);
      for (int64_t b = 0; b < LANES; ++b) index[b] = b < count ? rm.drawn[first + b] : 0;
      reinmax_step(denoised, gh, index, k, gl);
    }
    from_block(gl, first, count, k, grad_logits);
    if (grad_noise) from_block(gx, first, count, k, grad_noise);
  }
}

// The entry points per dtype, each with an AVX2/FMA copy on x86-64 (function multiversioning
// applies to plain functions, not templates).
#define REDGE_ENTRY_POINTS(T)                                                                  \
  REDGE_CLONES void run_sample(const T* logits, const T* noise, const T* uniform,             \
                               const Grid& g, bool cov, int64_t k, int64_t begin, int64_t end, \
                               T* hard, T* soft, int64_t* drawn) {                             \
    sample_range(logits, noise, uniform, g, cov, k, begin, end, hard, soft, drawn);            \
  }                                                                                            \
  REDGE_CLONES void run_adjoint(const T* logits, const T* noise, const T* grad, const Grid& g, \
                                bool cov, ReinMaxInputs<T> rm, int64_t k, int64_t begin,       \
                                int64_t end, T* grad_logits, T* grad_noise) {                  \
    adjoint_range(logits, noise, grad, g, cov, rm, k, begin, end, grad_logits, grad_noise);    \
  }
REDGE_ENTRY_POINTS(float)
REDGE_ENTRY_POINTS(double)
#undef REDGE_ENTRY_POINTS

void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the dtype of logits");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Rows per task of at::parallel_for: about 32k elements each, so that small calls stay on the
// calling thread (waking the pool costs more than they do).
int64_t grain(int64_t k) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(k, 1));
}

std::vector<at::Tensor> sample(const at::Tensor& logits, const at::Tensor& noise,
                               const at::Tensor& uniform, const at::Tensor& table, bool cov,
                               bool want_drawn) {
  TORCH_CHECK(logits.dim() == 2, "logits must be (rows, K)");
  check_rows(logits, "logits", logits);
  check_rows(noise, "noise", logits);
  check_rows(uniform, "uniform", logits);
  TORCH_CHECK(noise.sizes() == logits.sizes(), "noise must have the shape of logits");
  const int64_t rows = logits.size(0), k = logits.size(1);
  TORCH_CHECK(k >= 1, "logits must have at least one category");
  TORCH_CHECK(uniform.numel() == rows, "uniform must hold one number per row");
  const Grid g = make_grid(table);
  at::Tensor hard = at::empty_like(logits), soft = at::empty_like(logits);
  at::Tensor index = want_drawn ? at::empty({rows}, logits.options().dtype(at::kLong))
                                : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "redge_sample", [&] {
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    const scalar_t* u = uniform.const_data_ptr<scalar_t>();
    scalar_t* h = hard.mutable_data_ptr<scalar_t>();
    scalar_t* s = soft.mutable_data_ptr<scalar_t>();
    int64_t* drawn = want_drawn ? index.mutable_data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, rows, grain(k), [&](int64_t begin, int64_t end) {
      run_sample(l, z, u, g, cov, k, begin, end, h, s, drawn);
    });
  });
  if (want_drawn) return {hard, soft, index};
  return {hard, soft};
}

std::vector<at::Tensor> adjoint(const at::Tensor& logits, const at::Tensor& noise,
                                const at::Tensor& grad, const at::Tensor& table, bool cov,
                                bool want_noise,
                                const std::optional<at::Tensor>& grad_hard,
                                const std::optional<at::Tensor>& drawn) {
  TORCH_CHECK(logits.dim() == 2, "logits must be (rows, K)");
  check_rows(logits, "logits", logits);
  check_rows(noise, "noise", logits);
  check_rows(grad, "grad", logits);
  TORCH_CHECK(noise.sizes() == logits.sizes(), "noise must have the shape of logits");
  TORCH_CHECK(grad.sizes() == logits.sizes(), "grad must have the shape of logits");
  const int64_t rows = logits.size(0), k = logits.size(1);
  TORCH_CHECK(k >= 1, "logits must have at least one category");
  const bool reinmax = grad_hard.has_value();
  TORCH_CHECK(reinmax == drawn.has_value(), "grad_hard and drawn go together (ReinDGE)");
  TORCH_CHECK(!(reinmax && cov), "ReinDGE's step is for the plain sampler");
  if (reinmax) {
    check_rows(*grad_hard, "grad_hard", logits);
    TORCH_CHECK(drawn->device().is_cpu() && drawn->scalar_type() == at::kLong &&
                drawn->is_contiguous(), "drawn must be a contiguous int64 CPU tensor");
    TORCH_CHECK(grad_hard->sizes() == logits.sizes(), "grad_hard must have the shape of logits");
    TORCH_CHECK(drawn->numel() == rows, "drawn must hold one category per row");
    const int64_t* d = drawn->const_data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) {
      TORCH_CHECK(0 <= d[r] && d[r] < k, "drawn categories must lie in [0, K - 1]");
    }
  }
  const Grid g = make_grid(table);
  at::Tensor grad_logits = at::empty_like(logits);
  at::Tensor grad_noise = want_noise ? at::empty_like(logits) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "redge_adjoint", [&] {
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    const scalar_t* gr = grad.const_data_ptr<scalar_t>();
    scalar_t* gl = grad_logits.mutable_data_ptr<scalar_t>();
    scalar_t* gn = want_noise ? grad_noise.mutable_data_ptr<scalar_t>() : nullptr;
    ReinMaxInputs<scalar_t> rm;
    if (reinmax) {
      rm.grad_hard = grad_hard->const_data_ptr<scalar_t>();
      rm.drawn = drawn->const_data_ptr<int64_t>();
    }
    at::parallel_for(0, rows, grain(k), [&](int64_t begin, int64_t end) {
      run_adjoint(l, z, gr, g, cov, rm, k, begin, end, gl, gn);
    });
  });
  if (want_noise) return {grad_logits, grad_noise};
  return {grad_logits};
}

int64_t set_store_bytes(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "bytes must be >= 0");
  return store_bytes.exchange(bytes);
}

// ---- The operators torch.ops.redge_mini.sample and .adjoint on CPU tensors ----
//
// redge_mini._op defines both operators (schema, fake tensors, autograd, vmap) and a Python
// kernel for every device. register_kernels() adds the two functions below as their CPU
// kernels, so that a call on CPU tensors (in eager code or from a torch.compile graph) goes from
// the dispatcher to C++ with no Python frame. The step coefficients are those of
// redge_mini.schedule.step_tensor, fetched from Python (with the GIL) the first time a
// (n_steps, t_1) is seen and kept here. What this file does not run (REDGE_MINI_CPP=0 at the time
// of the call, a dtype other than float32/float64) goes back to the Python kernel, named by
// register_kernels.

std::string fallback_module;        // the module holding the Python kernels
std::string table_module;           // the module holding step_tensor (redge_mini.schedule)
torch::Library* library = nullptr;  // the registration (kept for the life of the process)

// REDGE_MINI_CPP, read at every call as redge_mini._cpp_sampler.enabled() does: anything but
// "0" (surrounding white space ignored) leaves the extension on.
bool enabled() {
  const char* value = std::getenv("REDGE_MINI_CPP");
  if (value == nullptr) return true;
  std::string s(value);
  const char* space = " \t\n\r\f\v";
  const auto first = s.find_first_not_of(space);
  if (first == std::string::npos) return true;
  s = s.substr(first, s.find_last_not_of(space) - first + 1);
  return s != "0";
}

// The tables already fetched, per (n_steps, t_1); at most MAX_TABLES (then emptied).
constexpr size_t MAX_TABLES = 256;
std::mutex tables_mutex;
std::map<std::pair<int64_t, double>, at::Tensor> tables;

// redge_mini.schedule.step_tensor(n_steps, t_1), after checking the arguments here (as
// schedule.time_grid does: ValueError in Python). The mutex is not held during the Python call
// (another thread may hold the GIL and wait for the mutex).
at::Tensor step_tensor(int64_t n_steps, double t_1) {
  TORCH_CHECK_VALUE(n_steps >= 2, "n_steps must lie in [2, inf), got ", n_steps);
  TORCH_CHECK_VALUE(std::isfinite(t_1) && t_1 > 0.0 && t_1 <= 1.0,
                    "t_1 must lie in (0, 1], got ", t_1);
  const auto key = std::make_pair(n_steps, t_1);
  {
    std::lock_guard<std::mutex> lock(tables_mutex);
    const auto found = tables.find(key);
    if (found != tables.end()) return found->second;
  }
  TORCH_CHECK(!table_module.empty(), "the step table's module is not set (register_kernels)");
  at::Tensor table;
  {  // (a copy: the cache owns its tensors, whatever becomes of the Python object)
    py::gil_scoped_acquire gil;
    table = py::module_::import(table_module.c_str())
                .attr("step_tensor")(n_steps, t_1)
                .cast<at::Tensor>()
                .clone();
  }
  std::lock_guard<std::mutex> lock(tables_mutex);
  if (tables.size() >= MAX_TABLES) tables.clear();
  return tables.emplace(key, table).first->second;
}

int variant_code(c10::string_view variant) {  // 0 plain, 1 cov, 2 reindge
  if (variant == "plain") return 0;
  if (variant == "cov") return 1;
  if (variant == "reindge") return 2;
  TORCH_CHECK_VALUE(false, "variant must be one of ('plain', 'cov', 'reindge'), got '",
                    std::string(variant), "'");
  return -1;
}

bool runs_here(const at::Tensor& logits) {
  const auto dtype = logits.scalar_type();
  return (dtype == at::kFloat || dtype == at::kDouble) && enabled();
}

// Calls the Python kernel ``name`` of fallback_module (with the GIL); its errors travel back to
// Python unchanged.
template <typename Result, typename... Args>
Result python_kernel(const char* name, Args&&... args) {
  py::gil_scoped_acquire gil;
  py::object kernel = py::module_::import(fallback_module.c_str()).attr(name);
  return kernel(std::forward<Args>(args)...).template cast<Result>();
}

at::Tensor as_rows(const at::Tensor& t, int64_t k) {
  return (t.dim() == 2 ? t : t.reshape({-1, k})).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_op(
    const at::Tensor& logits, const at::Tensor& noise, const at::Tensor& uniform,
    int64_t n_steps, double t_1, c10::string_view variant) {
  const int code = variant_code(variant);
  if (!runs_here(logits)) {
    return python_kernel<std::tuple<at::Tensor, at::Tensor, at::Tensor>>(
        "_sample_kernel", logits, noise, uniform, n_steps, t_1, std::string(variant));
  }
  TORCH_CHECK_VALUE(logits.dim() >= 1, "logits must have at least one dimension");
  const at::Tensor table = step_tensor(n_steps, t_1);
  const auto shape = logits.sizes();
  const int64_t k = shape.back();
  auto out = sample(as_rows(logits, k), as_rows(noise, k), uniform.reshape({-1}).contiguous(),
                    table, code == 1, true);
  return {out[0].view(shape), out[1].view(shape), out[2].view(shape.slice(0, shape.size() - 1))};
}

std::tuple<at::Tensor, at::Tensor> adjoint_op(
    const at::Tensor& logits, const at::Tensor& noise, const at::Tensor& grad,
    const std::optional<at::Tensor>& grad_hard, const std::optional<at::Tensor>& drawn,
    int64_t n_steps, double t_1, c10::string_view variant, bool want_noise) {
  const int code = variant_code(variant);
  if (!runs_here(logits)) {
    return python_kernel<std::tuple<at::Tensor, at::Tensor>>(
        "_adjoint_kernel", logits, noise, grad, grad_hard, drawn, n_steps, t_1,
        std::string(variant), want_noise);
  }
  TORCH_CHECK_VALUE(logits.dim() >= 1, "logits must have at least one dimension");
  const at::Tensor table = step_tensor(n_steps, t_1);
  const auto shape = logits.sizes();
  const int64_t k = shape.back();
  const bool reinmax = grad_hard.has_value() && drawn.has_value();
  std::optional<at::Tensor> hard_rows, drawn_rows;
  if (reinmax) {
    hard_rows = as_rows(*grad_hard, k);
    drawn_rows = drawn->reshape({-1}).contiguous();
  }
  auto out = adjoint(as_rows(logits, k), as_rows(noise, k), as_rows(grad, k), table,
                     code == 1 && !reinmax, want_noise, hard_rows, drawn_rows);
  at::Tensor grad_noise = want_noise ? out[1].view(shape) : at::empty({0}, logits.options());
  return {out[0].view(shape), grad_noise};
}

// The AutogradCPU kernels. When no gradient is asked for (grad mode off, or no input requires
// grad: always the case inside a compiled graph, whose forward and backward run without autograd)
// they go straight on to the CPU kernels above, as custom_op's Python autograd kernel would, but
// without its Python frames. Otherwise sample hands over to the Python autograd.Function that
// carries the operator's registered derivative (_op._SampleFunction); adjoint has no derivative
// (a create_graph=True backward differentiates the reference sampler instead).
bool needs_grad(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_autograd(
    c10::DispatchKeySet keys, const at::Tensor& logits, const at::Tensor& noise,
    const at::Tensor& uniform, int64_t n_steps, double t_1, c10::string_view variant) {
  if (needs_grad({&logits, &noise, &uniform})) {
    return python_kernel<std::tuple<at::Tensor, at::Tensor, at::Tensor>>(
        "_sample_autograd", logits, noise, uniform, n_steps, t_1, std::string(variant));
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("redge_mini::sample", "")
                             .typed<decltype(sample_op)>();
  at::AutoDispatchBelowAutograd guard;
  return op.redispatch(keys & c10::after_autograd_keyset, logits, noise, uniform, n_steps, t_1,
                       variant);
}

std::tuple<at::Tensor, at::Tensor> adjoint_autograd(
    c10::DispatchKeySet keys, const at::Tensor& logits, const at::Tensor& noise,
    const at::Tensor& grad, const std::optional<at::Tensor>& grad_hard,
    const std::optional<at::Tensor>& drawn, int64_t n_steps, double t_1,
    c10::string_view variant, bool want_noise) {
  const at::Tensor none;
  TORCH_CHECK(!needs_grad({&logits, &noise, &grad, grad_hard ? &*grad_hard : &none}),
              "redge_mini::adjoint is not differentiable (a create_graph=True backward of "
              "redge_mini::sample differentiates the reference sampler instead)");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("redge_mini::adjoint", "")
                             .typed<decltype(adjoint_op)>();
  at::AutoDispatchBelowAutograd guard;
  return op.redispatch(keys & c10::after_autograd_keyset, logits, noise, grad, grad_hard, drawn,
                       n_steps, t_1, variant, want_noise);
}

// Registers sample_op and adjoint_op as the CPU kernels of redge_mini::sample and
// redge_mini::adjoint, and the two functions above as their AutogradCPU kernels (once per
// process; the operators must be defined by then).
bool register_kernels(const std::string& module, const std::string& schedule) {
  if (library != nullptr) return false;
  fallback_module = module;
  table_module = schedule;
  auto cpu = std::make_unique<torch::Library>(torch::Library::IMPL, "redge_mini",
                                              c10::DispatchKey::CPU, __FILE__, __LINE__);
  cpu->impl("sample", TORCH_FN(sample_op));
  cpu->impl("adjoint", TORCH_FN(adjoint_op));
  auto autograd = std::make_unique<torch::Library>(
      torch::Library::IMPL, "redge_mini", c10::DispatchKey::AutogradCPU, __FILE__, __LINE__);
  autograd->impl("sample", TORCH_FN(sample_autograd));
  autograd->impl("adjoint", TORCH_FN(adjoint_autograd));
  library = cpu.release();
  autograd.release();
  return true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample", &sample,
        "ReDGE's (hard, soft) samples of (rows, K) logits for given noise, and (want_drawn) the "
        "drawn categories");
  m.def("adjoint", &adjoint,
        "Gradients of <grad, S> in the logits (and the noise); with grad_hard and the drawn "
        "categories, plus ReinDGE's ReinMax step for the hard sample's part");
  m.def("register_kernels", &register_kernels,
        "Register the CPU kernels of redge_mini::sample and ::adjoint (Python kernels in the "
        "given module for what they do not run; the module with step_tensor); False if done");
  m.def("step_tensor", &step_tensor,
        "The step table the CPU kernels use for (n_steps, t_1) (fetched from Python once)");
  m.def("set_store_bytes", &set_store_bytes,
        "Bytes of denoiser outputs per thread above which the adjoint checkpoints; returns the "
        "previous value");
}
