from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    http_port: int = 8004
    grpc_port: int = 50054
    points_addr: str = "127.0.0.1:50051"

    currency: str = "JPY"
    # Keys the hash that stands in for card numbers (the numbers themselves are never stored).
    # Set a real secret in every deployment.
    card_token_key: str = "dev-only-card-token-key"  # noqa: S105 (a development default)
    card_min_limit_minor: int = 100_000
    card_max_limit_minor: int = 2_000_000
    # An uncaptured authorization releases its hold after this long.
    authorization_ttl_seconds: int = 7 * 24 * 3600
    # Statements close at the end of each calendar month (UTC); payment is due this many days later.
    statement_due_days: int = 27
    statement_interval_seconds: float = 60.0

    # Fraud rules: more than `fraud_velocity_count` authorizations within the window, or one above
    # `fraud_max_amount_minor`, is declined.
    fraud_velocity_count: int = 5
    fraud_velocity_window_seconds: int = 600
    fraud_max_amount_minor: int = 1_000_000

    # Test helpers (bank top-up, closing a statement now). Turn off in production.
    test_mode: bool = True
