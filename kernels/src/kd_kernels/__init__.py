"""kd-kernels: the hot distillation-loss ops, ``softmax_kl`` and ``relation_loss``.

Both run a fused kernel where one is built for the device (C++ on CPU, CUDA on NVIDIA GPUs) and
otherwise their pure-PyTorch reference (:mod:`kd_kernels.reference`, the oracle of every formula
kd computes). ``backend(op, device)`` and ``python -m kd_kernels.info`` say which runs and why;
``KD_KERNELS=auto|fused|reference`` forces a choice. ``chunked`` evaluates a token-level
divergence over a large vocabulary a chunk of rows at a time (O(chunk x V) extra memory);
``fused_linear`` does it from the hidden states and LM heads, with no [N, V] logits at all.
"""

from kd_kernels.chunked import chunked, fused_linear
from kd_kernels.dispatch import Backend, backend, relation_loss, softmax_kl

__version__ = "0.1.0"

__all__ = ["Backend", "__version__", "backend", "chunked", "fused_linear", "relation_loss", "softmax_kl"]
