from .fuzz_support import stack  # noqa: F401  (fixture)
