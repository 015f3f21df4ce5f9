"""GPTQ (AutoGPTQ / GPTQModel) and AWQ (AutoAWQ, GEMM packing) 4-bit checkpoints.

A quantized layer ``<fqn>`` holds, per the formats' documentation (formats/int4.py
``from_gptq`` / ``from_awq`` has the bit layouts)::

    GPTQ  qweight int32 [K/8, N]  qzeros int32 [K/G, N/8]  scales [K/G, N]  g_idx int32 [K]
    AWQ   qweight int32 [K, N/8]  qzeros int32 [K/G, N/8]  scales [K/G, N]

config.json's ``quantization_config``::

    GPTQ  {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false,
           "sym": true, "checkpoint_format": "gptq" | "gptq_v2"}
    AWQ   {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true,
           "version": "gemm"}

GPTQ's v1 checkpoints store zero - 1 (AutoGPTQ's historical offset); "gptq_v2" stores the
zero itself. Layers without ``qweight`` (lm_head, ``modules_to_not_convert``) stay float.
"""

from __future__ import annotations

from tersor.formats import int4 as f4
from tersor.formats.int4 import Int4Format
from tersor.importers.base import Imported, Importer


class GptqImporter(Importer):
    method = "gptq"

    def check_config(self, qc: dict) -> None:
        self.require(qc, "bits", (4,), "only 4-bit GPTQ maps onto tersor's int4 kernels")
        fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
        self.require({"checkpoint_format": fmt}, "checkpoint_format", ("gptq", "gptq_v2"))
        self.version = 2 if fmt == "gptq_v2" else 1
        self.group_size = qc.get("group_size", 128)

    def layer(self, fqn, module, folder):
        p = f"{fqn}."
        if p + "qweight" not in folder:
            return None
        what = f"{folder.file_of(p + 'qweight')}: GPTQ layer '{fqn}'"
        g_idx = folder.get(p + "g_idx", required=False)
        q, s, z, g, perm = f4.from_gptq(
            folder.get(p + "qweight"),
            folder.get(p + "qzeros"),
            folder.get(p + "scales"),
            g_idx,
            version=self.version,
            what=what,
        )
        k = q.shape[1]
        if self.group_size not in (-1, None) and g != min(self.group_size, k):
            raise ValueError(
                f"{what}: scales give group size {g}, config.json says {self.group_size}"
            )
        a8, bits = self.int4_act(False)
        fmt = Int4Format(q, s, z, g if g < k else -1, a8, perm=perm, what=what, act_bits=bits)
        keys = [p + n for n in ("qweight", "qzeros", "scales", "g_idx") if p + n in folder]
        note = "act-order (input permutation)" if perm is not None else ""
        return Imported(fmt, keys, note)


class AwqImporter(Importer):
    method = "awq"

    def check_config(self, qc: dict) -> None:
        self.require(qc, "bits", (4,), "only 4-bit AWQ maps onto tersor's int4 kernels")
        self.require(
            {"version": str(qc.get("version", "gemm")).lower()},
            "version",
            ("gemm",),
            "GEMV / Marlin / ExLlama packings are GPU layouts; re-export with version='gemm'",
        )
        if qc.get("zero_point", True) is False:
            raise ValueError(f"{self.where}: AWQ without zero points is not supported")
        self.group_size = qc.get("group_size", qc.get("q_group_size", 128))

    def layer(self, fqn, module, folder):
        p = f"{fqn}."
        if p + "qweight" not in folder:
            return None
        what = f"{folder.file_of(p + 'qweight')}: AWQ layer '{fqn}'"
        q, s, z, g = f4.from_awq(
            folder.get(p + "qweight"),
            folder.get(p + "qzeros"),
            folder.get(p + "scales"),
            self.group_size,
            what=what,
        )
        a8, bits = self.int4_act(False)
        fmt = Int4Format(q, s, z, g, a8, what=what, act_bits=bits)
        return Imported(fmt, [p + "qweight", p + "qzeros", p + "scales"], "")
