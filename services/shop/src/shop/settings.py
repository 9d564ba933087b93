from typing import Annotated, Any

from kizuna.kit.earn_preview import EarnPreviewSettings
from pydantic import field_validator, model_validator
from pydantic_settings import NoDecode


class Settings(EarnPreviewSettings):
    points_addr: str = "127.0.0.1:50051"
    fintech_addr: str = "127.0.0.1:50054"
    peer_timeout_seconds: float = 5.0

    # The platform's commission on every order, in basis points of its total (500 = 5%).
    commission_bp: int = 500
    # Shipped orders complete on their own this many days after shipping unless confirmed sooner.
    auto_complete_days: float = 14.0
    # Points held at checkout stay held until the order ships (points caps this at its maximum).
    points_hold_seconds: int = 7 * 24 * 3600
    # A paid order not shipped within this many days is cancelled by the housekeeping job (points and
    # card holds voided, stock back), before the holds lapse: points caps a reservation at
    # POINTS_HOLD_SECONDS and fintech holds an authorization for 7 days, and a lapsed hold cannot be captured.
    ship_by_days: float = 5.0
    # An order left in `shipping`, `cancelling` or `refunding` this long (a crash or a peer outage
    # mid-transition) is finished, or unwound, by the housekeeping job.
    order_stuck_seconds: float = 120.0
    # A checkout whose saga has not moved for this long is finished or compensated by the recovery job.
    checkout_stuck_seconds: float = 120.0
    jobs_interval_seconds: float = 30.0
    # Member IDs of platform admins (who verify merchants), besides tokens with the shop:admin scope.
    # SHOP_ADMINS="mbr_a,mbr_b" (or a JSON list).
    shop_admins: Annotated[list[str], NoDecode] = []
    # Seed the demo catalogue on first start (when no merchant exists yet).
    seed_demo: bool = False

    @model_validator(mode="after")
    def _ship_before_holds_lapse(self) -> "Settings":
        if not 0 < self.ship_by_days * 86_400 < self.points_hold_seconds:
            raise ValueError(
                f"SHIP_BY_DAYS ({self.ship_by_days}) must be positive and shorter than "
                f"POINTS_HOLD_SECONDS ({self.points_hold_seconds} s), or shipping would find the points "
                "hold lapsed"
            )
        return self

    @field_validator("shop_admins", mode="before")
    @classmethod
    def _split_admins(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            stripped = value.strip()
            if stripped.startswith("["):
                return json.loads(stripped)
            return [part.strip() for part in stripped.split(",") if part.strip()]
        return value
