// Small vectorised helpers shared by the CPU kernels (at::vec, ISA chosen at build time).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>
#include <type_traits>

namespace kd_kernels::cpu {

using at::vec::Vectorized;

// exp: for float (the hot case) at::vec's exp_u20, a polynomial accurate to 20 ulp that gives 0 below
// log(FLT_MIN) (so exp(-inf) = 0); for double the exact routine.
template <typename scalar_t>
inline Vectorized<scalar_t> fast_exp(const Vectorized<scalar_t>& x) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

template <typename scalar_t>
inline scalar_t reduce_sum(const Vectorized<scalar_t>& v) {
  return at::vec::vec_reduce_all<scalar_t>(
      [](Vectorized<scalar_t>& a, Vectorized<scalar_t>& b) { return a + b; }, v);
}

template <typename scalar_t>
inline scalar_t reduce_max(const Vectorized<scalar_t>& v) {
  return at::vec::vec_reduce_all<scalar_t>(
      [](Vectorized<scalar_t>& a, Vectorized<scalar_t>& b) { return at::vec::maximum(a, b); }, v);
}

template <typename scalar_t>
constexpr scalar_t minus_infinity() {
  return -std::numeric_limits<scalar_t>::infinity();
}

// y[0:n] += alpha * x[0:n]
template <typename scalar_t>
inline void axpy(int64_t n, scalar_t alpha, const scalar_t* x, scalar_t* y) {
  using Vec = Vectorized<scalar_t>;
  const Vec a(alpha);
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    at::vec::fmadd(a, Vec::loadu(x + k), Vec::loadu(y + k)).store(y + k);
  }
  if (k < n) {
    const int64_t rest = n - k;
    at::vec::fmadd(a, Vec::loadu(x + k, rest), Vec::loadu(y + k, rest)).store(y + k, rest);
  }
}

// y[0:n] = alpha * x[0:n]
template <typename scalar_t>
inline void scale_into(int64_t n, scalar_t alpha, const scalar_t* x, scalar_t* y) {
  using Vec = Vectorized<scalar_t>;
  const Vec a(alpha);
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    (a * Vec::loadu(x + k)).store(y + k);
  }
  if (k < n) {
    (a * Vec::loadu(x + k, n - k)).store(y + k, n - k);
  }
}

}  // namespace kd_kernels::cpu
