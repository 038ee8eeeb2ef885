// Fused CPU operator: quantise to a fixed-point grid, then prune each row (token) to exactly k
// zeros, smallest |code| first, ties by lower index. Bit-identical to the torch formulation in
// passes/transforms/ops.py and sparsity.py (tests compare them). Each row stays in the L1 cache
// for all of its passes, which the compiler vectorises (all but the short scan for the tie
// position). One thread: at::parallel_for would need -fopenmp, i.e. a second OpenMP runtime beside
// the one torch's wheel ships, whose spinning workers would contend with torch's.
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename L>
void rows_kernel(const float* xp, float* op, uint8_t* kp, int64_t rows, int64_t d, float scale,
                 float inv_scale, float qmin, float qmax, bool floor_mode, int64_t k, int num_levels,
                 bool clipped) {
  std::vector<float> codes(d);
  std::vector<L> lv(d);
  const L nan_level = static_cast<L>(num_levels);  // NaN codes rank last, as torch.sort puts them
  int nbits = 0;
  while ((1 << nbits) <= num_levels) ++nbits;  // search range [0, 2^nbits) holds every level
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    float* orow = op + r * d;
    float* c = codes.data();
    L* l = lv.data();
    // 1. codes clamp(round(x * 2^f)) (round half to even, as torch.round, or floor) and their
    //    magnitudes
    if (floor_mode) {
      for (int64_t j = 0; j < d; ++j) {
        float v = std::floor(xr[j] * scale);
        v = v < qmin ? qmin : v;
        v = v > qmax ? qmax : v;
        c[j] = v;
      }
    } else {
      for (int64_t j = 0; j < d; ++j) {
        float v = std::nearbyint(xr[j] * scale);
        v = v < qmin ? qmin : v;
        v = v > qmax ? qmax : v;
        c[j] = v;
      }
    }
    for (int64_t j = 0; j < d; ++j) {
      const float v = c[j];
      l[j] = v == v ? static_cast<L>(std::fabs(v)) : nan_level;
    }
    // 2. t = the k-th smallest level: the largest t with count(level < t) < k (binary lifting)
    // (counts in uint16 lanes: d < 65536)
    int t = 0;
    for (int b = nbits - 1; b >= 0; --b) {
      const L cand = static_cast<L>(t + (1 << b));
      uint16_t cnt = 0;
      for (int64_t j = 0; j < d; ++j) cnt += l[j] < cand;
      if (cnt < k) t = cand;
    }
    const L tl = static_cast<L>(t);
    uint16_t below = 0;
    for (int64_t j = 0; j < d; ++j) below += l[j] < tl;
    // 3. the first `need` entries at level t are pruned: find the index after the need-th one
    //    (tie counts of 64-entry blocks first, vectorised; then entry by entry inside one block)
    const int64_t need = k - below;
    int64_t seen = 0, after = 0;
    for (; after + 64 <= d; after += 64) {
      uint16_t ties = 0;
      for (int64_t j = after; j < after + 64; ++j) ties += l[j] == tl;
      if (seen + ties >= need) break;
      seen += ties;
    }
    for (; seen < need; ++after) seen += l[after] == tl;
    // 4. output codes * keep / 2^f (pruned: code * 0, so -0.0 stays -0.0 as in the reference):
    //    before `after` only levels above t are kept, from `after` on also those at t. Compared
    //    as floats (|code| vs t; NaN compares false, so `!(a <= t)` keeps it), except when t is
    //    the NaN level itself
    if (t == nan_level) {
      for (int64_t j = 0; j < d; ++j) orow[j] = c[j] * (j >= after && l[j] == tl ? inv_scale : 0.0f);
    } else {
      const float ft = static_cast<float>(t);
      for (int64_t j = 0; j < after; ++j) orow[j] = c[j] * (!(std::fabs(c[j]) <= ft) ? inv_scale : 0.0f);
      for (int64_t j = after; j < d; ++j) orow[j] = c[j] * (!(std::fabs(c[j]) < ft) ? inv_scale : 0.0f);
    }
    if (kp != nullptr) {
      uint8_t* krow = kp + r * d;
      for (int64_t j = 0; j < after; ++j) krow[j] = l[j] > tl;
      for (int64_t j = after; j < d; ++j) krow[j] = l[j] >= tl;
      if (clipped) {
        for (int64_t j = 0; j < d; ++j) {
          const float s = xr[j] * scale;
          krow[j] &= static_cast<uint8_t>(s >= qmin && s <= qmax);
        }
      }
    }
  }
}

}  // namespace

// x, out: float32 (R, d) contiguous; keep: uint8 (R, d) contiguous, or an empty tensor for none.
// num_levels = 2^(w-1) + 1 (|code| in [0, 2^(w-1)]); requires num_levels < 65535 and 0 < k < d.
void quantize_prune_rows(at::Tensor x, at::Tensor out, at::Tensor keep, double scale, double qmin, double qmax,
                         bool floor_mode, int64_t k, int64_t num_levels, bool clipped) {
  TORCH_CHECK(x.dtype() == at::kFloat && out.dtype() == at::kFloat && x.is_contiguous() && out.is_contiguous());
  TORCH_CHECK(x.dim() == 2 && out.sizes() == x.sizes(), "x and out must be (rows, d)");
  const int64_t rows = x.size(0), d = x.size(1);
  TORCH_CHECK(0 < k && k < d && d < 65536, "need 0 < k < d < 65536");
  TORCH_CHECK(num_levels >= 2 && num_levels < 65535, "unsupported grid");
  uint8_t* kp = nullptr;
  if (keep.numel() > 0) {
    TORCH_CHECK(keep.dtype() == at::kByte && keep.is_contiguous() && keep.sizes() == x.sizes());
    kp = keep.data_ptr<uint8_t>();
  }
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale), inv = static_cast<float>(1.0 / scale);
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  const int nl = static_cast<int>(num_levels);
  if (nl < 255)
    rows_kernel<uint8_t>(xp, op, kp, rows, d, s, inv, lo, hi, floor_mode, k, nl, clipped);
  else
    rows_kernel<uint16_t>(xp, op, kp, rows, d, s, inv, lo, hi, floor_mode, k, nl, clipped);
}
