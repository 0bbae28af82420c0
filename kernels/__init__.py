"""Fused kernels for the early-stage ranker's big-catalogue operations."""

from kernels.fused_topk import FusedTopK
from kernels.fused_topk import fused_topk_lse
from kernels.fused_topk import fused_topk_lse_dense
from kernels.fused_topk import fused_topk_lse_pallas
from kernels.fused_topk import fused_topk_lse_reference

__all__ = ["FusedTopK", "fused_topk_lse", "fused_topk_lse_dense", "fused_topk_lse_pallas",
           "fused_topk_lse_reference"]
