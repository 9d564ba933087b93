"""partner's settings (environment only; the kit's ServiceSettings adds the platform's)."""

from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    peer_timeout_seconds: float = 10.0
    # Velocity limits at the till (abuse): transactions per card and per store in a minute.
    max_sales_per_card_per_minute: int = 5
    max_sales_per_store_per_minute: int = 120
    # Bounds on one till transaction.
    max_amount_minor: int = 10_000_000
    max_points_per_spend: int = 1_000_000
    # How often pending earnings past their return window are granted.
    grant_interval_seconds: float = 30.0
