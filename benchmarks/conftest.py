"""Benchmarks reuse the test fixtures (packaged teacher, bundled data)."""

from tests.conftest import minilm_path, sst2_dir  # noqa: F401
