// The math of every fusedreg op, written once for the CPU and CUDA kernels (as ATen's Lerp.h): the op arguments
// and their builders, the per-element updates (SGD, Adam, Adagrad, FTRL) and penalties, the step-dependent factors
// (Adam's bias corrections, Adagrad's clr), and the group-lasso prox's formulas with its Newton driver and constants.
//
// Everything here is templated on the value type V: a scalar opmath type (float, double; host and device) or
// at::vec::Vectorized<float/double> (CPU only; the overloads of the primitives live in cpu/vec_prims.h). The
// formulas use only these primitives and the arithmetic operators, so the CPU kernels (Vectorized) and the CUDA
// kernels (scalar) run the same code. The order of operations and the rounding points follow
// fusedreg/reference.py (see the docstring of fusedreg/_ops.py):
//   * every scalar factor is formed in double from the op's arguments and rounded once to opmath (make_*);
//   * per-element math is in opmath, one rounding per arithmetic operation as in eager PyTorch (build with
//     floating-point contraction off); the only fused multiply-add is torch.lerp's, as ATen's vectorized lerp.
#ifndef FUSEDREG_MATH_H
#define FUSEDREG_MATH_H

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

// Every function here runs once per element (or vector): a call that is not inlined costs more than the math.
#if defined(__CUDACC__)
#define FR_INLINE __forceinline__
#else
#define FR_INLINE C10_ALWAYS_INLINE
#endif

namespace fusedreg {

// ---------------------------------------------------------------------------------------------------------------
// Scalar primitives. NaN propagates through max like torch.maximum / clamp_min.
C10_HOST_DEVICE FR_INLINE float fr_sqrt(float x) { return ::sqrtf(x); }
C10_HOST_DEVICE FR_INLINE double fr_sqrt(double x) { return ::sqrt(x); }
C10_HOST_DEVICE FR_INLINE float fr_abs(float x) { return ::fabsf(x); }
C10_HOST_DEVICE FR_INLINE double fr_abs(double x) { return ::fabs(x); }
C10_HOST_DEVICE FR_INLINE float fr_neg(float x) { return -x; }
C10_HOST_DEVICE FR_INLINE double fr_neg(double x) { return -x; }
C10_HOST_DEVICE FR_INLINE float fr_pow(float x, float e) { return ::powf(x, e); }
C10_HOST_DEVICE FR_INLINE double fr_pow(double x, double e) { return ::pow(x, e); }
C10_HOST_DEVICE FR_INLINE float fr_fmadd(float a, float b, float c) { return ::fmaf(a, b, c); }
C10_HOST_DEVICE FR_INLINE double fr_fmadd(double a, double b, double c) { return ::fma(a, b, c); }
template <typename T>
C10_HOST_DEVICE FR_INLINE T fr_max_s(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a > b ? a : b)); }
C10_HOST_DEVICE FR_INLINE float fr_max(float a, float b) { return fr_max_s(a, b); }
C10_HOST_DEVICE FR_INLINE double fr_max(double a, double b) { return fr_max_s(a, b); }
// torch.sign: -1, 0 or 1 (0 for NaN).
C10_HOST_DEVICE FR_INLINE float fr_sign(float x) { return float((0.f < x) - (x < 0.f)); }
C10_HOST_DEVICE FR_INLINE double fr_sign(double x) { return double((0.0 < x) - (x < 0.0)); }
// x with the sign bit of s, for x >= 0 (or NaN): sign(s)*x by value, in two bit operations.
C10_HOST_DEVICE FR_INLINE float fr_signed(float x, float s) { return ::copysignf(x, s); }
C10_HOST_DEVICE FR_INLINE double fr_signed(double x, double s) { return ::copysign(x, s); }
// x <= y ? a : b
C10_HOST_DEVICE FR_INLINE float fr_where_le(float x, float y, float a, float b) { return x <= y ? a : b; }
C10_HOST_DEVICE FR_INLINE double fr_where_le(double x, double y, double a, double b) { return x <= y ? a : b; }

// The unit denominator of plain SGD: x / One{} is x (IEEE division by 1 is exact), without the division.
struct One {};
template <typename V>
C10_HOST_DEVICE FR_INLINE V fr_div(V x, One) { return x; }
template <typename V>
C10_HOST_DEVICE FR_INLINE V fr_div(V x, V d) { return x / d; }

// ---------------------------------------------------------------------------------------------------------------
// The op arguments as the schema gives them (double), shared by host and device. Each struct has one builder, its
// parameters in the schema's order (fusedreg/_ops.py ARGS), that sets every field by name: the kernels call the
// builders, never a brace-init, so that no two arguments can be swapped by position.
struct PenaltyArgs {
  double l1;
  bool l1_subgradient, l1_decoupled;
  double l2, l0;
  bool nonneg;
};
struct SgdArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
  PenaltyArgs pen;
};
struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled, amsgrad, maximize;
  PenaltyArgs pen;
};
struct AdagradArgs {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
  PenaltyArgs pen;
};
struct FtrlArgs {
  double lr, lr_power, beta, l2_shrinkage;
  bool maximize;
  PenaltyArgs pen;
};
struct LionArgs {
  double lr, beta1, beta2, weight_decay;
  bool maximize;
  PenaltyArgs pen;
};
struct MuonMomentumArgs {
  double momentum;
  bool nesterov, maximize;
  PenaltyArgs pen;  // only l1 and l1_subgradient: the gradient's preprocessing
};
struct MuonArgs {
  double lr, lr_ratio, weight_decay;
  PenaltyArgs pen;
};

// The elementwise penalties as the schema orders them (fusedreg/_ops.py ELEMENTWISE): the kernels' parameters
// (in csrc/ops.h's signatures) and their names, which every kernel hands on as penalty_args(FUSEDREG_PENALTY_NAMES).
#define FUSEDREG_ELEMENTWISE_PARAMS \
  double l1, bool l1_subgradient, bool l1_decoupled, double l2, double l0, bool nonneg
#define FUSEDREG_PENALTY_NAMES l1, l1_subgradient, l1_decoupled, l2, l0, nonneg

// The one place C++ builds the elementwise penalties.
inline PenaltyArgs penalty_args(FUSEDREG_ELEMENTWISE_PARAMS) {
  PenaltyArgs a;
  a.l1 = l1;
  a.l1_subgradient = l1_subgradient;
  a.l1_decoupled = l1_decoupled;
  a.l2 = l2;
  a.l0 = l0;
  a.nonneg = nonneg;
  return a;
}

inline SgdArgs sgd_args(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                        bool maximize, bool first_step, const PenaltyArgs& pen) {
  SgdArgs a;
  a.lr = lr;
  a.momentum = momentum;
  a.dampening = dampening;
  a.weight_decay = weight_decay;
  a.nesterov = nesterov;
  a.maximize = maximize;
  a.first_step = first_step;
  a.pen = pen;
  return a;
}

inline AdamArgs adam_args(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                          bool amsgrad, bool maximize, const PenaltyArgs& pen) {
  AdamArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.decoupled = decoupled;
  a.amsgrad = amsgrad;
  a.maximize = maximize;
  a.pen = pen;
  return a;
}

inline AdagradArgs adagrad_args(double lr, double lr_decay, double weight_decay, double eps, bool maximize,
                                const PenaltyArgs& pen) {
  AdagradArgs a;
  a.lr = lr;
  a.lr_decay = lr_decay;
  a.weight_decay = weight_decay;
  a.eps = eps;
  a.maximize = maximize;
  a.pen = pen;
  return a;
}

inline FtrlArgs ftrl_args(double lr, double lr_power, double beta, double l2_shrinkage, bool maximize,
                          const PenaltyArgs& pen) {
  FtrlArgs a;
  a.lr = lr;
  a.lr_power = lr_power;
  a.beta = beta;
  a.l2_shrinkage = l2_shrinkage;
  a.maximize = maximize;
  a.pen = pen;
  return a;
}

inline LionArgs lion_args(double lr, double beta1, double beta2, double weight_decay, bool maximize,
                          const PenaltyArgs& pen) {
  LionArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.weight_decay = weight_decay;
  a.maximize = maximize;
  a.pen = pen;
  return a;
}

inline MuonMomentumArgs muon_momentum_args(double momentum, bool nesterov, bool maximize, double l1,
                                           bool l1_subgradient) {
  MuonMomentumArgs a;
  a.momentum = momentum;
  a.nesterov = nesterov;
  a.maximize = maximize;
  a.pen = PenaltyArgs{.l1 = l1, .l1_subgradient = l1_subgradient};
  return a;
}

inline MuonArgs muon_args(double lr, double lr_ratio, double weight_decay, const PenaltyArgs& pen) {
  MuonArgs a;
  a.lr = lr;
  a.lr_ratio = lr_ratio;
  a.weight_decay = weight_decay;
  a.pen = pen;
  return a;
}

// ---------------------------------------------------------------------------------------------------------------
// Scalars rounded once to opmath O.
template <typename O>
struct Penalty {
  O l1;   // opmath(l1): subgradient coefficient
  O thr;  // opmath(step*l1): soft-threshold numerator, divided by denom per element (l1_dec: the threshold)
  O c2;   // opmath(step*l2)
  O c0;   // opmath(2*step*l0)
  bool l1_prox, l1_sub, l1_dec, l2, l0, nonneg;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE Penalty<O> make_penalty(const PenaltyArgs& a, double step) {
  Penalty<O> r;
  r.l1 = O(a.l1);
  r.thr = O(step * a.l1);
  r.c2 = O(step * a.l2);
  r.c0 = O(2 * step * a.l0);
  r.l1_prox = a.l1 != 0 && !a.l1_subgradient;
  r.l1_sub = a.l1 != 0 && a.l1_subgradient;
  r.l1_dec = a.l1_decoupled;
  r.l2 = a.l2 != 0;
  r.l0 = a.l0 != 0;
  r.nonneg = a.nonneg;
  return r;
}

// The penalties most calls leave off (subgradient L1, L0, nonneg): the CPU kernels run a second instantiation of
// their element loop with these fixed off (cpu/loop.h), so they are listed here, next to the fields.
template <typename O>
C10_HOST_DEVICE FR_INLINE bool has_rare(const Penalty<O>& p) { return p.l1_sub || p.l0 || p.nonneg; }
template <typename O>
C10_HOST_DEVICE FR_INLINE void clear_rare(Penalty<O>& p) { p.l1_sub = p.l0 = p.nonneg = false; }

// Gradient preprocessing shared by all ops: unscale -> maximize -> subgradient L1 -> coupled weight decay.
template <typename O>
struct GradPrep {
  O wd;
  bool maximize, has_wd;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE GradPrep<O> make_grad_prep(double weight_decay, bool maximize) {
  GradPrep<O> r;
  r.wd = O(weight_decay);
  r.has_wd = weight_decay != 0;
  r.maximize = maximize;
  return r;
}

// grad_scale == nullptr: no unscaling. `scale` is the grad_scale value already in opmath.
template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V prep_grad(V g, const V& p, const GradPrep<O>& gp, const Penalty<O>& pen, bool has_scale,
                                   O scale) {
  if (has_scale) g = g / V(scale);
  if (gp.maximize) g = fr_neg(g);
  if (pen.l1_sub) g = g + V(pen.l1) * fr_sign(p);
  if (gp.has_wd) g = g + V(gp.wd) * p;
  return g;
}

// Proximal penalties with per-element step step/denom (the step is folded into pen's numerators); decoupled l1
// thresholds by step*l1 alone.
template <typename V, typename O, typename D>
C10_HOST_DEVICE FR_INLINE V prox(V v, const D& denom, const Penalty<O>& pen) {
  if (pen.l1_prox) {
    const V thr = pen.l1_dec ? V(pen.thr) : fr_div(V(pen.thr), denom);
    v = fr_signed(fr_max(fr_abs(v) - thr, V(O(0))), v);
  }
  if (pen.l2) v = v / (V(O(1)) + fr_div(V(pen.c2), denom));
  if (pen.l0) v = fr_where_le(fr_abs(v), fr_sqrt(fr_div(V(pen.c0), denom)), V(O(0)), v);
  if (pen.nonneg) v = fr_max(v, V(O(0)));
  return v;
}

// The per-element denominators (the step of element i is step/denom_i; the metric ops' updates return theirs, which
// the CPU's row group prox takes). Adam: sqrt(v_hat)/sqrt(bc2) + eps;
// Adagrad: sqrt(sum) + eps, which is Adam's form with sqrt(bc2) = 1 (IEEE division by 1 is exact).
template <typename V>
C10_HOST_DEVICE FR_INLINE V adam_denom(V vh, V bc2_sqrt, V eps) { return fr_sqrt(vh) / bc2_sqrt + eps; }
template <typename V>
C10_HOST_DEVICE FR_INLINE V adagrad_denom(V sum, V eps) { return fr_sqrt(sum) + eps; }

// Step-dependent factors, in double, at step t (the counter's new value). Adam's bias corrections 1 - beta^t, and
// sqrt(1 - beta2^t), the divisor of sqrt(v_hat) in adam_denom.
C10_HOST_DEVICE FR_INLINE double bias_correction(double beta, double step) { return 1 - ::pow(beta, step); }
C10_HOST_DEVICE FR_INLINE double bc2_sqrt(double beta2, double step) { return ::sqrt(bias_correction(beta2, step)); }
// Adagrad's decayed lr, clr = lr/(1 + (t-1)*lr_decay): the step of the update and of the prox.
C10_HOST_DEVICE FR_INLINE double adagrad_clr(double lr, double lr_decay, double step) {
  return lr / (1 + (step - 1) * lr_decay);
}

// ---------------------------------------------------------------------------------------------------------------
// SGD: buf = g on the first step, else momentum*buf + (1-dampening)*g; nesterov g += momentum*buf, else g = buf;
// p -= lr*g; prox with step lr.
template <typename O>
struct SgdScalars {
  O lr, momentum, one_minus_damp;
  bool has_momentum, nesterov, first_step;
  GradPrep<O> gp;
  Penalty<O> pen;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE SgdScalars<O> make_sgd(const SgdArgs& a) {
  SgdScalars<O> s;
  s.lr = O(a.lr);
  s.momentum = O(a.momentum);
  s.one_minus_damp = O(1 - a.dampening);
  s.has_momentum = a.momentum != 0;
  s.nesterov = a.nesterov;
  s.first_step = a.first_step;
  s.gp = make_grad_prep<O>(a.weight_decay, a.maximize);
  s.pen = make_penalty<O>(a.pen, a.lr);
  return s;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE void sgd_update(V& p, V g, V& buf, const SgdScalars<O>& s, bool has_scale, O scale) {
  g = prep_grad(g, p, s.gp, s.pen, has_scale, scale);
  if (s.has_momentum) {
    buf = s.first_step ? g : buf * V(s.momentum) + V(s.one_minus_damp) * g;
    g = s.nesterov ? g + V(s.momentum) * buf : buf;
  }
  p = p - V(s.lr) * g;
  p = prox(p, One{}, s.pen);
}

// ---------------------------------------------------------------------------------------------------------------
// Adam / AdamW at step t (already incremented): decoupled p *= 1 - lr*wd; m = lerp(m, g, 1-beta1);
// v = beta2*v + (1-beta2)*g*g; amsgrad vmax = max(vmax, v); denom = sqrt(v)/sqrt(bc2) + eps;
// p -= (lr/bc1) * m/denom; prox with step lr/denom.
template <typename O>
struct AdamScalars {
  O lerp_w, lerp_coeff, beta2, one_minus_beta2, decay, lr_bc1, bc2_sqrt, eps;
  bool lerp_small, decoupled, amsgrad;
  GradPrep<O> gp;
  Penalty<O> pen;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE AdamScalars<O> make_adam(const AdamArgs& a, double step) {
  AdamScalars<O> s;
  s.lerp_w = O(1 - a.beta1);
  // torch.lerp: start + w*(end-start) for |w| < 0.5, else end + (w-1)*(end-start), with w in opmath.
  s.lerp_small = fr_abs(s.lerp_w) < O(0.5);
  s.lerp_coeff = s.lerp_small ? s.lerp_w : s.lerp_w - O(1);
  s.beta2 = O(a.beta2);
  s.one_minus_beta2 = O(1 - a.beta2);
  s.decoupled = a.decoupled && a.weight_decay != 0;
  s.decay = O(1 - a.lr * a.weight_decay);
  s.lr_bc1 = O(a.lr / bias_correction(a.beta1, step));
  s.bc2_sqrt = O(bc2_sqrt(a.beta2, step));
  s.eps = O(a.eps);
  s.amsgrad = a.amsgrad;
  s.gp = make_grad_prep<O>(a.decoupled ? 0.0 : a.weight_decay, a.maximize);
  s.pen = make_penalty<O>(a.pen, a.lr);
  return s;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V adam_update(V& p, V g, V& m, V& v, V& vmax, const AdamScalars<O>& s, bool has_scale,
                                        O scale) {
  g = prep_grad(g, p, s.gp, s.pen, has_scale, scale);
  if (s.decoupled) p = p * V(s.decay);
  m = fr_fmadd(V(s.lerp_coeff), g - m, s.lerp_small ? m : g);
  v = v * V(s.beta2) + V(s.one_minus_beta2) * g * g;
  V vh = v;
  if (s.amsgrad) {
    vmax = fr_max(vmax, v);
    vh = vmax;
  }
  const V denom = adam_denom(vh, V(s.bc2_sqrt), V(s.eps));
  p = p - V(s.lr_bc1) * (m / denom);
  p = prox(p, denom, s.pen);
  return denom;
}

// ---------------------------------------------------------------------------------------------------------------
// Adagrad at step t (already incremented): clr = lr/(1+(t-1)*lr_decay); sum += g*g; denom = sqrt(sum) + eps;
// p -= clr * g/denom; prox with step clr/denom.
template <typename O>
struct AdagradScalars {
  O clr, eps;
  GradPrep<O> gp;
  Penalty<O> pen;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE AdagradScalars<O> make_adagrad(const AdagradArgs& a, double step) {
  AdagradScalars<O> s;
  const double clr = adagrad_clr(a.lr, a.lr_decay, step);
  s.clr = O(clr);
  s.eps = O(a.eps);
  s.gp = make_grad_prep<O>(a.weight_decay, a.maximize);
  s.pen = make_penalty<O>(a.pen, clr);
  return s;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V adagrad_update(V& p, V g, V& sum, const AdagradScalars<O>& s, bool has_scale, O scale) {
  g = prep_grad(g, p, s.gp, s.pen, has_scale, scale);
  sum = sum + g * g;
  const V denom = adagrad_denom(sum, V(s.eps));
  p = p - V(s.clr) * (g / denom);
  p = prox(p, denom, s.pen);
  return denom;
}

// ---------------------------------------------------------------------------------------------------------------
// FTRL-Proximal (TensorFlow's ApplyFtrlV2 with Keras's beta): g_s = g + 2*l2_shrinkage*w; n' = n + g*g;
// sigma = (n'^-p - n^-p)/lr; z = z + (g_s - sigma*w); q = (beta + n'^-p)/lr + 2*l2; w = 0 where |z| <= l1, else
// -(z - sign(z)*l1)/q; n = n'; then l0 and nonneg with the element's step 1/q (prox with denom q), then (group.h,
// group.cu) the group prox in the metric q with step 1 (FTRL's penalties are not scaled by lr). p = lr_power;
// n^-p is sqrt(n) for p = -0.5 (TensorFlow's case) and 1 for p = 0.
enum class FtrlPower : int { kSqrt, kOne, kPow };

template <typename O>
struct FtrlScalars {
  O lr, neg_power, beta, shrink, l1, l2x2;  // shrink: 2*l2_shrinkage; l1: 0 when l1 is a subgradient
  FtrlPower power;
  bool has_shrink;
  GradPrep<O> gp;
  Penalty<O> pen;  // the subgradient l1, l0 and nonneg (the closed form has l1 and l2)
};

template <typename O>
C10_HOST_DEVICE FR_INLINE FtrlScalars<O> make_ftrl(const FtrlArgs& a) {
  FtrlScalars<O> s;
  s.lr = O(a.lr);
  s.neg_power = O(-a.lr_power);
  s.power = a.lr_power == -0.5 ? FtrlPower::kSqrt : (a.lr_power == 0 ? FtrlPower::kOne : FtrlPower::kPow);
  s.beta = O(a.beta);
  s.shrink = O(2 * a.l2_shrinkage);
  s.has_shrink = a.l2_shrinkage != 0;
  s.l1 = O(a.pen.l1_subgradient ? 0.0 : a.pen.l1);
  s.l2x2 = O(2 * a.pen.l2);
  s.gp = make_grad_prep<O>(0.0, a.maximize);
  s.pen = make_penalty<O>(a.pen, 1.0);
  s.pen.l1_prox = false;
  s.pen.l2 = false;
  return s;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V ftrl_power(V n, const FtrlScalars<O>& s) {
  if (s.power == FtrlPower::kSqrt) return fr_sqrt(n);
  if (s.power == FtrlPower::kOne) return V(O(1));
  return fr_pow(n, V(s.neg_power));
}

// q = (beta + n'^-p)/lr + 2*l2 from pn = n'^-p: the closed form's denominator, and the metric of Ftrl's group prox.
template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V ftrl_q(V pn, const FtrlScalars<O>& s) {
  return (V(s.beta) + pn) / V(s.lr) + V(s.l2x2);
}

// q from the new accumulator n' (the group prox reads it back from the state the update has written).
template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V ftrl_denom(V n_new, const FtrlScalars<O>& s) {
  return ftrl_q(ftrl_power(n_new, s), s);
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V ftrl_update(V& p, V g, V& n, V& z, const FtrlScalars<O>& s, bool has_scale, O scale) {
  g = prep_grad(g, p, s.gp, s.pen, has_scale, scale);
  const V gs = s.has_shrink ? g + V(s.shrink) * p : g;
  const V n_new = n + g * g;
  const V pn = ftrl_power(n_new, s);
  const V sigma = (pn - ftrl_power(n, s)) / V(s.lr);
  z = z + (gs - sigma * p);
  const V q = ftrl_q(pn, s);
  const V az = fr_abs(z);
  // The select makes the zeros (also where q is 0, as TensorFlow's); elsewhere |z| - l1 > 0 takes -z's sign.
  p = fr_where_le(az, V(s.l1), V(O(0)), fr_signed(az - V(s.l1), fr_neg(z)) / q);
  n = n_new;
  p = prox(p, q, s.pen);
  return q;
}

// ---------------------------------------------------------------------------------------------------------------
// Lion (lion-pytorch's update_fn): p *= 1 - lr*wd; c = beta1*m + (1-beta1)*g; p -= lr*sign(c);
// m = beta2*m + (1-beta2)*g; prox with step lr (no metric: the group prox is SGD's closed form).
template <typename O>
struct LionScalars {
  O lr, decay, beta1, one_minus_beta1, beta2, one_minus_beta2;
  bool has_decay;
  GradPrep<O> gp;
  Penalty<O> pen;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE LionScalars<O> make_lion(const LionArgs& a) {
  LionScalars<O> s;
  s.lr = O(a.lr);
  s.has_decay = a.weight_decay != 0;
  s.decay = O(1 - a.lr * a.weight_decay);
  s.beta1 = O(a.beta1);
  s.one_minus_beta1 = O(1 - a.beta1);
  s.beta2 = O(a.beta2);
  s.one_minus_beta2 = O(1 - a.beta2);
  s.gp = make_grad_prep<O>(0.0, a.maximize);
  s.pen = make_penalty<O>(a.pen, a.lr);
  return s;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE void lion_update(V& p, V g, V& m, const LionScalars<O>& s, bool has_scale, O scale) {
  g = prep_grad(g, p, s.gp, s.pen, has_scale, scale);
  if (s.has_decay) p = p * V(s.decay);
  const V c = m * V(s.beta1) + V(s.one_minus_beta1) * g;
  p = p - V(s.lr) * fr_sign(c);
  m = m * V(s.beta2) + V(s.one_minus_beta2) * g;
  p = prox(p, One{}, s.pen);
}

// ---------------------------------------------------------------------------------------------------------------
// torch.lerp(start, end, w) for a scalar weight w rounded to opmath, as ATen's vectorized kernel computes it:
// fma(w, end - start, start) for |w| < 0.5, else fma(w - 1, end - start, end).
template <typename O>
struct LerpWeight {
  O coeff;
  bool small;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE LerpWeight<O> make_lerp(double w) {
  LerpWeight<O> r;
  const O wo = O(w);
  r.small = fr_abs(wo) < O(0.5);
  r.coeff = r.small ? wo : wo - O(1);
  return r;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE V fr_lerp(V start, V end, const LerpWeight<O>& w) {
  return fr_fmadd(V(w.coeff), end - start, w.small ? start : end);
}

// Muon (torch.optim.Muon), around the orthogonalization the class runs. muon_momentum_: g after unscaling,
// maximize and subgradient l1; buf = lerp(buf, g, 1 - momentum); nesterov: update = lerp(g, buf, momentum).
template <typename O>
struct MuonMomentumScalars {
  LerpWeight<O> buf_w, upd_w;
  bool nesterov;
  GradPrep<O> gp;
  Penalty<O> pen;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE MuonMomentumScalars<O> make_muon_momentum(const MuonMomentumArgs& a) {
  MuonMomentumScalars<O> s;
  s.buf_w = make_lerp<O>(1 - a.momentum);
  s.upd_w = make_lerp<O>(a.momentum);
  s.nesterov = a.nesterov;
  s.gp = make_grad_prep<O>(0.0, a.maximize);
  s.pen = make_penalty<O>(a.pen, 1.0);
  return s;
}

// p is only read (the sign of subgradient l1).
template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE void muon_momentum_update(const V& p, V g, V& buf, V& update, const MuonMomentumScalars<O>& s,
                                                    bool has_scale, O scale) {
  g = prep_grad(g, p, s.gp, s.pen, has_scale, scale);
  buf = fr_lerp(buf, g, s.buf_w);
  if (s.nesterov) update = fr_lerp(g, buf, s.upd_w);
}

// muon_: u /= grad_scale when given (the class unscales in muon_momentum_ and gives none); p *= 1 - lr*wd;
// p -= (lr*lr_ratio)*u as torch's add_(u, alpha=-lr*lr_ratio) (ATen's vectorized fma(u, alpha, p)); prox with
// step lr and no denominator (SGD's: l1's threshold is lr*l1).
template <typename O>
struct MuonScalars {
  O decay, neg_step;
  bool has_decay;
  GradPrep<O> gp;  // unused by the update (muon_momentum_ prepared the gradient); cpu/loop.h reads its flags
  Penalty<O> pen;
};

template <typename O>
C10_HOST_DEVICE FR_INLINE MuonScalars<O> make_muon(const MuonArgs& a) {
  MuonScalars<O> s;
  s.decay = O(1 - a.lr * a.weight_decay);
  s.has_decay = a.weight_decay != 0;
  s.neg_step = O(-(a.lr * a.lr_ratio));
  s.gp = make_grad_prep<O>(0.0, false);
  s.pen = make_penalty<O>(a.pen, a.lr);
  return s;
}

template <typename V, typename O>
C10_HOST_DEVICE FR_INLINE void muon_update(V& p, V u, const MuonScalars<O>& s, bool has_scale, O scale) {
  if (has_scale) u = u / V(scale);
  if (s.has_decay) p = p * V(s.decay);
  p = fr_fmadd(u, V(s.neg_step), p);
  p = prox(p, One{}, s.pen);
}

// ---------------------------------------------------------------------------------------------------------------
// Group lasso: the prox of group_l1*sqrt(|g|)*||w_g|| over the groups of a param with dim >= 2 (rows p[i] for
// group_dim 0, columns p[:, j] for group_dim 1), applied to the param the op has just written (after the
// elementwise penalties). Group sums and the group factor are in double (a group may be a 10^5-long column); the
// factor is rounded to opmath once and multiplies the element. fusedreg/reference.py's group_prox is the oracle.
//   SGD (no denominator):  w_g = v_g * max(0, 1 - c/||v_g||),  c = step*group_l1*sqrt(|g|)/(1 + step*l2).
//   Adam/Adagrad/Ftrl: the exact prox in the optimizer's own diagonal metric denom/step (what the per-element L1
//   threshold step*l1/denom is for L1; Ftrl: denom q, step 1, its l2 inside q), with
//   a_i = opmath(c)/(denom_i + opmath(step*l2)), c without the l2 term:
//     w_g = 0 where ||v_g/a_g|| <= 1; else w_i = v_i*r/(r + a_i), r the root of sum_i v_i^2/(r + a_i)^2 = 1,
//     found by Newton from max(||v_g|| - max a_g, 0) (monotone from the left, so it cannot overshoot).
//   Adam/Adagrad with l1_decoupled: SGD's closed form with the op's scalar step (lr; Adagrad's clr) and no l2 term.
// Whether a metric op's group prox runs in its metric (group_metric), and the l2 its c takes (group_l2).
C10_HOST_DEVICE FR_INLINE bool group_metric(const PenaltyArgs& a) { return !a.l1_decoupled; }
C10_HOST_DEVICE FR_INLINE double group_l2(const PenaltyArgs& a) { return a.l1_decoupled ? 0.0 : a.l2; }

// The group constant c (before the metric): step*group_l1*sqrt(size), divided by 1 + step*l2 without a metric.
C10_HOST_DEVICE FR_INLINE double group_c(double step, double group_l1, double size, double l2, bool metric) {
  const double c = step * group_l1 * ::sqrt(size);
  return metric ? c : c / (1 + step * l2);
}

// SGD's group factor from the group's sum of squares: max(1 - c/||v||, 0), NaN kept (a NaN group stays NaN).
C10_HOST_DEVICE FR_INLINE double group_factor(double sumsq, double c) {
  const double f = 1 - c / ::sqrt(sumsq);
  return f > 0 || f != f ? f : 0.0;
}

// a_i of the metric prox, rounded as the reference rounds it: opmath(c)/(denom_i [+ opmath(step*l2)]).
template <typename O>
C10_HOST_DEVICE FR_INLINE double group_a(O c, O denom, O c2, bool has_l2) {
  return static_cast<double>(c / (has_l2 ? denom + c2 : denom));
}

// One element's terms of the metric prox's first pass: (v/a)^2 to q, v^2 to nn. V: double, or a vector of doubles
// on the CPU. The caller keeps max a beside them, each in its cheapest form (NaN handling included).
template <typename V>
C10_HOST_DEVICE FR_INLINE void metric_terms(V v, V a, V& q, V& nn) {
  const V x = v / a;
  q += x * x;
  nn += v * v;
}

// The first pass of one group: sum (v/a)^2, sum v^2 and max a (NaN-propagating).
struct MetricSums {
  double q = 0, nn = 0, amax = 0;
  C10_HOST_DEVICE FR_INLINE void add(double v, double a) {
    metric_terms(v, a, q, nn);
    amax = a > amax || a != a ? a : amax;
  }
  C10_HOST_DEVICE FR_INLINE void merge(const MetricSums& o) {
    q += o.q;
    nn += o.nn;
    amax = o.amax > amax || o.amax != o.amax ? o.amax : amax;
  }
};

// The start of Newton's iteration, or -1 for a group the prox zeroes (||v/a|| <= 1; also a NaN group, whose
// non-NaN elements become 0 and NaN elements stay NaN, as in the reference).
C10_HOST_DEVICE FR_INLINE double metric_start(const MetricSums& s) {
  if (!(::sqrt(s.q) > 1)) return -1;
  const double r = ::sqrt(s.nn) - s.amax;
  return r > 0 ? r : 0.0;
}

// fusedreg/reference.py's NEWTON_MAX_ITER and NEWTON_RTOL.
constexpr int kMetricMaxIter = 100;
constexpr double kMetricTol = 4 * 2.220446049250313e-16;  // 4 ulp of 1 in double

// One element's terms of Newton's step on phi(r) = 1/sqrt(sum v^2/(r+a)^2) - 1: sum v^2/(r+a)^2, sum v^2/(r+a)^3.
// V: double, or a vector of doubles on the CPU.
template <typename V>
C10_HOST_DEVICE FR_INLINE void newton_terms(V v, V a, V r, V& s, V& t) {
  const V inv = V(1.0) / (r + a);
  const V w = v * v * inv * inv;
  s += w;
  t += w * inv;
}

// Advances r by one Newton step from the group's terms; false once the step is below the tolerance.
C10_HOST_DEVICE FR_INLINE bool newton_step(double s, double t, double& r) {
  const double dr = s * (::sqrt(s) - 1) / t;
  r = r + (dr > 0 ? dr : 0.0);
  return dr > kMetricTol * r;
}

// Newton's iteration on n groups at once, as the reference runs it: from r[g] = metric_start (r < 0: a zeroed
// group, never stepped) every kept group steps until no group's step is above the tolerance, at most
// kMetricMaxIter times. sums() writes s[g] and t[g], group g's newton_terms summed at the current r.
template <typename Sums>
C10_HOST_DEVICE FR_INLINE void newton_solve(int64_t n, double* r, const double* s, const double* t, const Sums& sums) {
  bool active = false;
  for (int64_t g = 0; g < n; ++g) active = active || r[g] >= 0;
  for (int it = 0; it < kMetricMaxIter && active; ++it) {
    sums();
    active = false;
    for (int64_t g = 0; g < n; ++g)
      if (r[g] >= 0) active = newton_step(s[g], t[g], r[g]) || active;
  }
}

// The factor of element i: r/(r + a_i) in a kept group (r >= 0), 0 in a zeroed one (r < 0).
C10_HOST_DEVICE FR_INLINE double metric_factor(double r, double a) { return r < 0 ? 0.0 : r / (r + a); }

}  // namespace fusedreg

#endif  // FUSEDREG_MATH_H
