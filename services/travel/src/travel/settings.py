from kizuna.kit.earn_preview import EarnPreviewSettings


class Settings(EarnPreviewSettings):
    points_addr: str = "127.0.0.1:50051"
    fintech_addr: str = "127.0.0.1:50054"
    # Seed the catalogue (idempotent; tops inventory up to the horizon) when the service starts.
    seed_catalogue: bool = False
    catalogue_days: int = 180
    max_stay_nights: int = 14
    # Deadline of each call to points or fintech.
    peer_timeout_seconds: float = 5.0
    # How long points holds a reservation that the saga never captured (a crash mid-booking).
    points_reservation_ttl_seconds: int = 900
    # A booking whose saga has not moved for this long is finished or undone by the recovery job.
    saga_stuck_after_seconds: float = 60.0
    # How often the recovery and stay-completion jobs run.
    jobs_interval_seconds: float = 30.0
