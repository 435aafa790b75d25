// ReDGE's fused sampler on CPU: the forward pass and its adjoint as one C++ call each
// (compiled on first use by redge_mini._cpp_sampler).
//
// The PyTorch path (redge_mini.diffusion) dispatches about 50 small torch operations per call;
// at the sizes where one ReDGE call takes a few hundred microseconds, that dispatch, not the
// arithmetic, is the cost. Here a block of rows runs its whole trajectory in loops that stay in
// the cache.
//
// Notation (as in redge_mini.diffusion._FusedSampler): w_j = logits + c_j x_j,
// D_j = softmax(w_j), x_{j-1} = r_j x_j + b_j D_j, from x_{n-1} = noise down to the soft sample
// S = D_1. The adjoint recomputes D_{n-1}, ..., D_1 of the block into scratch (nothing is
// stored between the passes) and walks back:
//   g_{D_j} = b_j g_{x_{j-1}},  g_w = J(D_j)^T g_{D_j},  g_logits += g_w,
//   g_{x_j} = r_j g_{x_{j-1}} + c_j g_w.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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
  return p * reinterpret_cast<const V&>(bits);
}

// float64: std::exp lane by lane (float64 is for checking, not for speed)
REDGE_INLINE Vec<double>::type exp_nonpositive(Vec<double>::type x) {
  Vec<double>::type out;
  for (int64_t b = 0; b < LANES; ++b) out[b] = std::exp(x[b]);
  return out;
}

// out = softmax(logits + c * x) per lane
template <typename T>
REDGE_INLINE void softmax(const T* logits, const T* x, T c, T* out, int64_t k) {
  using V = typename Vec<T>::type;
  V top = splat<V>(-std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < k; ++i) {
    const V w = at(logits, i) + c * at(x, i);
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

// out = J(d)^T (scale g) = d * (scale g) - d (d . scale g), J the softmax Jacobian at d
template <typename T>
REDGE_INLINE void softmax_vjp(const T* d, const T* g, T scale, T* out, int64_t k) {
  using V = typename Vec<T>::type;
  V dot = V{};
  for (int64_t i = 0; i < k; ++i) {
    const V t = at(d, i) * (scale * at(g, i));
    at(out, i) = t;
    dot += t;
  }
  for (int64_t i = 0; i < k; ++i) at(out, i) -= at(d, i) * dot;
}

struct Grid {
  std::vector<double> c, r, b;  // c_j = alpha_j / sigma_j^2, r_j, b_j (r_1 = b_1 = 0)
};

Grid make_grid(const std::vector<double>& alphas, const std::vector<double>& sigmas) {
  const int64_t n = static_cast<int64_t>(alphas.size());
  Grid g{std::vector<double>(n, 0.0), std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  for (int64_t j = 1; j < n; ++j) g.c[j] = alphas[j] / (sigmas[j] * sigmas[j]);
  for (int64_t j = 2; j < n; ++j) {
    g.r[j] = sigmas[j - 1] / sigmas[j];
    g.b[j] = alphas[j - 1] - g.r[j] * alphas[j];
  }
  return g;
}

// x <- r x + b d over a block
template <typename T>
REDGE_INLINE void move(T* x, const T* d, T r, T b, int64_t k) {
  for (int64_t i = 0; i < k; ++i) at(x, i) = r * at(x, i) + b * at(d, i);
}

// The forward pass of a block from x = noise: D_j goes to `denoised + (j - 1) * m` for
// j = n-1, ..., 2 when `denoised` is given (else to `d`), S = D_1 to `soft`; `x` is scratch.
template <typename T>
REDGE_INLINE void trajectory(const T* logits, const T* noise, const Grid& g, int64_t k, T* x,
                             T* d, T* denoised, T* soft) {
  const int64_t m = k * LANES, last = static_cast<int64_t>(g.c.size()) - 1;
  std::memcpy(x, noise, sizeof(T) * m);
  for (int64_t j = last; j >= 2; --j) {
    T* dj = denoised ? denoised + (j - 1) * m : d;
    softmax(logits, x, T(g.c[j]), dj, k);
    move(x, dj, T(g.r[j]), T(g.b[j]), k);
  }
  softmax(logits, x, T(g.c[1]), soft, k);
}

// The backward pass of a block: recompute D_1 = S, ..., D_{n-1} into `denoised` (n - 1 slots
// of m values), then walk back from the gradient `grad` of S; writes the logits' gradient to
// `gl` and the noise's to `gx`. `x` and `gw` are scratch.
template <typename T>
REDGE_INLINE void adjoint_block(const T* logits, const T* noise, const T* grad, const Grid& g,
                                int64_t k, T* x, T* gw, T* denoised, T* gl, T* gx) {
  using V = typename Vec<T>::type;
  const int64_t m = k * LANES, n = static_cast<int64_t>(g.c.size());
  trajectory(logits, noise, g, k, x, gw, denoised, denoised);
  // j = 1: g_w = J(S)^T g, g_logits = g_w, g_x = c_1 g_w
  softmax_vjp(denoised, grad, T(1), gw, k);
  const T c1 = T(g.c[1]);
  for (int64_t i = 0; i < k; ++i) {
    at(gl, i) = at(gw, i);
    at(gx, i) = c1 * at(gw, i);
  }
  for (int64_t j = 2; j < n; ++j) {
    softmax_vjp(denoised + (j - 1) * m, gx, T(g.b[j]), gw, k);
    const T r = T(g.r[j]), c = T(g.c[j]);
    for (int64_t i = 0; i < k; ++i) {
      const V w = at(gw, i);
      at(gl, i) += w;
      at(gx, i) = r * at(gx, i) + c * w;
    }
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
// of probability zero is never drawn. `index` receives the categories.
template <typename T>
REDGE_INLINE void inverse_cdf(const T* soft, const T* uniform, int64_t k, int64_t* index) {
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
}

template <typename T>
REDGE_INLINE void sample_range(const T* logits, const T* noise, const T* uniform, const Grid& g,
                               int64_t k, int64_t begin, int64_t end, T* hard, T* soft) {
  const int64_t m = k * LANES;
  std::vector<T> scratch(5 * m);
  T *lg = scratch.data(), *z = lg + m, *x = z + m, *d = x + m, *s = d + m;
  T u[LANES];
  int64_t index[LANES];
  for (int64_t first = begin; first < end; first += LANES) {
    const int64_t count = std::min(LANES, end - first);
    to_block(logits, first, count, k, lg);
    to_block(noise, first, count, k, z);
    trajectory(lg, z, g, k, x, d, static_cast<T*>(nullptr), s);
    from_block(s, first, count, k, soft);
    for (int64_t b = 0; b < LANES; ++b) u[b] = b < count ? uniform[first + b] : T(0);
    inverse_cdf(s, u, k, index);
    std::memset(hard + first * k, 0, sizeof(T) * count * k);
    for (int64_t b = 0; b < count; ++b) hard[(first + b) * k + index[b]] = T(1);
  }
}

template <typename T>
REDGE_INLINE void adjoint_range(const T* logits, const T* noise, const T* grad, const Grid& g,
                                int64_t k, int64_t begin, int64_t end, T* grad_logits,
                                T* grad_noise) {
  const int64_t m = k * LANES, n = static_cast<int64_t>(g.c.size());
  // logits, noise, grad, x, g_w, g_logits, g_x, then D_1, ..., D_{n-1}
  std::vector<T> scratch((n + 6) * m);
  T *lg = scratch.data(), *z = lg + m, *gr = z + m, *x = gr + m, *gw = x + m, *gl = gw + m;
  T *gx = gl + m, *denoised = gx + m;
  for (int64_t first = begin; first < end; first += LANES) {
    const int64_t count = std::min(LANES, end - first);
    to_block(logits, first, count, k, lg);
    to_block(noise, first, count, k, z);
    to_block(grad, first, count, k, gr);
    adjoint_block(lg, z, gr, g, k, x, gw, denoised, gl, gx);
    from_block(gl, first, count, k, grad_logits);
    if (grad_noise) from_block(gx, first, count, k, grad_noise);
  }
}

// The entry points, with an AVX2/FMA copy on x86-64.
REDGE_CLONES void run_sample(const float* logits, const float* noise, const float* uniform,
                             const Grid& g, int64_t k, int64_t begin, int64_t end, float* hard,
                             float* soft) {
  sample_range(logits, noise, uniform, g, k, begin, end, hard, soft);
}

REDGE_CLONES void run_adjoint(const float* logits, const float* noise, const float* grad,
                              const Grid& g, int64_t k, int64_t begin, int64_t end,
                              float* grad_logits, float* grad_noise) {
  adjoint_range(logits, noise, grad, g, k, begin, end, grad_logits, grad_noise);
}

REDGE_CLONES void run_sample(const double* logits, const double* noise, const double* uniform,
                             const Grid& g, int64_t k, int64_t begin, int64_t end, double* hard,
                             double* soft) {
  sample_range(logits, noise, uniform, g, k, begin, end, hard, soft);
}

REDGE_CLONES void run_adjoint(const double* logits, const double* noise, const double* grad,
                              const Grid& g, int64_t k, int64_t begin, int64_t end,
                              double* grad_logits, double* grad_noise) {
  adjoint_range(logits, noise, grad, g, k, begin, end, grad_logits, grad_noise);
}

void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the dtype of logits");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Rows per task of at::parallel_for: about 32k elements each, so that small calls stay on the
// calling thread (waking the pool costs more than they do).
int64_t grain(int64_t k) { return std::max<int64_t>(1, (int64_t(1) << 15) / k); }

std::vector<at::Tensor> sample(const at::Tensor& logits, const at::Tensor& noise,
                               const at::Tensor& uniform, const std::vector<double>& alphas,
                               const std::vector<double>& sigmas) {
  TORCH_CHECK(logits.dim() == 2, "logits must be (rows, K)");
  check_rows(logits, "logits", logits);
  check_rows(noise, "noise", logits);
  check_rows(uniform, "uniform", logits);
  TORCH_CHECK(noise.sizes() == logits.sizes(), "noise must have the shape of logits");
  const int64_t rows = logits.size(0), k = logits.size(1);
  TORCH_CHECK(uniform.numel() == rows, "uniform must hold one number per row");
  TORCH_CHECK(alphas.size() >= 2 && alphas.size() == sigmas.size(), "bad time grid");
  const Grid g = make_grid(alphas, sigmas);
  at::Tensor hard = at::empty_like(logits), soft = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "redge_sample", [&] {
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    const scalar_t* u = uniform.const_data_ptr<scalar_t>();
    scalar_t* h = hard.mutable_data_ptr<scalar_t>();
    scalar_t* s = soft.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain(k), [&](int64_t begin, int64_t end) {
      run_sample(l, z, u, g, k, begin, end, h, s);
    });
  });
  return {hard, soft};
}

std::vector<at::Tensor> adjoint(const at::Tensor& logits, const at::Tensor& noise,
                                const at::Tensor& grad, const std::vector<double>& alphas,
                                const std::vector<double>& sigmas, bool want_noise) {
  TORCH_CHECK(logits.dim() == 2, "logits must be (rows, K)");
  check_rows(logits, "logits", logits);
  check_rows(noise, "noise", logits);
  check_rows(grad, "grad", logits);
  TORCH_CHECK(noise.sizes() == logits.sizes(), "noise must have the shape of logits");
  TORCH_CHECK(grad.sizes() == logits.sizes(), "grad must have the shape of logits");
  TORCH_CHECK(alphas.size() >= 2 && alphas.size() == sigmas.size(), "bad time grid");
  const int64_t rows = logits.size(0), k = logits.size(1);
  const Grid g = make_grid(alphas, sigmas);
  at::Tensor grad_logits = at::empty_like(logits);
  at::Tensor grad_noise = want_noise ? at::empty_like(logits) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "redge_adjoint", [&] {
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    const scalar_t* gr = grad.const_data_ptr<scalar_t>();
    scalar_t* gl = grad_logits.mutable_data_ptr<scalar_t>();
    scalar_t* gn = want_noise ? grad_noise.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, grain(k), [&](int64_t begin, int64_t end) {
      run_adjoint(l, z, gr, g, k, begin, end, gl, gn);
    });
  });
  if (want_noise) return {grad_logits, grad_noise};
  return {grad_logits};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample", &sample, "ReDGE's (hard, soft) samples of (rows, K) logits for given noise");
  m.def("adjoint", &adjoint, "Gradients of <grad, S> in the logits (and the noise)");
}
