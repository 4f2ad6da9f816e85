"""kd-kernels: the hot distillation-loss ops, ``softmax_kl`` and ``relation_loss``.

Today both run their pure-PyTorch reference (:mod:`kd_kernels.reference`, the oracle of every
formula kd computes); fused kernels will take over behind these same functions.
"""

from kd_kernels.reference import relation_loss, softmax_kl

__version__ = "0.1.0"

__all__ = ["__version__", "relation_loss", "softmax_kl"]
