// CPU kernels of the three anl_fused operators: std, noise_scale, add_noise (and, for the model zoo, max_pool2x2).
//
// Registered as the CPU implementations of the schemas that anl_fused.kernels defines
// (TORCH_LIBRARY_IMPL(anl_fused, CPU)), and exposed to Python for the eager path of anl_fused.ops.
// Each op reads its inputs once (one pass over memory), runs on at::parallel_for and is vectorized
// with at::vec::Vectorized. The math and the rounding rules are those of anl_fused/ops.py (the torch
// backend) and docs/semantics.md; kernels/cpu/__init__.py says how this file is built (one build per
// CPU capability, with the flags torch's own kernels of that capability use, and -ffp-contract=off so
// that no multiply-add is fused: every product and sum is rounded as the torch backend rounds it).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

using at::vec::Vectorized;

// The accumulation type: double for double data, float otherwise (anl_fused._dtypes.acc_dtype).
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr bool is_reduced = std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>;

// Elements handled per vector step: two vectors of the accumulation type.
template <typename A>
constexpr int64_t kStep = 2 * Vectorized<A>::size();

// p[0 .. kStep<A>) as two vectors of A.
template <typename A, typename T>
inline void load2(const T* p, Vectorized<A>& lo, Vectorized<A>& hi) {
  constexpr int64_t V = Vectorized<A>::size();
  if constexpr (std::is_same_v<T, A>) {
    lo = Vectorized<A>::loadu(p);
    hi = Vectorized<A>::loadu(p + V);
  } else if constexpr (is_reduced<T> && std::is_same_v<A, float>) {
    std::tie(lo, hi) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
  } else {  // mixed float / double storage: convert through a buffer
    alignas(64) A buf[2 * V];
    for (int64_t i = 0; i < 2 * V; ++i) buf[i] = static_cast<A>(p[i]);
    lo = Vectorized<A>::loadu(buf);
    hi = Vectorized<A>::loadu(buf + V);
  }
}

// Stores two vectors of A = acc_t<T> to p[0 .. kStep<A>), rounded once to T.
template <typename T, typename A>
inline void store2(T* p, const Vectorized<A>& lo, const Vectorized<A>& hi) {
  if constexpr (std::is_same_v<T, A>) {
    lo.store(p);
    hi.store(p + Vectorized<A>::size());
  } else {
    static_assert(is_reduced<T> && std::is_same_v<A, float>);
    at::vec::convert_from_float<T>(lo, hi).store(p);
  }
}

void check_float(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, name,
                   " must be float32, float16, bfloat16 or float64, got ", st);
}

// t itself if sample b of it is the storage range [b*M, (b+1)*M) (contiguous, channels_last(_3d)),
// else a contiguous copy; fmt receives the memory format.
at::Tensor dense(const at::Tensor& t, at::MemoryFormat& fmt) {
  fmt = at::MemoryFormat::Contiguous;
  if (t.is_contiguous()) return t;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    fmt = at::MemoryFormat::ChannelsLast;
    return t;
  }
  if (t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    fmt = at::MemoryFormat::ChannelsLast3d;
    return t;
  }
  return t.contiguous();
}

// ---------------------------------------------------------------------------------------------------
// std(h): blocks of kBlock elements; per block, two passes over the (L1-resident) block in A give the
// block's mean and M2 of x - K (K = h[0], so that the sums are of the order of the std, not of the
// mean); the blocks are combined in index order in double (mu = sum n_k mu_k / N,
// M2 = sum M2_k + sum n_k (mu_k - mu)^2), so the result does not depend on the thread count.

constexpr int64_t kBlock = 4096;

template <typename T>
void block_stats(const T* p, int64_t n, acc_t<T> shift, double& mean_out, double& m2_out) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int64_t S = kStep<A>;
  const Vec k(shift);
  const int64_t nv = n - n % S;
  Vec s0(A(0)), s1(A(0));
  Vec lo, hi;
  for (int64_t i = 0; i < nv; i += S) {
    load2<A>(p + i, lo, hi);
    s0 = s0 + (lo - k);
    s1 = s1 + (hi - k);
  }
  alignas(64) A buf[Vec::size()];
  (s0 + s1).store(buf);
  A sum(0);
  for (int64_t j = 0; j < Vec::size(); ++j) sum += buf[j];
  for (int64_t i = nv; i < n; ++i) sum += static_cast<A>(p[i]) - shift;
  const A mean = sum / static_cast<A>(n);
  const Vec m(mean);
  Vec q0(A(0)), q1(A(0));
  for (int64_t i = 0; i < nv; i += S) {
    load2<A>(p + i, lo, hi);
    const Vec d0 = (lo - k) - m, d1 = (hi - k) - m;
    q0 = q0 + d0 * d0;
    q1 = q1 + d1 * d1;
  }
  (q0 + q1).store(buf);
  A m2(0);
  for (int64_t j = 0; j < Vec::size(); ++j) m2 += buf[j];
  for (int64_t i = nv; i < n; ++i) {
    const A d = (static_cast<A>(p[i]) - shift) - mean;
    m2 += d * d;
  }
  mean_out = static_cast<double>(mean);
  m2_out = static_cast<double>(m2);
}

at::Tensor std_cpu(const at::Tensor& h_in) {
  check_float(h_in, "h");
  TORCH_CHECK(h_in.device().is_cpu(), "anl_fused::std (C++): h must be a CPU tensor, got ", h_in.device());
  at::MemoryFormat fmt;
  const at::Tensor h = dense(h_in, fmt);  // std reads the flat storage: any dense order is fine
  const auto acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t n = h.numel();
  at::Tensor s = at::empty({}, h.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "anl_fused_std", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    if (n <= 1) {
      *s.data_ptr<A>() = A(0);
      return;
    }
    const T* p = h.const_data_ptr<T>();
    const A shift = static_cast<A>(p[0]);
    const int64_t nb = (n + kBlock - 1) / kBlock;
    std::vector<double> mean(nb), m2(nb);
    at::parallel_for(0, nb, 8, [&](int64_t b0, int64_t b1) {
      for (int64_t k = b0; k < b1; ++k) {
        const int64_t start = k * kBlock;
        block_stats<T>(p + start, std::min(kBlock, n - start), shift, mean[k], m2[k]);
      }
    });
    double total = 0.0;
    for (int64_t k = 0; k < nb; ++k) total += static_cast<double>(std::min(kBlock, n - k * kBlock)) * mean[k];
    const double mu = total / static_cast<double>(n);
    double sum_m2 = 0.0;
    for (int64_t k = 0; k < nb; ++k) {
      const double d = mean[k] - mu;
      sum_m2 += m2[k] + static_cast<double>(std::min(kBlock, n - k * kBlock)) * d * d;
    }
    *s.data_ptr<A>() = static_cast<A>(std::sqrt(sum_m2 / static_cast<double>(n - 1)));
  });
  return s;
}

// ---------------------------------------------------------------------------------------------------
// noise_scale: part[b, c] = max |g_b,i| over chunk c of sample b (NaN if the chunk holds a NaN), in
// parallel over (sample, chunk); then, in one thread and in sample order, the norms, the stats and
// the scales exactly as the torch backend computes them (same roundings, same order of operations).

constexpr int64_t kChunk = 16384;

template <typename T>
acc_t<T> absmax(const T* p, int64_t n) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int64_t S = kStep<A>;
  const int64_t nv = n - n % S;
  Vec m0(A(0)), m1(A(0)), lo, hi;
  for (int64_t i = 0; i < nv; i += S) {
    load2<A>(p + i, lo, hi);
    m0 = at::vec::maximum(m0, lo.abs());  // maximum propagates NaN
    m1 = at::vec::maximum(m1, hi.abs());
  }
  alignas(64) A buf[Vec::size()];
  at::vec::maximum(m0, m1).store(buf);
  A best(0);
  bool nan = false;
  auto take = [&](A a) {
    if (std::isnan(a)) nan = true;
    else if (a > best) best = a;
  };
  for (int64_t j = 0; j < Vec::size(); ++j) take(buf[j]);
  for (int64_t i = nv; i < n; ++i) take(std::abs(static_cast<A>(p[i])));
  return nan ? std::numeric_limits<A>::quiet_NaN() : best;
}

std::tuple<at::Tensor, at::Tensor> noise_scale_cpu(const at::Tensor& g_in, const std::optional<at::Tensor>& z,
                                                   const std::optional<at::Tensor>& s, double eps, bool layer_norm,
                                                   const std::optional<at::Tensor>& stats) {
  check_float(g_in, "g");
  TORCH_CHECK(g_in.device().is_cpu(), "anl_fused::noise_scale (C++): g must be a CPU tensor, got ", g_in.device());
  TORCH_CHECK_VALUE(g_in.dim() >= 1, "g must have a batch dimension (dim >= 1)");
  if (stats.has_value()) {
    TORCH_CHECK_VALUE(stats->scalar_type() == at::kLong && stats->dim() == 1 && stats->numel() == 2,
                      "stats must be an int64 tensor of shape [2], got ", stats->scalar_type(), " ", stats->sizes());
  }
  const int64_t B = g_in.size(0);
  const auto acc = g_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = g_in.options().dtype(acc);
  at::Tensor zc, sc;
  if (z.has_value()) {
    TORCH_CHECK_VALUE(z->numel() == B, "z must hold one value per sample (", B, "), got shape ", z->sizes());
    zc = z->reshape({B}).to(acc).contiguous();
  }
  if (s.has_value()) {
    TORCH_CHECK_VALUE(s->numel() == 1, "s must be a single value, got shape ", s->sizes());
    sc = s->reshape({}).to(acc);
  }
  at::Tensor scale = at::empty({B}, opts), norm = at::empty({B}, opts);
  at::MemoryFormat fmt;
  const at::Tensor g = dense(g_in, fmt);
  const int64_t M = B > 0 ? g.numel() / B : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "anl_fused_noise_scale", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    A* nrm = norm.data_ptr<A>();
    A* out = scale.data_ptr<A>();
    const T* p = g.const_data_ptr<T>();
    const int64_t chunks = M > 0 ? (M + kChunk - 1) / kChunk : 0;
    if (chunks <= 1) {
      at::parallel_for(0, B, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(M, 1)),
                       [&](int64_t b0, int64_t b1) {
                         for (int64_t b = b0; b < b1; ++b) nrm[b] = M > 0 ? absmax<T>(p + b * M, M) : A(0);
                       });
    } else {
      std::vector<A> part(B * chunks);
      at::parallel_for(0, B * chunks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t b = t / chunks, c = t % chunks;
          const int64_t start = c * kChunk;
          part[t] = absmax<T>(p + b * M + start, std::min(kChunk, M - start));
        }
      });
      for (int64_t b = 0; b < B; ++b) {
        A best(0);
        for (int64_t c = 0; c < chunks; ++c) {
          const A v = part[b * chunks + c];
          if (std::isnan(v) || v > best) best = v;
          if (std::isnan(v)) break;
        }
        nrm[b] = best;
      }
    }
    // the per-sample factor, as anl_fused/ops.py computes it (eps rounded to A first, as torch rounds
    // a Python scalar operand to a float32 tensor's dtype)
    const A e = static_cast<A>(eps);
    const A half = static_cast<A>(eps / 2), quarter = static_cast<A>(std::abs(eps) / 4);
    const A lo_r = std::min(A(0), e), hi_r = std::max(A(0), e);
    const A* zp = z.has_value() ? zc.const_data_ptr<A>() : nullptr;
    const bool has_s = s.has_value();
    const A sv = has_s ? *sc.const_data_ptr<A>() : A(1);
    int64_t n_bad = 0, n_zero = 0;
    A layer(0);
    for (int64_t b = 0; b < B; ++b) {
      const A v = nrm[b];
      const bool finite = std::isfinite(v);
      n_bad += !finite;
      n_zero += v == A(0);
      if (finite && v > layer) layer = v;
    }
    const A big = std::numeric_limits<A>::max();
    for (int64_t b = 0; b < B; ++b) {
      A r = e;
      if (zp) {
        r = zp[b] * quarter + half;
        r = r < lo_r ? lo_r : r;  // clamp, NaN stays NaN (as torch.clamp)
        r = r > hi_r ? hi_r : r;
      }
      const A rs = has_s ? r * sv : r;
      const A v = nrm[b];
      const bool finite = std::isfinite(v);
      bool valid;
      A divisor;
      if (layer_norm) {
        valid = finite && layer > A(0);
        divisor = layer > A(0) ? layer : A(1);
      } else {
        valid = finite && v > A(0);
        divisor = valid ? v : A(1);
      }
      A q = rs / divisor;
      q = q < -big ? -big : q;
      q = q > big ? big : q;
      out[b] = valid ? q : A(0);
    }
    if (stats.has_value()) {
      auto st = stats->accessor<int64_t, 1>();
      st[0] += n_bad;
      st[1] += n_zero;
    }
  });
  return {scale, norm};
}

// ---------------------------------------------------------------------------------------------------
// add_noise: out_b,i = h_b,i + f_b * g'_b,i, f_b = scale_b * alpha (or alpha), g' = g with its
// non-finite entries set to 0; in A, rounded once to h's dtype; out in h's memory format.

template <typename T, typename G>
void add_noise_kernel(const T* hp, const G* gp, T* op, const std::vector<acc_t<T>>& factor, int64_t M, int64_t n) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int64_t S = kStep<A>;
  const bool per_sample = factor.size() > 1;
  at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    const Vec inf(std::numeric_limits<A>::infinity()), zero(A(0));
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / M;
      const int64_t stop = std::min(end, (b + 1) * M);
      const A f = factor[per_sample ? b : 0];
      const Vec fv(f);
      Vec h0, h1, g0, g1;
      for (; i + S <= stop; i += S) {
        load2<A>(hp + i, h0, h1);
        load2<A>(gp + i, g0, g1);
        g0 = Vec::blendv(zero, g0, g0.abs() < inf);  // NaN and +-inf -> 0
        g1 = Vec::blendv(zero, g1, g1.abs() < inf);
        store2<T, A>(op + i, h0 + fv * g0, h1 + fv * g1);
      }
      for (; i < stop; ++i) {
        A gv = static_cast<A>(gp[i]);
        gv = std::abs(gv) < std::numeric_limits<A>::infinity() ? gv : A(0);
        op[i] = static_cast<T>(static_cast<A>(hp[i]) + f * gv);
      }
    }
  });
}

at::Tensor add_noise_cpu(const at::Tensor& h_in, const at::Tensor& g_in, const std::optional<at::Tensor>& scale,
                         double alpha) {
  check_float(h_in, "h");
  check_float(g_in, "g");
  TORCH_CHECK(h_in.device().is_cpu() && g_in.device().is_cpu(), "anl_fused::add_noise (C++): h and g must be CPU tensors");
  TORCH_CHECK_VALUE(h_in.dim() >= 1, "h must have a batch dimension (dim >= 1)");
  TORCH_CHECK_VALUE(g_in.sizes() == h_in.sizes(), "g must have h's shape ", h_in.sizes(), ", got ", g_in.sizes());
  const int64_t B = h_in.size(0);
  const auto acc = h_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor sc;
  if (scale.has_value()) {
    check_float(*scale, "scale");
    const int64_t k = scale->numel();
    TORCH_CHECK_VALUE(k == B || k == 1, "scale must hold one value per sample (", B,
                      ") or a single value, got shape ", scale->sizes());
    sc = scale->reshape({k}).to(acc).contiguous();
  }
  at::MemoryFormat fmt;
  const at::Tensor h = dense(h_in, fmt);
  const at::Tensor g = g_in.is_contiguous(fmt) ? g_in : g_in.contiguous(fmt);
  at::Tensor out = at::empty_like(h, h.options(), fmt);
  const int64_t n = h.numel();
  if (n == 0) return out;
  const int64_t M = n / B;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "anl_fused_add_noise", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const A a = static_cast<A>(alpha);
    std::vector<A> factor;
    if (scale.has_value()) {
      const A* sp = sc.const_data_ptr<A>();
      factor.assign(sp, sp + sc.numel());
      for (auto& f : factor) f = f * a;
    } else {
      factor.assign(1, a);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "anl_fused_add_noise_g", [&] {
      add_noise_kernel<T, scalar_t>(h.const_data_ptr<T>(), g.const_data_ptr<scalar_t>(), out.data_ptr<T>(), factor,
                                    M, n);
    });
  });
  return out;
}

// add_noise's eager autograd: d out / d h = I, nothing to g or scale. A C++ node (the
// torch.library op's Python backward costs ~0.1 ms per layer per step on a small model).
struct AddNoiseFn : public torch::autograd::Function<AddNoiseFn> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& h, const at::Tensor& g,
                            const std::optional<at::Tensor>& scale, double alpha) {
    return add_noise_cpu(h, g, scale, alpha);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grad_out) {
    return {grad_out[0], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor add_noise_autograd(const at::Tensor& h, const at::Tensor& g, const std::optional<at::Tensor>& scale,
                              double alpha) {
  return AddNoiseFn::apply(h, g, scale, alpha);
}

// ---- max_pool2x2: the model zoo's 2x2, stride-2 max pool (not an ANL op) ----
//
// aten's CPU max_pool2d of a contiguous [N, C, H, W] tensor scans each window with data-dependent branches (and
// the general case's index math), ~20 ns an output on this project's machines: 30-40% of a LeNet-5 step. This is
// the same scan for kernel 2, stride 2, no padding: the window's four elements in aten's order (0,0), (0,1), (1,0),
// (1,1), an element taken when it is greater than the maximum so far or NaN (in float for Half / BFloat16), here
// with vector selects. Values and indices are aten's bit for bit (the first maximum wins a tie, the last NaN wins),
// so the backward (aten's own max_pool2d_with_indices_backward on these indices) is too.

// One output row: the window's four elements as four vectors of Wo-chunks (even and odd lanes of the two input
// rows, at::vec::deinterleave2), chosen lane by lane with blendv; the chosen element's code (0-3) gives its index.
template <typename T>
void max_pool2x2_row(const T* top, const T* end, T* dst, int64_t* dix, int64_t at_top, int64_t Wo, int64_t W) {
  using Vec = Vectorized<T>;
  constexpr int64_t L = Vec::size();
  const int64_t off[4] = {0, 1, W, W + 1};
  T code[L];
  auto load2 = [&](const T* p, int64_t n) {  // 2n elements from p as (even lanes, odd lanes)
    if (p + 2 * L <= end) return at::vec::deinterleave2(Vec::loadu(p), Vec::loadu(p + L));
    return at::vec::deinterleave2(Vec::loadu(p, std::min<int64_t>(L, 2 * n)),
                                  Vec::loadu(p + L, std::max<int64_t>(0, 2 * n - L)));
  };
  for (int64_t ow = 0; ow < Wo; ow += L) {
    const int64_t n = std::min<int64_t>(L, Wo - ow);
    auto [a, b] = load2(top + 2 * ow, n);
    auto [c, d] = load2(top + W + 2 * ow, n);
    Vec m = a, k(T(0));
    int i = 0;
    for (const Vec& v : {b, c, d}) {
      const Vec take = (v > m) | v.isnan();
      m = Vec::blendv(m, v, take);
      k = Vec::blendv(k, Vec(T(++i)), take);
    }
    m.store(dst + ow, n);
    k.store(code, n);
    for (int64_t j = 0; j < n; ++j) dix[ow + j] = at_top + 2 * (ow + j) + off[static_cast<int>(code[j])];
  }
}

template <typename T>
void max_pool2x2_kernel(const T* in, T* out, int64_t* idx, int64_t planes, int64_t H, int64_t W) {
  using A = acc_t<T>;
  const int64_t Ho = H / 2, Wo = W / 2;
  const T* end = in + planes * H * W;
  at::parallel_for(0, planes * Ho, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (2 * W)),
                   [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {  // q: one output row, (plane, oh)
      const int64_t p = q / Ho, at_top = 2 * (q % Ho) * W;
      const T* src = in + p * H * W;
      if constexpr (std::is_same_v<T, A>) {
        max_pool2x2_row(src + at_top, end, out + q * Wo, idx + q * Wo, at_top, Wo, W);
      } else {  // Half, BFloat16: aten's scalar scan, compared in float
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t at0 = at_top + 2 * ow;
          A m = static_cast<A>(src[at0]);
          int64_t k = at0;
          for (int64_t at : {at0 + 1, at0 + W, at0 + W + 1}) {
            const A v = static_cast<A>(src[at]);
            if (v > m || std::isnan(v)) {
              m = v;
              k = at;
            }
          }
          out[q * Wo + ow] = static_cast<T>(m);
          idx[q * Wo + ow] = k;
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2x2_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous() && x.is_floating_point(),
              "max_pool2x2: needs a contiguous 4-d floating-point CPU tensor, got ", x.sizes(), " ", x.dtype(),
              " on ", x.device(), " (use torch.nn.functional.max_pool2d for other inputs)");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "max_pool2x2: needs H, W >= 2, got ", x.sizes());
  at::Tensor out = at::empty({N, C, H / 2, W / 2}, x.options());
  at::Tensor idx = at::empty({N, C, H / 2, W / 2}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2", [&] {
    max_pool2x2_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                 idx.mutable_data_ptr<int64_t>(), N * C, H, W);
  });
  return {out, idx};
}

// Autograd in C++ (one node, as aten's MaxPool2DWithIndicesBackward0): the gradient goes to each window's index.
struct MaxPool2x2Fn : public torch::autograd::Function<MaxPool2x2Fn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    auto [out, idx] = max_pool2x2_cpu(x);
    ctx->save_for_backward({x, idx});
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    return {at::max_pool2d_with_indices_backward(grad_out[0], saved[0], {2, 2}, {2, 2}, {0, 0}, {1, 1}, false,
                                                 saved[1])};
  }
};

at::Tensor max_pool2x2_autograd(const at::Tensor& x) { return MaxPool2x2Fn::apply(x); }

}  // namespace

TORCH_LIBRARY_IMPL(anl_fused, CPU, m) {
  m.impl("std", &std_cpu);
  m.impl("noise_scale", &noise_scale_cpu);
  m.impl("add_noise", &add_noise_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "anl_fused CPU kernels (also registered as the CPU implementations of torch.ops.anl_fused.*)";
  m.def("std", &std_cpu, "std(h) over all elements, correction 1 (see anl_fused.ops.std)");
  m.def("noise_scale", &noise_scale_cpu, "(scale, norm) of round 1 (see anl_fused.ops.noise_scale)");
  m.def("add_noise", &add_noise_cpu, "h + alpha * scale[b] * g' (see anl_fused.ops.add_noise)");
  m.def("add_noise_autograd", &add_noise_autograd,
        "add_noise with its autograd (identity to h; g and scale get no gradient)");
  m.def("max_pool2x2", &max_pool2x2_cpu, "(values, indices) of max_pool2d(x, 2, 2), aten's bit for bit");
  m.def("max_pool2x2_autograd", &max_pool2x2_autograd, "max_pool2d(x, 2, 2) with aten's backward");
  m.def("capability", [] { return std::string(C10_STRINGIZE(CPU_CAPABILITY)); }, "the vector ISA built in");
}
