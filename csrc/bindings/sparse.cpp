// The sparse families: spmm_24 (2:4), spmm_csr (unstructured), spmm_block (block-sparse).
#include "bindings/bind.h"
#include "bindings/int_call.h"
#include "spmm_24/spmm_24.h"
#include "spmm_block/spmm_block.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::bindings {

void bind_spmm_24(py::module_& m) {
  def_int_function(
      m, "spmm_24",
      +[](addr x, int64_t M, int64_t K, int64_t ldx, addr values, addr meta, int64_t N, addr bias,
          addr y, int64_t ldy, int nthreads) {
        spmm_24::run({ptr<const float>(x), M, K, ldx, ptr<const float>(values),
                      ptr<const uint8_t>(meta), N, ptr<const float>(bias), ptr<float>(y), ldy,
                      nthreads});
      },
      "x, M, K, ldx, values, meta, N, bias, y, ldy, nthreads",
      "y[M, N] = x[M, K] W^T + bias, W 2:4 sparse with fp32 values [Np/16][K/4][2][16] and "
      "meta uint8 [Np/16][K4p][16] (formats/sparse24.py pack_24).");
  def_int_function(
      m, "spmm_24_w8a8",
      +[](addr x, int64_t M, int64_t K, int64_t ldx, addr values, addr meta, addr colsum,
          addr w_scale, int64_t N, addr bias, addr y, int64_t ldy, int nthreads, addr row_amax) {
        spmm_24::run_w8a8({ptr<const float>(x), M, K, ldx, ptr<const int8_t>(values),
                           ptr<const uint8_t>(meta), ptr<const int32_t>(colsum),
                           ptr<const float>(w_scale), N, ptr<const float>(bias), ptr<float>(y),
                           ldy, nthreads, ptr<const float>(row_amax)});
      },
      "x, M, K, ldx, values, meta, colsum, w_scale, N, bias, y, ldy, nthreads, row_amax=0",
      "2:4 with int8 values [Np/16][K8][16][4], meta uint8 [Np/16][K8][16], colsum int32 / "
      "w_scale fp32 [Np] (formats/sparse24.py pack_24_int8); x quantized per row to int8 "
      "(row_amax: 0 or fp32 [M] floors under the rows' amax, quant_act.h).");
}

template <bool int8>
void spmm_csr_call(addr x, int64_t M, int64_t K, int64_t ldx, int64_t N, addr rowptr, addr col,
                   addr val, addr ell_val, addr ell_col, addr ell_cnt, addr ell_off, addr perm,
                   addr w_scale, addr bias, addr y, int64_t ldy, int nthreads, addr row_amax) {
  if (int8)
    spmm_csr::run_w8a8({ptr<const float>(x), M, K, ldx, N, ptr<const int64_t>(rowptr),
                        ptr<const int32_t>(col), ptr<const int8_t>(val),
                        ptr<const int8_t>(ell_val), ptr<const uint16_t>(ell_col),
                        ptr<const uint16_t>(ell_cnt), ptr<const int64_t>(ell_off),
                        ptr<const int32_t>(perm), ptr<const float>(w_scale),
                        ptr<const float>(bias), ptr<float>(y), ldy, nthreads,
                        ptr<const float>(row_amax)});
  else
    spmm_csr::run({ptr<const float>(x), M, K, ldx, N, ptr<const int64_t>(rowptr),
                   ptr<const int32_t>(col), ptr<const float>(val), ptr<const float>(ell_val),
                   ptr<const uint16_t>(ell_col), ptr<const uint16_t>(ell_cnt),
                   ptr<const int64_t>(ell_off), ptr<const int32_t>(perm), ptr<const float>(bias),
                   ptr<float>(y), ldy, nthreads});
}

void bind_spmm_csr(py::module_& m) {
  constexpr const char* args =
      "x, M, K, ldx, N, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, w_scale, "
      "bias, y, ldy, nthreads, row_amax=0";
  def_int_function(
      m, "spmm_csr", &spmm_csr_call<false>, args,
      "y[M, N] = x[M, K] W^T + bias, W unstructured sparse with fp32 values: CSR rowptr int64 "
      "[N + 1], col int32 / val [nnz], and the ELL blocks ell_val [steps][16], ell_col / "
      "ell_cnt uint16, ell_off int64, perm int32 [Np] (formats/sparse_csr.py); w_scale 0.");
  def_int_function(
      m, "spmm_csr_w8a8", &spmm_csr_call<true>, args,
      "spmm_csr with int8 values and per-channel w_scale fp32 [N]; x quantized per row "
      "(row_amax: 0 or fp32 [M] floors under the rows' amax, quant_act.h; unused by spmm_csr).");
}

template <bool int8>
void spmm_block_call(addr x, int64_t M, int64_t K, int64_t ldx, int64_t N, addr p, addr kidx,
                     addr values, addr colsum, addr w_scale, addr bias, addr y, int64_t ldy,
                     int nthreads, addr row_amax) {
  const spmm_block::Args a{ptr<const float>(x), M, K, ldx, N, ptr<const int64_t>(p),
                           ptr<const uint16_t>(kidx), ptr<const void>(values),
                           ptr<const int32_t>(colsum), ptr<const float>(w_scale),
                           ptr<const float>(bias), ptr<float>(y), ldy, nthreads,
                           ptr<const float>(row_amax)};
  int8 ? spmm_block::run_w8a8(a) : spmm_block::run_f32(a);
}

void bind_spmm_block(py::module_& m) {
  constexpr const char* args =
      "x, M, K, ldx, N, ptr, kidx, values, colsum, w_scale, bias, y, ldy, nthreads, row_amax=0";
  def_int_function(
      m, "spmm_block_f32", &spmm_block_call<false>, args,
      "y[M, N] = x[M, K] W^T + bias, W block-sparse: ptr int64 [Np/16 + 1], kidx uint16 "
      "[blocks], values fp32 [blocks][16] (16 x 1 blocks); colsum and w_scale 0.");
  def_int_function(
      m, "spmm_block_w8a8", &spmm_block_call<true>, args,
      "spmm_block with int8 16 x 4 blocks [blocks][16][4], colsum int32 / w_scale fp32 [Np]; "
      "x quantized per row to int8 (row_amax: 0 or fp32 [M] floors under the rows' amax, "
      "quant_act.h; unused by spmm_block_f32).");
}

}  // namespace tersor::bindings
