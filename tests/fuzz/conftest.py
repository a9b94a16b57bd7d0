"""The fuzz tests' hypothesis profiles ("ci" by default, "long") are registered in
tests/conftest.py, so ``--hypothesis-profile=long`` works from the repository root."""
