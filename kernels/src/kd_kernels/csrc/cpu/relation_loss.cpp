// relation_loss on CPU: distances between the row-softmaxed relation matrices R = scale * X Y^T
// of student and teacher, per head, without ever holding an [L, L] matrix.
//
// Work is split over (batch, head). For each query row the keys are visited tile by tile: the
// tile's relations are computed from packed keys, and an online log-sum-exp (FlashAttention's
// scheme, accumulating E_{p_T}[(R_T - max_T) - (R_S - max_S)] where FlashAttention accumulates
// values; centred, so relations that share a large offset do not cancel catastrophically)
// carries the row's statistics across tiles. The forward pass saves (max, log sum exp(R - max))
// per row and side; the backward pass recomputes each tile from them and writes every gradient
// row once. Padded keys and the tail of the last tile are blended out, never multiplied by a 0/1
// mask, so whatever they hold (huge values, inf, NaN) reaches neither the loss nor a gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <string_view>
#include <vector>

#include "vec_math.h"

namespace kd_kernels::cpu {
namespace {

enum class Kind { kKL, kCE, kMSE };

Kind parse_kind(c10::string_view name) {
  const std::string_view kind(name.data(), name.size());
  TORCH_CHECK(kind == "kl" || kind == "ce" || kind == "mse",
              "relation_loss: kind must be 'kl', 'ce' or 'mse', got ", kind);
  return kind == "kl" ? Kind::kKL : (kind == "ce" ? Kind::kCE : Kind::kMSE);
}

template <typename scalar_t>
constexpr int64_t tile_size() {
  return 8 * Vectorized<scalar_t>::size();  // eight independent accumulators per relation row
}

// Keys of one (batch, head) packed transposed, [d, Lp], so a relation row is vectorised over keys.
template <typename scalar_t>
void pack_keys(const scalar_t* y, int64_t L, int64_t d, int64_t Lp, scalar_t* packed) {
  std::fill(packed, packed + d * Lp, scalar_t(0));
  for (int64_t j = 0; j < L; ++j) {
    for (int64_t k = 0; k < d; ++k) {
      packed[k * Lp + j] = y[j * d + k];
    }
  }
}

// out[0:tile] = scale * sum_k x[k] * packed[k, j0:j0+tile]
template <typename scalar_t>
inline void relation_tile(const scalar_t* x, const scalar_t* packed, int64_t d, int64_t Lp, int64_t j0,
                          scalar_t scale, scalar_t* out) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size();
  Vec acc[8] = {Vec(0), Vec(0), Vec(0), Vec(0), Vec(0), Vec(0), Vec(0), Vec(0)};
  for (int64_t k = 0; k < d; ++k) {
    const Vec xk(x[k]);
    const scalar_t* row = packed + k * Lp + j0;
    for (int u = 0; u < 8; ++u) {
      acc[u] = at::vec::fmadd(xk, Vec::loadu(row + u * n), acc[u]);
    }
  }
  const Vec vscale(scale);
  for (int u = 0; u < 8; ++u) {
    (acc[u] * vscale).store(out + u * n);
  }
}

template <typename scalar_t>
struct Problem {
  const scalar_t *xs, *ys, *xt, *yt, *key_mask, *row_weight;
  int64_t B, H, L, ds, dt;
  scalar_t scale_s, scale_t;
  Kind kind;
  int64_t Lp() const { return (L + tile_size<scalar_t>() - 1) / tile_size<scalar_t>() * tile_size<scalar_t>(); }
};

// Per-thread buffers of one (batch, head): packed keys of both sides and the padded key mask.
template <typename scalar_t>
struct HeadBuffers {
  std::vector<scalar_t> keys_s, keys_t, mask;
  std::vector<char> tile_has_keys;

  void load(const Problem<scalar_t>& p, int64_t b, int64_t bh) {
    const int64_t Lp = p.Lp(), tile = tile_size<scalar_t>();
    keys_s.resize(p.ds * Lp);
    keys_t.resize(p.dt * Lp);
    pack_keys(p.ys + bh * p.L * p.ds, p.L, p.ds, Lp, keys_s.data());
    pack_keys(p.yt + bh * p.L * p.dt, p.L, p.dt, Lp, keys_t.data());
    mask.assign(Lp, scalar_t(0));
    tile_has_keys.assign(Lp / tile, 0);
    for (int64_t j = 0; j < p.L; ++j) {
      mask[j] = p.key_mask[b * p.L + j] != 0 ? scalar_t(1) : scalar_t(0);
      if (mask[j] != 0) tile_has_keys[j / tile] = 1;
    }
  }
};

// Online statistics of one relation row across key tiles.
template <typename scalar_t>
struct RowState {
  scalar_t max_s = minus_infinity<scalar_t>(), max_t = minus_infinity<scalar_t>();
  double sum_s = 0, sum_t = 0, acc = 0;

  static double rescale(scalar_t old_max, scalar_t new_max) {
    return old_max == minus_infinity<scalar_t>() ? 0.0 : std::exp(static_cast<double>(old_max - new_max));
  }

  // Add one tile of relations r_s, r_t (masked keys already at -inf). ``acc`` holds
  // sum exp(R_T - max_t) * term with the term centred on the current maxima:
  // (R_T - max_t) - (R_S - max_s) for kl, R_S - max_s for ce.
  void update(const scalar_t* r_s, const scalar_t* r_t, Kind kind) {
    using Vec = Vectorized<scalar_t>;
    constexpr int64_t n = Vec::size(), tile = tile_size<scalar_t>();
    Vec vmax_s(minus_infinity<scalar_t>()), vmax_t(minus_infinity<scalar_t>());
    for (int64_t j = 0; j < tile; j += n) {
      vmax_s = at::vec::maximum(vmax_s, Vec::loadu(r_s + j));
      vmax_t = at::vec::maximum(vmax_t, Vec::loadu(r_t + j));
    }
    const scalar_t new_s = std::max(max_s, reduce_max(vmax_s)), new_t = std::max(max_t, reduce_max(vmax_t));
    const Vec ms(new_s), mt(new_t), zero(0), ninf(minus_infinity<scalar_t>());
    Vec zs(0), zt(0), a(0);
    for (int64_t j = 0; j < tile; j += n) {
      const Vec s = Vec::loadu(r_s + j), t = Vec::loadu(r_t + j);
      const Vec et = fast_exp(t - mt);
      zs = zs + fast_exp(s - ms);
      zt = zt + et;
      const Vec term = kind == Kind::kKL ? (t - mt) - (s - ms) : s - ms;
      a = at::vec::fmadd(et, Vec::blendv(term, zero, t == ninf), a);
    }
    const double carry_s = rescale(max_s, new_s), carry_t = rescale(max_t, new_t);
    if (max_t != minus_infinity<scalar_t>()) {
      // Re-centre the earlier terms on the new maxima before rescaling them.
      const double shift_s = static_cast<double>(max_s) - new_s, shift_t = static_cast<double>(max_t) - new_t;
      acc = (acc + (kind == Kind::kKL ? shift_t - shift_s : shift_s) * sum_t) * carry_t;
    }
    sum_s = sum_s * carry_s + reduce_sum(zs);
    sum_t = sum_t * carry_t + reduce_sum(zt);
    acc += reduce_sum(a);
    max_s = new_s;
    max_t = new_t;
  }
};

template <typename scalar_t>
void mask_tile(scalar_t* r, const scalar_t* mask) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size(), tile = tile_size<scalar_t>();
  const Vec zero(0), ninf(minus_infinity<scalar_t>());
  for (int64_t j = 0; j < tile; j += n) {
    Vec::blendv(Vec::loadu(r + j), ninf, Vec::loadu(mask + j) == zero).store(r + j);
  }
}

template <typename scalar_t>
scalar_t squared_distance(const scalar_t* r_s, const scalar_t* r_t, const scalar_t* mask) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size(), tile = tile_size<scalar_t>();
  const Vec zero(0);
  Vec acc(0);
  for (int64_t j = 0; j < tile; j += n) {
    const Vec diff = Vec::blendv(Vec::loadu(r_s + j) - Vec::loadu(r_t + j), zero, Vec::loadu(mask + j) == zero);
    acc = at::vec::fmadd(diff, diff, acc);
  }
  return reduce_sum(acc);
}

template <typename scalar_t>
double forward_head(const Problem<scalar_t>& p, int64_t bh, HeadBuffers<scalar_t>& buf, scalar_t* stats_s,
                    scalar_t* stats_t) {
  const int64_t b = bh / p.H, Lp = p.Lp(), tile = tile_size<scalar_t>();
  buf.load(p, b, bh);
  alignas(64) scalar_t r_s[tile_size<scalar_t>()], r_t[tile_size<scalar_t>()];
  double total = 0;
  for (int64_t i = 0; i < p.L; ++i) {
    const scalar_t weight = p.row_weight[b * p.L + i];
    if (weight == 0) continue;
    const scalar_t* x_s = p.xs + (bh * p.L + i) * p.ds;
    const scalar_t* x_t = p.xt + (bh * p.L + i) * p.dt;
    RowState<scalar_t> row;
    double squares = 0;
    for (int64_t j0 = 0; j0 < Lp; j0 += tile) {
      if (!buf.tile_has_keys[j0 / tile]) continue;
      relation_tile(x_s, buf.keys_s.data(), p.ds, Lp, j0, p.scale_s, r_s);
      relation_tile(x_t, buf.keys_t.data(), p.dt, Lp, j0, p.scale_t, r_t);
      if (p.kind == Kind::kMSE) {
        squares += squared_distance(r_s, r_t, buf.mask.data() + j0);
        continue;
      }
      mask_tile(r_s, buf.mask.data() + j0);
      mask_tile(r_t, buf.mask.data() + j0);
      row.update(r_s, r_t, p.kind);
    }
    double value = squares;
    if (p.kind != Kind::kMSE) {
      const double log_sum_s = std::log(row.sum_s), log_sum_t = std::log(row.sum_t);
      const double expectation = row.acc / row.sum_t;
      value = p.kind == Kind::kKL ? expectation - log_sum_t + log_sum_s : log_sum_s - expectation;
      const int64_t at = 2 * (bh * p.L + i);
      stats_s[at] = row.max_s;
      stats_s[at + 1] = static_cast<scalar_t>(log_sum_s);
      stats_t[at] = row.max_t;
      stats_t[at + 1] = static_cast<scalar_t>(log_sum_t);
    }
    total += static_cast<double>(weight) * value;
  }
  return total;
}

template <typename scalar_t>
void backward_head(const Problem<scalar_t>& p, int64_t bh, double grad_loss, HeadBuffers<scalar_t>& buf,
                   const scalar_t* stats_s, const scalar_t* stats_t, scalar_t* grad_xs, scalar_t* grad_ys) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t n = Vec::size(), tile = tile_size<scalar_t>();
  const int64_t b = bh / p.H, Lp = p.Lp();
  buf.load(p, b, bh);
  const scalar_t* xs = p.xs + bh * p.L * p.ds;
  const scalar_t* ys = p.ys + bh * p.L * p.ds;
  std::vector<scalar_t> d_keys(p.L * p.ds, scalar_t(0)), d_row(p.ds);
  alignas(64) scalar_t r_s[tile_size<scalar_t>()], r_t[tile_size<scalar_t>()];
  for (int64_t i = 0; i < p.L; ++i) {
    const scalar_t g = static_cast<scalar_t>(grad_loss * p.row_weight[b * p.L + i]);
    scalar_t* out_row = grad_xs + (bh * p.L + i) * p.ds;
    if (g == 0) {
      std::fill(out_row, out_row + p.ds, scalar_t(0));
      continue;
    }
    const scalar_t* x_s = xs + i * p.ds;
    const scalar_t* x_t = p.xt + (bh * p.L + i) * p.dt;
    std::fill(d_row.begin(), d_row.end(), scalar_t(0));
    const int64_t at = 2 * (bh * p.L + i);
    const Vec vg(g), two_g(2 * g), ms(stats_s[at]), ls(stats_s[at + 1]), mt(stats_t[at]), lt(stats_t[at + 1]);
    const Vec zero(0);
    for (int64_t j0 = 0; j0 < Lp; j0 += tile) {
      if (!buf.tile_has_keys[j0 / tile]) continue;
      relation_tile(x_s, buf.keys_s.data(), p.ds, Lp, j0, p.scale_s, r_s);
      relation_tile(x_t, buf.keys_t.data(), p.dt, Lp, j0, p.scale_t, r_t);
      // r_s becomes dLoss/dR_S for this tile: g (p_S - p_T) for kl/ce, 2 g (R_S - R_T) for mse.
      for (int64_t j = 0; j < tile; j += n) {
        const Vec s = Vec::loadu(r_s + j), t = Vec::loadu(r_t + j);
        const Vec padded = Vec::loadu(buf.mask.data() + j0 + j) == zero;
        const Vec d = p.kind == Kind::kMSE ? two_g * (s - t) : vg * (fast_exp((s - ms) - ls) - fast_exp((t - mt) - lt));
        Vec::blendv(d, zero, padded).store(r_s + j);  // a blend: d may be inf or NaN at a padded key
      }
      const int64_t end = std::min(tile, p.L - j0);
      for (int64_t j = 0; j < end; ++j) {
        const scalar_t d = r_s[j];
        if (d == 0) continue;
        axpy(p.ds, d, ys + (j0 + j) * p.ds, d_row.data());
        axpy(p.ds, d, x_s, d_keys.data() + (j0 + j) * p.ds);
      }
    }
    scale_into(p.ds, p.scale_s, d_row.data(), out_row);
  }
  scale_into(p.L * p.ds, p.scale_s, d_keys.data(), grad_ys + bh * p.L * p.ds);
}

at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt, const at::Tensor& yt,
                  const at::Tensor& key_mask, const at::Tensor& row_weight) {
  TORCH_CHECK(xs.dim() == 4 && xs.sizes() == ys.sizes(), "relation_loss: xs ", xs.sizes(), " and ys ",
              ys.sizes(), " must be the same [B, H, L, d_s]");
  TORCH_CHECK(xt.dim() == 4 && xt.sizes() == yt.sizes(), "relation_loss: xt ", xt.sizes(), " and yt ",
              yt.sizes(), " must be the same [B, H, L, d_t]");
  TORCH_CHECK(xs.sizes().slice(0, 3) == xt.sizes().slice(0, 3), "relation_loss: student ", xs.sizes(),
              " and teacher ", xt.sizes(), " must agree on [B, H, L]");
  TORCH_CHECK(key_mask.sizes() == row_weight.sizes() && key_mask.dim() == 2 && key_mask.size(0) == xs.size(0) &&
                  key_mask.size(1) == xs.size(2),
              "relation_loss: key_mask and row_weight must be [B, L]");
}

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt,
                               const at::Tensor& yt, const at::Tensor& key_mask, const at::Tensor& row_weight,
                               double scale_s, double scale_t, Kind kind) {
  return {xs.const_data_ptr<scalar_t>(), ys.const_data_ptr<scalar_t>(), xt.const_data_ptr<scalar_t>(),
          yt.const_data_ptr<scalar_t>(), key_mask.const_data_ptr<scalar_t>(), row_weight.const_data_ptr<scalar_t>(),
          xs.size(0), xs.size(1), xs.size(2), xs.size(3), xt.size(3),
          static_cast<scalar_t>(scale_s), static_cast<scalar_t>(scale_t), kind};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relation_loss_forward(
    const at::Tensor& xs_in, const at::Tensor& ys_in, const at::Tensor& xt_in, const at::Tensor& yt_in,
    const at::Tensor& key_mask_in, const at::Tensor& row_weight_in, double scale_s, double scale_t,
    c10::string_view kind_name) {
  check_inputs(xs_in, ys_in, xt_in, yt_in, key_mask_in, row_weight_in);
  const Kind kind = parse_kind(kind_name);
  const auto type = compute_type(xs_in);
  const auto prep = [&](const at::Tensor& x) { return x.to(type).contiguous(); };
  const at::Tensor xs = prep(xs_in), ys = prep(ys_in), xt = prep(xt_in), yt = prep(yt_in);
  const at::Tensor key_mask = prep(key_mask_in), row_weight = prep(row_weight_in);
  const int64_t BH = xs.size(0) * xs.size(1);
  at::Tensor stats_s = at::zeros({xs.size(0), xs.size(1), xs.size(2), 2}, xs.options());
  at::Tensor stats_t = at::zeros({xs.size(0), xs.size(1), xs.size(2), 2}, xs.options());
  std::vector<double> per_head(BH, 0.0);
  AT_DISPATCH_FLOATING_TYPES(type, "kd::relation_loss", [&] {
    const auto problem = make_problem<scalar_t>(xs, ys, xt, yt, key_mask, row_weight, scale_s, scale_t, kind);
    scalar_t *ss = stats_s.mutable_data_ptr<scalar_t>(), *st = stats_t.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
      HeadBuffers<scalar_t> buffers;
      for (int64_t bh = begin; bh < end; ++bh) per_head[bh] = forward_head(problem, bh, buffers, ss, st);
    });
  });
  double total = 0;
  for (double value : per_head) total += value;  // in head order: independent of the thread count
  return {at::scalar_tensor(total, xs.options()), stats_s, stats_t};
}

std::tuple<at::Tensor, at::Tensor> relation_loss_backward(
    const at::Tensor& grad_loss, const at::Tensor& xs_in, const at::Tensor& ys_in, const at::Tensor& xt_in,
    const at::Tensor& yt_in, const at::Tensor& key_mask_in, const at::Tensor& row_weight_in,
    const at::Tensor& stats_s_in, const at::Tensor& stats_t_in, double scale_s, double scale_t,
    c10::string_view kind_name) {
  check_inputs(xs_in, ys_in, xt_in, yt_in, key_mask_in, row_weight_in);
  const Kind kind = parse_kind(kind_name);
  const auto type = compute_type(xs_in);
  const auto prep = [&](const at::Tensor& x) { return x.to(type).contiguous(); };
  const at::Tensor xs = prep(xs_in), ys = prep(ys_in), xt = prep(xt_in), yt = prep(yt_in);
  const at::Tensor key_mask = prep(key_mask_in), row_weight = prep(row_weight_in);
  const at::Tensor stats_s = prep(stats_s_in), stats_t = prep(stats_t_in);
  const double g = grad_loss.item<double>();
  const int64_t BH = xs.size(0) * xs.size(1);
  at::Tensor grad_xs = at::empty_like(xs), grad_ys = at::empty_like(ys);
  AT_DISPATCH_FLOATING_TYPES(type, "kd::relation_loss_backward", [&] {
    const auto problem = make_problem<scalar_t>(xs, ys, xt, yt, key_mask, row_weight, scale_s, scale_t, kind);
    const scalar_t *ss = stats_s.const_data_ptr<scalar_t>(), *st = stats_t.const_data_ptr<scalar_t>();
    scalar_t *gx = grad_xs.mutable_data_ptr<scalar_t>(), *gy = grad_ys.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
      HeadBuffers<scalar_t> buffers;
      for (int64_t bh = begin; bh < end; ++bh) backward_head(problem, bh, g, buffers, ss, st, gx, gy);
    });
  });
  return {grad_xs.to(xs_in.scalar_type()), grad_ys.to(ys_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(kd, CPU, m) {
  m.impl("relation_loss", &relation_loss_forward);
  m.impl("relation_loss_backward", &relation_loss_backward);
}

}  // namespace kd_kernels::cpu
