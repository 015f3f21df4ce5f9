// repack: canonical (checkpoint) weight forms <-> kernel forms (repack/repack.h).
#include "bindings/bind.h"
#include "repack/repack.h"

#include <pybind11/stl.h>

#include <stdexcept>
#include <utility>

namespace tersor::bindings {

#define TERSOR_INT4_REPACK_ARGS                                                              \
  py::arg("tiles"), py::arg("rows"), py::arg("N"), py::arg("K"), py::arg("Kp"), py::arg("ld"), \
      py::arg("nibbles"), py::arg("nthreads")

void bind_repack(py::module_& m) {
  constexpr const char* kInt4Doc =
      " tiles: uint8 W4Tile codes [Np/16][Kp/8][16][4] (Np = 16 ceil(N/16), Kp >= K a multiple "
      "of 8); rows: uint8 [N][ld], two codes per byte along K (nibbles=True: k even in the low "
      "nibble) or one per byte.";
  auto args = [](addr tiles, addr rows, int64_t N, int64_t K, int64_t Kp, int64_t ld,
                 bool nibbles, int nthreads) {
    return repack::Int4Args{ptr<uint8_t>(tiles), ptr<uint8_t>(rows), N, K, Kp, ld, nibbles,
                            nthreads};
  };
  m.def(
      "int4_rows_to_tiles",
      [args](addr tiles, addr rows, int64_t N, int64_t K, int64_t Kp, int64_t ld, bool nibbles,
             int nthreads) {
        repack::int4_rows_to_tiles(args(tiles, rows, N, K, Kp, ld, nibbles, nthreads));
      },
      TERSOR_INT4_REPACK_ARGS, nogil(),
      (std::string("Canonical int4 rows -> kernel tiles; codes past K and rows past N are 0.") +
       kInt4Doc)
          .c_str());
  m.def(
      "int4_tiles_to_rows",
      [args](addr tiles, addr rows, int64_t N, int64_t K, int64_t Kp, int64_t ld, bool nibbles,
             int nthreads) {
        repack::int4_tiles_to_rows(args(tiles, rows, N, K, Kp, ld, nibbles, nthreads));
      },
      TERSOR_INT4_REPACK_ARGS, nogil(),
      (std::string("Kernel int4 tiles -> canonical rows over k < K (an odd K's last high nibble "
                   "is 0).") +
       kInt4Doc)
          .c_str());

  constexpr const char* kInt8Doc =
      " tiles: int8 W8Tile blocks [Np/16][Kp/4][16][4] (Np = 16 ceil(N/16), Kp = 4 ceil(K/4)); "
      "rows: int8 [N][ld].";
  m.def(
      "int8_rows_to_tiles",
      [](addr tiles, addr colsum, addr rows, int64_t N, int64_t K, int64_t Kp, int64_t ld,
         int nthreads) {
        const auto r = repack::int8_rows_to_tiles(repack::Int8Args{
            ptr<int8_t>(tiles), ptr<int32_t>(colsum), ptr<int8_t>(rows), N, K, Kp, ld, nthreads});
        return std::make_pair(r.min, r.max);
      },
      py::arg("tiles"), py::arg("colsum"), py::arg("rows"), py::arg("N"), py::arg("K"),
      py::arg("Kp"), py::arg("ld"), py::arg("nthreads"), nogil(),
      (std::string("Canonical int8 rows -> kernel tiles (zeros past K and N) and colsum int32 "
                   "[Np] (each row's sum); returns the codes' (min, max), (0, 0) when empty.") +
       kInt8Doc)
          .c_str());
  m.def(
      "int8_tiles_to_rows",
      [](addr tiles, addr rows, int64_t N, int64_t K, int64_t Kp, int64_t ld, int nthreads) {
        repack::int8_tiles_to_rows(repack::Int8Args{ptr<int8_t>(tiles), nullptr,
                                                    ptr<int8_t>(rows), N, K, Kp, ld, nthreads});
      },
      py::arg("tiles"), py::arg("rows"), py::arg("N"), py::arg("K"), py::arg("Kp"), py::arg("ld"),
      py::arg("nthreads"), nogil(),
      (std::string("Kernel int8 tiles -> canonical rows over k < K.") + kInt8Doc).c_str());
  m.def(
      "gather_columns",
      [](addr x, int64_t M, int64_t K, int64_t ldx, addr perm, addr y, int64_t ldy, int bytes,
         int nthreads) {
        if (bytes != 2 && bytes != 4)
          throw std::invalid_argument("gather_columns: bytes must be 2 or 4");
        repack::gather_columns(ptr<const void>(x), M, K, ldx, ptr<const int64_t>(perm),
                               ptr<void>(y), ldy, bytes, nthreads);
      },
      py::arg("x"), py::arg("M"), py::arg("K"), py::arg("ldx"), py::arg("perm"), py::arg("y"),
      py::arg("ldy"), py::arg("bytes"), py::arg("nthreads"), nogil(),
      "y[m][k] = x[m][perm[k]]: M rows of K elements of `bytes` (2 or 4) each, row strides "
      "ldx / ldy in elements; perm int64 [K], every index in [0, K) (not checked here).");

  constexpr const char* k24Doc =
      " fp32 tiles: values [Np/16][G][2][16] fp32, meta [Np/16][G4][16] uint8 (G = ceil(K/4), "
      "G4 = 4 ceil(G/4)); int8 tiles: values [Np/16][K8][16][4] int8, meta [Np/16][K8][16] "
      "uint8 (K8 = ceil(G/2)); padding groups and rows hold values 0 at positions (0, 1).";
  m.def(
      "s24_prune_to_tiles",
      [](addr rows, addr score, int64_t ld, int64_t ld_score, addr values, addr meta, int64_t N,
         int64_t K, bool prune, int nthreads) {
        const auto r = repack::s24_prune_to_tiles(repack::S24PruneArgs{
            ptr<const float>(rows), ptr<const float>(score), ld, ld_score, ptr<float>(values),
            ptr<uint8_t>(meta), N, K, prune, nthreads});
        return std::make_pair(r.nonfinite, r.dense);
      },
      py::arg("rows"), py::arg("score"), py::arg("ld"), py::arg("ld_score"), py::arg("values"),
      py::arg("meta"), py::arg("N"), py::arg("K"), py::arg("prune"), py::arg("nthreads"),
      nogil(),
      (std::string("Dense fp32 rows [N][ld] -> 2:4 fp32 tiles. prune: groups of 3-4 nonzeros "
                   "keep the 2 of largest score (score fp32 [N][ld_score], or 0: |rows|; ties "
                   "to the lower slot, NaN highest). Returns (first row holding NaN / Inf, "
                   "first row left with > 2 nonzeros in a group), -1 for none.") +
       k24Doc)
          .c_str());
  m.def(
      "s24_tiles_to_int8",
      [](addr values, addr meta, addr values8, addr meta8, addr colsum, addr scale, int64_t N,
         int64_t K, int nthreads) {
        return repack::s24_tiles_to_int8(repack::S24Int8Args{
            ptr<const float>(values), ptr<const uint8_t>(meta), ptr<int8_t>(values8),
            ptr<uint8_t>(meta8), ptr<int32_t>(colsum), ptr<float>(scale), N, K, nthreads});
      },
      py::arg("values"), py::arg("meta"), py::arg("values8"), py::arg("meta8"),
      py::arg("colsum"), py::arg("scale"), py::arg("N"), py::arg("K"), py::arg("nthreads"),
      nogil(),
      (std::string("2:4 fp32 tiles -> int8 tiles: per-row symmetric codes in [-127, 127] "
                   "(scale fp32 [Np] = amax / 127, colsum int32 [Np] the codes' sums), each "
                   "group's meta from its nonzero codes. Returns the first row holding NaN / "
                   "Inf, or -1.") +
       k24Doc)
          .c_str());
}

}  // namespace tersor::bindings
