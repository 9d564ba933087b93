from .journey_support import browser, ecosystem, steps  # noqa: F401  (fixtures)
