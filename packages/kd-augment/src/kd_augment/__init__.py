"""kd-augment: augmenters that grow a transfer set for task-specific distillation, and ``kd augment``.

Registered augmenters: TextBrewer's token edits (``masking``, ``deleting``, ``n_gram_sampling``,
``short_disorder``, ``long_disorder``), Tang et al.'s rules (``tang``), TinyBERT-style masked-LM
word replacement (``mlm_replace``) and causal-LM generation (``generate``). The streaming,
resumable driver and teacher labelling live in kd-core (:mod:`kd_core.augmentation`,
:mod:`kd_core.labelling`), so recipes use them through the registry.
"""

from kd_augment.generate import CausalLMGenerator, load_causal_lm, smollm2_location
from kd_augment.mlm import MaskedLMReplace
from kd_augment.pos import SpacyTagger
from kd_augment.tang import TangRules
from kd_augment.token_edits import TokenEditAugmenter

__version__ = "0.1.0"

__all__ = [
    "CausalLMGenerator",
    "MaskedLMReplace",
    "SpacyTagger",
    "TangRules",
    "TokenEditAugmenter",
    "__version__",
    "load_causal_lm",
    "smollm2_location",
]
