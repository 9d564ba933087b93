from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    points_addr: str = "127.0.0.1:50051"

    currency: str = "JPY"
    # Sandbox: a bank top-up out of thin air, closing a statement on demand, and a card-token key
    # generated into the data dir when CARD_TOKEN_KEY is unset. On for `make up` and tests;
    # a real deployment sets FINTECH_SANDBOX=false, and then CARD_TOKEN_KEY is required.
    fintech_sandbox: bool = True
    # Keys the hash that stands in for card numbers (the numbers themselves are never stored).
    # Every replica must share it and it must never change (cards are found by it): keep it in a
    # secret store. Unset in the sandbox: generated once into KIZUNA_DATA_DIR (see card_keys.py).
    card_token_key: str = ""
    card_min_limit_minor: int = 100_000
    card_max_limit_minor: int = 2_000_000
    # An uncaptured authorization releases its hold after this long.
    authorization_ttl_seconds: int = 7 * 24 * 3600
    # Statements close at the end of each calendar month (UTC); payment is due this many days later.
    statement_due_days: int = 27
    statement_interval_seconds: float = 60.0
    # The sweeper: how often it runs, and how long a bill/fund payment may stay in progress before
    # it finishes or compensates it (well above a points call's timeout, so it never races a live request).
    sweep_interval_seconds: float = 30.0
    payment_stuck_seconds: int = 120

    # Fraud rules: more than `fraud_velocity_count` authorizations within the window, or one above
    # `fraud_max_amount_minor`, is declined.
    fraud_velocity_count: int = 5
    fraud_velocity_window_seconds: int = 600
    fraud_max_amount_minor: int = 1_000_000
