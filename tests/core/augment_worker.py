"""A process that augments slowly, for the kill-and-resume test: ``python -m tests.core.augment_worker
OUT DELAY`` writes 3 variants of each of 120 rows, sleeping DELAY seconds per variant."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Sequence

from kd_core.augmentation import augment_rows

ROWS = [{"text": f"row {i} of the corpus says {i % 7}", "label": i % 2} for i in range(120)]


class ShuffleWords:
    """Variants: the words shuffled, plus a random digit (an ExampleAugmenter)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def fit(self, texts: Sequence[str]) -> None:
        pass

    def variants(self, text: str, rng: random.Random) -> Iterator[str]:
        while True:
            time.sleep(self.delay)
            words = text.split()
            rng.shuffle(words)
            yield " ".join(words) + f" {rng.randint(0, 9)}"


def run(output: str, delay: float) -> None:
    augment_rows(ROWS, ["text"], lambda: ShuffleWords(delay), output, n=3, seed=7, settings={"worker": "shuffle"},
                 progress=False)


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]))
