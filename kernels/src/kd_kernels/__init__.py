"""kd-kernels: the hot distillation-loss ops, ``softmax_kl`` and ``relation_loss``.

Both run a fused kernel where one is built for the device (C++ on CPU, CUDA on NVIDIA GPUs) and
otherwise their pure-PyTorch reference (:mod:`kd_kernels.reference`, the oracle of every formula
kd computes). ``backend(op, device)`` and ``python -m kd_kernels.info`` say which runs and why;
``KD_KERNELS=auto|fused|reference`` forces a choice.
"""

from kd_kernels.dispatch import Backend, backend, relation_loss, softmax_kl

__version__ = "0.1.0"

__all__ = ["Backend", "__version__", "backend", "relation_loss", "softmax_kl"]
