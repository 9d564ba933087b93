from typing import Annotated, Any

from kizuna.kit.settings import ServiceSettings
from pydantic import field_validator
from pydantic_settings import NoDecode


class Settings(ServiceSettings):
    http_port: int = 8002
    grpc_port: int = 50052

    points_addr: str = "127.0.0.1:50051"
    fintech_addr: str = "127.0.0.1:50054"
    peer_timeout_seconds: float = 5.0

    # The platform's commission on every order, in basis points of its total (500 = 5%).
    commission_bp: int = 500
    # Shipped orders complete on their own this many days after shipping unless confirmed sooner.
    auto_complete_days: float = 14.0
    # Points held at checkout stay held until the order ships (points caps this at its maximum).
    points_hold_seconds: int = 7 * 24 * 3600
    # A checkout whose saga has not moved for this long is finished or compensated by the recovery job.
    checkout_stuck_seconds: float = 120.0
    jobs_interval_seconds: float = 30.0
    # Member IDs of platform admins (who verify merchants), besides tokens with the shop:admin scope.
    # SHOP_ADMINS="mbr_a,mbr_b" (or a JSON list).
    shop_admins: Annotated[list[str], NoDecode] = []
    # Seed the demo catalogue on first start (when no merchant exists yet).
    seed_demo: bool = False

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
