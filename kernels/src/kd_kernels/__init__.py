"""kd-kernels: distillation-loss ops. Today every op runs its pure-PyTorch reference
(:mod:`kd_kernels.reference`); fused kernels will take over behind the same functions."""

from kd_kernels.reference import softmax_kl

__version__ = "0.1.0"

__all__ = ["__version__", "softmax_kl"]
