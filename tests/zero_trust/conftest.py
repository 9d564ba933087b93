from .zero_trust_support import ecosystem  # noqa: F401  (fixture)
