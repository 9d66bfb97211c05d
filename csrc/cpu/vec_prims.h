// The primitives of fusedreg_math.h for at::vec::Vectorized (CPU only). Include this header before
// fusedreg_math.h: the math templates call the primitives unqualified, so these overloads must be declared first.
#pragma once

#ifdef FUSEDREG_MATH_H
#error "include cpu/vec_prims.h before fusedreg_math.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace fusedreg {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_sqrt(const Vec<T>& x) { return x.sqrt(); }
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_abs(const Vec<T>& x) { return x.abs(); }
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_neg(const Vec<T>& x) { return x.neg(); }
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_pow(const Vec<T>& x, const Vec<T>& e) { return x.pow(e); }
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) { return at::vec::fmadd(a, b, c); }
// NaN-propagating, like torch.maximum.
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_max(const Vec<T>& a, const Vec<T>& b) { return at::vec::maximum(a, b); }
// torch.sign's vectorized form: (0 < x) - (x < 0).
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_sign(const Vec<T>& x) {
  const Vec<T> zero(T(0)), one(T(1));
  return Vec<T>::blendv(zero, one, zero < x) - Vec<T>::blendv(zero, one, x < zero);
}
// x with the sign bit of s (x >= 0 or NaN).
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_signed(const Vec<T>& x, const Vec<T>& s) {
  return x | (s & Vec<T>(T(-0.0)));
}
// x <= y ? a : b
template <typename T>
C10_ALWAYS_INLINE Vec<T> fr_where_le(const Vec<T>& x, const Vec<T>& y, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, x <= y);
}

}  // namespace fusedreg

#include "../fusedreg_math.h"
