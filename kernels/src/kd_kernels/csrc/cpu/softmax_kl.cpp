// softmax_kl on CPU: temperature-softmax KL / soft cross-entropy over rows of logits [N, V].
//
// Forward: per row, a max pass and one exp pass (the row stays in cache between them) give the
// row's loss and each side's statistics saved for backward, (max, log sum exp(z/T - max)): kept
// apart, not summed into one log-sum-exp, because at large logits rounding that sum to fp32
// would cost the gradient its precision. For the same reason the expectation over p_T is taken
// of centred terms, (z_T/T - max_T) - (z_S/T - max_S) or z_S/T - max_S: raw logits that share a
// large offset would cancel catastrophically. Rows of weight 0 are skipped. The
// weighted row losses are summed in row order, so the result does not depend on threading.
// Backward: one pass per row writes grad = coef * (p_S - p_T) once, from the saved statistics.
// With gradient (kd::softmax_kl_with_grad, what training on CPU runs): the forward also writes
// the gradient for a loss gradient of 1, in a third pass over each row while it is still in cache
// (from the exponentials of the second pass, kept in a per-thread buffer), so that the backward
// only scales it and the logits are read from memory once instead of twice. The gradient is
// written with non-temporal (streaming) stores: it is not read again soon, and streaming spares
// its cache lines a read for ownership. Its buffer is reused from call to call (GradientBuffers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <vector>

#include "vec_math.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace kd_kernels::cpu {
namespace {

enum class Mode { kKL, kCE };

Mode parse_mode(std::string_view mode) {
  TORCH_CHECK(mode == "kl" || mode == "ce", "softmax_kl: mode must be 'kl' or 'ce', got ", mode);
  return mode == "kl" ? Mode::kKL : Mode::kCE;
}

template <typename scalar_t>
struct RowForward {
  double loss;
  scalar_t max_s, log_sum_s, max_t, log_sum_t;
  double sum_s, sum_t;  // sum exp(z/T - max)
};

// With kKeepExp, also writes exp(z/T - max) of each entry to exp_s[0:V] and exp_t[0:V] (for the
// gradient pass that follows, so that it needs no exponential of its own).
template <typename scalar_t, bool kKeepExp = false>
RowForward<scalar_t> row_forward(const scalar_t* s, const scalar_t* t, int64_t V, scalar_t inv_t, Mode mode,
                                 scalar_t* exp_s = nullptr, scalar_t* exp_t = nullptr) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size();
  const int64_t body = V - V % n;

  Vec max_s(minus_infinity<scalar_t>()), max_t(minus_infinity<scalar_t>());
  for (int64_t v = 0; v < body; v += n) {
    max_s = at::vec::maximum(max_s, Vec::loadu(s + v));
    max_t = at::vec::maximum(max_t, Vec::loadu(t + v));
  }
  scalar_t ms = reduce_max(max_s), mt = reduce_max(max_t);
  for (int64_t v = body; v < V; ++v) {
    ms = std::max(ms, s[v]);
    mt = std::max(mt, t[v]);
  }
  ms *= inv_t;  // the temperature is positive, so the max of z/T is max(z)/T
  mt *= inv_t;

  const Vec vinv(inv_t), vms(ms), vmt(mt), zero(0), ninf(minus_infinity<scalar_t>());
  Vec zs(0), zt(0), acc(0);
  for (int64_t v = 0; v < body; v += n) {
    const Vec sv = Vec::loadu(s + v) * vinv;
    const Vec tv = Vec::loadu(t + v) * vinv;
    const Vec et = fast_exp(tv - vmt);
    const Vec es = fast_exp(sv - vms);
    if constexpr (kKeepExp) {
      es.store(exp_s + v);
      et.store(exp_t + v);
    }
    zs = zs + es;
    zt = zt + et;
    // A teacher entry of -inf has probability 0; blend its term to 0 (0 * inf would be NaN).
    const Vec term = mode == Mode::kKL ? (tv - vmt) - (sv - vms) : sv - vms;
    acc = at::vec::fmadd(et, Vec::blendv(term, zero, tv == ninf), acc);
  }
  double sum_s = reduce_sum(zs), sum_t = reduce_sum(zt), sum_a = reduce_sum(acc);
  for (int64_t v = body; v < V; ++v) {
    const double sv = static_cast<double>(s[v]) * inv_t, tv = static_cast<double>(t[v]) * inv_t;
    const double et = std::exp(tv - mt), es = std::exp(sv - ms);
    if constexpr (kKeepExp) {
      exp_s[v] = static_cast<scalar_t>(es);
      exp_t[v] = static_cast<scalar_t>(et);
    }
    sum_s += es;
    sum_t += et;
    if (tv != -INFINITY) {
      sum_a += et * (mode == Mode::kKL ? (tv - mt) - (sv - ms) : sv - ms);
    }
  }
  const double log_sum_s = std::log(sum_s), log_sum_t = std::log(sum_t);
  // E_{p_T}[(z_T/T - max_T) - (z_S/T - max_S)] (kl) or E_{p_T}[z_S/T - max_S] (ce)
  const double expectation = sum_a / sum_t;
  const double loss = mode == Mode::kKL
      ? (expectation - log_sum_t + log_sum_s) / (static_cast<double>(inv_t) * inv_t)
      : log_sum_s - expectation;
  return {loss, ms, static_cast<scalar_t>(log_sum_s), mt, static_cast<scalar_t>(log_sum_t), sum_s, sum_t};
}

// stats_* point at a row's (max, log_sum).
template <typename scalar_t>
void row_backward(const scalar_t* s, const scalar_t* t, scalar_t* grad, int64_t V, scalar_t inv_t,
                  scalar_t coef, const scalar_t* stats_s, const scalar_t* stats_t) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size();
  const int64_t body = V - V % n;
  const Vec vinv(inv_t), vms(stats_s[0]), vls(stats_s[1]), vmt(stats_t[0]), vlt(stats_t[1]), vcoef(coef);
  for (int64_t v = 0; v < body; v += n) {
    const Vec ps = fast_exp((Vec::loadu(s + v) * vinv - vms) - vls);
    const Vec pt = fast_exp((Vec::loadu(t + v) * vinv - vmt) - vlt);
    (vcoef * (ps - pt)).store(grad + v);
  }
  for (int64_t v = body; v < V; ++v) {
    grad[v] = coef * (std::exp((s[v] * inv_t - stats_s[0]) - stats_s[1]) -
                      std::exp((t[v] * inv_t - stats_t[0]) - stats_t[1]));
  }
}

// Whether a vector store at p can be non-temporal: full-width aligned (AVX512/AVX2 builds only).
template <typename scalar_t>
constexpr int64_t stream_alignment() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return sizeof(Vectorized<scalar_t>);
#else
  return sizeof(scalar_t);  // no streaming stores: every address will do
#endif
}

// A non-temporal store of a whole vector to p, aligned to stream_alignment (a plain store where
// the ISA has none).
template <typename scalar_t>
inline void stream_store(scalar_t* p, const Vectorized<scalar_t>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    _mm512_stream_ps(p, v);
  } else {
    _mm512_stream_pd(p, v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    _mm256_stream_ps(p, v);
  } else {
    _mm256_stream_pd(p, v);
  }
#else
  v.store(p);
#endif
}

// Orders this thread's streaming stores before what follows (the end of the parallel region).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// How many elements of a row starting at p come before the first streaming-aligned address.
template <typename scalar_t>
int64_t head_to_alignment(const scalar_t* p, int64_t V) {
  constexpr auto align = static_cast<uintptr_t>(stream_alignment<scalar_t>());
  const uintptr_t misaligned = reinterpret_cast<uintptr_t>(p) % align;
  return std::min<int64_t>(V, misaligned == 0 ? 0 : static_cast<int64_t>((align - misaligned) / sizeof(scalar_t)));
}

// grad = coef * (p_S - p_T) = (coef / sum_S) exp_S - (coef / sum_T) exp_T from the exponentials
// row_forward kept, streamed to memory: scalar elements up to the first aligned address,
// streaming vectors, scalar tail.
template <typename scalar_t>
void row_gradient_from_exp(const scalar_t* exp_s, const scalar_t* exp_t, scalar_t* grad, int64_t V, scalar_t scale_s,
                           scalar_t scale_t) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size();
  const int64_t head = head_to_alignment(grad, V);
  const int64_t body = head + (V - head) / n * n;
  for (int64_t v = 0; v < head; ++v) grad[v] = scale_s * exp_s[v] - scale_t * exp_t[v];
  const Vec vs(scale_s), vt(scale_t);
  for (int64_t v = head; v < body; v += n) {
    stream_store(grad + v, vs * Vec::loadu(exp_s + v) - vt * Vec::loadu(exp_t + v));
  }
  for (int64_t v = body; v < V; ++v) grad[v] = scale_s * exp_s[v] - scale_t * exp_t[v];
}

// Zeros streamed to grad[0:V].
template <typename scalar_t>
void row_zero_streamed(scalar_t* grad, int64_t V) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size();
  const int64_t head = head_to_alignment(grad, V);
  const int64_t body = head + (V - head) / n * n;
  std::fill(grad, grad + head, scalar_t(0));
  const Vec zero(0);
  for (int64_t v = head; v < body; v += n) stream_store(grad + v, zero);
  std::fill(grad + body, grad + V, scalar_t(0));
}

void check_inputs(const at::Tensor& s, const at::Tensor& t, const at::Tensor& inv_t, const at::Tensor& w) {
  TORCH_CHECK(s.dim() == 2 && s.sizes() == t.sizes(), "softmax_kl: student ", s.sizes(), " and teacher ",
              t.sizes(), " must be the same [N, V]");
  TORCH_CHECK(inv_t.numel() == s.size(0) && w.numel() == s.size(0),
              "softmax_kl: inv_temperature and row_weight must have one entry per row");
}

// Inputs of bf16/fp16 are computed in fp32; float64 stays float64. The teacher is converted to the
// student's compute type, whatever its own dtype (as the reference does).
at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

int64_t grain_for(int64_t V) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1));
}

// The checked inputs of every softmax_kl op, in the compute type and contiguous.
struct Inputs {
  Mode mode;
  at::ScalarType type;
  at::Tensor s, t, inv_t, w;
  int64_t N, V;
};

Inputs prepare(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& inv_temperature,
               const at::Tensor& row_weight, c10::string_view mode_name) {
  check_inputs(student, teacher, inv_temperature, row_weight);
  const Mode mode = parse_mode(std::string_view(mode_name.data(), mode_name.size()));
  const auto type = compute_type(student);
  const at::Tensor s = student.to(type).contiguous();
  return {mode, type, s, teacher.to(type).contiguous(), inv_temperature.to(type).contiguous(),
          row_weight.to(type).contiguous(), s.size(0), s.size(1)};
}

// sum_r w[r] * row_loss[r] over the rows of nonzero weight, in row order (independent of threading).
template <typename scalar_t>
double weighted_total(const scalar_t* w, const std::vector<double>& row_loss) {
  double total = 0;
  for (size_t r = 0; r < row_loss.size(); ++r) {
    if (w[r] != 0) total += static_cast<double>(w[r]) * row_loss[r];
  }
  return total;
}

// The factor of (p_S - p_T) in a row's gradient for a loss gradient row_grad:
// d(T^2 KL)/dz_S = T (p_S - p_T); d(CE)/dz_S = (p_S - p_T) / T.
double gradient_coef(Mode mode, double row_grad, double inv_t) {
  return mode == Mode::kKL ? row_grad / inv_t : row_grad * inv_t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_kl_forward(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& inv_temperature,
    const at::Tensor& row_weight, c10::string_view mode_name) {
  const Inputs in = prepare(student, teacher, inv_temperature, row_weight, mode_name);
  const Mode mode = in.mode;  // plain locals: lambdas may not capture structured bindings in C++17
  const at::Tensor &s = in.s, &t = in.t, &inv_t = in.inv_t, &w = in.w;
  const int64_t N = in.N, V = in.V;
  at::Tensor stats_s = at::zeros({N, 2}, s.options()), stats_t = at::zeros({N, 2}, s.options());
  std::vector<double> row_loss(N, 0.0);
  AT_DISPATCH_FLOATING_TYPES(in.type, "kd::softmax_kl", [&] {
    const scalar_t *sp = s.const_data_ptr<scalar_t>(), *tp = t.const_data_ptr<scalar_t>();
    const scalar_t *ip = inv_t.const_data_ptr<scalar_t>(), *wp = w.const_data_ptr<scalar_t>();
    scalar_t *ss = stats_s.mutable_data_ptr<scalar_t>(), *st = stats_t.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_for(V), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (wp[r] == 0) continue;
        const auto out = row_forward<scalar_t>(sp + r * V, tp + r * V, V, ip[r], mode);
        row_loss[r] = out.loss;
        ss[2 * r] = out.max_s;
        ss[2 * r + 1] = out.log_sum_s;
        st[2 * r] = out.max_t;
        st[2 * r + 1] = out.log_sum_t;
      }
    });
    row_loss.assign(1, weighted_total(wp, row_loss));
  });
  return {at::scalar_tensor(row_loss[0], s.options()), stats_s, stats_t};
}

// The buffers the gradient is written to. A fresh buffer of that size comes from the system
// untouched, and its first touch takes a page fault per 4 KiB (at [4096, 30522] fp32, 122k of
// them, which cost more than the whole kernel), so the one most recently freed is kept, a single
// block, and handed out again to the next call it is large enough for (a training step frees the
// gradient in its backward and asks again in the next forward). Never destroyed: tensors may be
// freed during the process's exit.
class GradientBuffers {
 public:
  static GradientBuffers& get() {
    static auto* buffers = new GradientBuffers();
    return *buffers;
  }

  at::Tensor tensor(int64_t N, int64_t V, const at::TensorOptions& options) {
    const size_t bytes = static_cast<size_t>(N) * static_cast<size_t>(V) * options.dtype().itemsize();
    if (bytes < kSmallest) return at::empty({N, V}, options);
    void* data = nullptr;
    size_t capacity = bytes;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (kept_ != nullptr && kept_capacity_ >= bytes) {
        data = kept_;
        capacity = kept_capacity_;
        kept_ = nullptr;
      }
    }
    if (data == nullptr) data = c10::alloc_cpu(capacity);
    return at::from_blob(data, {N, V}, [capacity](void* p) { GradientBuffers::get().give_back(p, capacity); },
                         options);
  }

 private:
  static constexpr size_t kSmallest = size_t(16) << 20;  // below this, the ordinary allocator

  void give_back(void* data, size_t capacity) {
    if (keep_) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (kept_ == nullptr || kept_capacity_ < capacity) {
        std::swap(data, kept_);
        std::swap(capacity, kept_capacity_);
      }
    }
    if (data != nullptr) c10::free_cpu(data);
  }

  // KD_KERNELS_KEEP_BUFFER=0 frees every buffer at once (each call then pays its page faults).
  static bool keep_from_environment() {
    const char* value = std::getenv("KD_KERNELS_KEEP_BUFFER");
    return value == nullptr || std::string_view(value) != "0";
  }

  std::mutex mutex_;
  void* kept_ = nullptr;
  size_t kept_capacity_ = 0;
  const bool keep_ = keep_from_environment();
};

// The forward and, for a loss gradient of 1, the backward: (loss, gradient of the student). Per
// row, row_forward keeps exp(z/T - max) of both sides in a buffer of this thread (in cache), and
// a third pass streams grad = coef * (p_S - p_T) out from them. Rows of weight 0 are skipped and
// get a zero gradient.
std::tuple<at::Tensor, at::Tensor> softmax_kl_with_grad(const at::Tensor& student, const at::Tensor& teacher,
                                                        const at::Tensor& inv_temperature,
                                                        const at::Tensor& row_weight, c10::string_view mode_name) {
  const Inputs in = prepare(student, teacher, inv_temperature, row_weight, mode_name);
  const Mode mode = in.mode;  // plain locals: lambdas may not capture structured bindings in C++17
  const at::Tensor &s = in.s, &t = in.t, &inv_t = in.inv_t, &w = in.w;
  const int64_t N = in.N, V = in.V;
  at::Tensor grad = GradientBuffers::get().tensor(N, V, s.options());
  std::vector<double> row_loss(N, 0.0);
  AT_DISPATCH_FLOATING_TYPES(in.type, "kd::softmax_kl_with_grad", [&] {
    const scalar_t *sp = s.const_data_ptr<scalar_t>(), *tp = t.const_data_ptr<scalar_t>();
    const scalar_t *ip = inv_t.const_data_ptr<scalar_t>(), *wp = w.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_for(V), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> exps(2 * V);  // exp(z_S/T - max_S), then exp(z_T/T - max_T), of the current row
      scalar_t *exp_s = exps.data(), *exp_t = exps.data() + V;
      for (int64_t r = begin; r < end; ++r) {
        if (wp[r] == 0) {
          row_zero_streamed(gp + r * V, V);
          continue;
        }
        const auto out = row_forward<scalar_t, true>(sp + r * V, tp + r * V, V, ip[r], mode, exp_s, exp_t);
        row_loss[r] = out.loss;
        const double coef = gradient_coef(mode, wp[r], ip[r]);  // for a loss gradient of 1
        row_gradient_from_exp<scalar_t>(exp_s, exp_t, gp + r * V, V, static_cast<scalar_t>(coef / out.sum_s),
                                        static_cast<scalar_t>(coef / out.sum_t));
      }
      stream_fence();
    });
    row_loss.assign(1, weighted_total(wp, row_loss));
  });
  return {at::scalar_tensor(row_loss[0], s.options()), grad};  // in the compute type, cast in the backward
}

at::Tensor softmax_kl_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                               const at::Tensor& inv_temperature, const at::Tensor& row_weight,
                               const at::Tensor& stats_student, const at::Tensor& stats_teacher,
                               c10::string_view mode_name) {
  const Inputs in = prepare(student, teacher, inv_temperature, row_weight, mode_name);
  const Mode mode = in.mode;  // plain locals: lambdas may not capture structured bindings in C++17
  const at::Tensor &s = in.s, &t = in.t, &inv_t = in.inv_t, &w = in.w;
  const int64_t N = in.N, V = in.V;
  const at::Tensor ls = stats_student.to(in.type).contiguous(), lt = stats_teacher.to(in.type).contiguous();
  const double g = grad_loss.item<double>();
  at::Tensor grad = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(in.type, "kd::softmax_kl_backward", [&] {
    const scalar_t *sp = s.const_data_ptr<scalar_t>(), *tp = t.const_data_ptr<scalar_t>();
    const scalar_t *ip = inv_t.const_data_ptr<scalar_t>(), *wp = w.const_data_ptr<scalar_t>();
    const scalar_t *lsp = ls.const_data_ptr<scalar_t>(), *ltp = lt.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_for(V), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const double row_grad = g * wp[r];
        if (row_grad == 0) {
          std::fill(gp + r * V, gp + (r + 1) * V, scalar_t(0));
          continue;
        }
        const double coef = gradient_coef(mode, row_grad, ip[r]);
        row_backward<scalar_t>(sp + r * V, tp + r * V, gp + r * V, V, ip[r], static_cast<scalar_t>(coef),
                               lsp + 2 * r, ltp + 2 * r);
      }
    });
  });
  return grad.to(student.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(kd, CPU, m) {
  m.impl("softmax_kl", &softmax_kl_forward);
  m.impl("softmax_kl_backward", &softmax_kl_backward);
  m.impl("softmax_kl_with_grad", &softmax_kl_with_grad);
}

}  // namespace kd_kernels::cpu
