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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <string_view>
#include <vector>

#include "vec_math.h"

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
};

template <typename scalar_t>
RowForward<scalar_t> row_forward(const scalar_t* s, const scalar_t* t, int64_t V, scalar_t inv_t, Mode mode) {
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
    zs = zs + fast_exp(sv - vms);
    zt = zt + et;
    // A teacher entry of -inf has probability 0; blend its term to 0 (0 * inf would be NaN).
    const Vec term = mode == Mode::kKL ? (tv - vmt) - (sv - vms) : sv - vms;
    acc = at::vec::fmadd(et, Vec::blendv(term, zero, tv == ninf), acc);
  }
  double sum_s = reduce_sum(zs), sum_t = reduce_sum(zt), sum_a = reduce_sum(acc);
  for (int64_t v = body; v < V; ++v) {
    const double sv = static_cast<double>(s[v]) * inv_t, tv = static_cast<double>(t[v]) * inv_t;
    const double et = std::exp(tv - mt);
    sum_s += std::exp(sv - ms);
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
  return {loss, ms, static_cast<scalar_t>(log_sum_s), mt, static_cast<scalar_t>(log_sum_t)};
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_kl_forward(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& inv_temperature,
    const at::Tensor& row_weight, c10::string_view mode_name) {
  check_inputs(student, teacher, inv_temperature, row_weight);
  const Mode mode = parse_mode(std::string_view(mode_name.data(), mode_name.size()));
  const auto type = compute_type(student);
  const at::Tensor s = student.to(type).contiguous(), t = teacher.to(type).contiguous();
  const at::Tensor inv_t = inv_temperature.to(type).contiguous(), w = row_weight.to(type).contiguous();
  const int64_t N = s.size(0), V = s.size(1);
  at::Tensor stats_s = at::zeros({N, 2}, s.options()), stats_t = at::zeros({N, 2}, s.options());
  std::vector<double> row_loss(N, 0.0);
  AT_DISPATCH_FLOATING_TYPES(type, "kd::softmax_kl", [&] {
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
    double total = 0;
    for (int64_t r = 0; r < N; ++r) {
      if (wp[r] != 0) total += static_cast<double>(wp[r]) * row_loss[r];
    }
    row_loss.assign(1, total);
  });
  return {at::scalar_tensor(row_loss[0], s.options()), stats_s, stats_t};
}

at::Tensor softmax_kl_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                               const at::Tensor& inv_temperature, const at::Tensor& row_weight,
                               const at::Tensor& stats_student, const at::Tensor& stats_teacher,
                               c10::string_view mode_name) {
  check_inputs(student, teacher, inv_temperature, row_weight);
  const Mode mode = parse_mode(std::string_view(mode_name.data(), mode_name.size()));
  const auto type = compute_type(student);
  const at::Tensor s = student.to(type).contiguous(), t = teacher.to(type).contiguous();
  const at::Tensor inv_t = inv_temperature.to(type).contiguous(), w = row_weight.to(type).contiguous();
  const at::Tensor ls = stats_student.to(type).contiguous(), lt = stats_teacher.to(type).contiguous();
  const double g = grad_loss.item<double>();
  const int64_t N = s.size(0), V = s.size(1);
  at::Tensor grad = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(type, "kd::softmax_kl_backward", [&] {
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
        // d(T^2 KL)/dz_S = T (p_S - p_T); d(CE)/dz_S = (p_S - p_T) / T
        const double coef = mode == Mode::kKL ? row_grad / ip[r] : row_grad * ip[r];
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
}

}  // namespace kd_kernels::cpu
