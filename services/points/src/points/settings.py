from datetime import datetime

from kizuna.kit.settings import ServiceSettings
from pydantic import BaseModel

from points.ledger import Campaign, EarnRules


class CampaignSetting(BaseModel):
    """One campaign, e.g. in EARN_CAMPAIGNS='[{"name": "Summer x2", "service": "travel", ...}]'."""

    name: str
    service: str = "*"
    starts_at: datetime
    ends_at: datetime
    points_expire_at: datetime
    extra_rate_bp: int = 0
    fixed_bonus: int = 0


class Settings(ServiceSettings):
    # Every ledger call holds a connection for its whole transaction; size for ~64 concurrent callers.
    database_pool_size: int = 32
    http_port: int = 8001
    grpc_port: int = 50051
    # Where the ecosystem header (kizuna.kit.header) reads a member's balance: this service itself.
    points_addr: str = "127.0.0.1:50051"

    # Regular points expire this many months after the member last earned (rolling).
    regular_expiry_months: int = 12
    reservation_default_ttl_seconds: int = 900
    reservation_max_ttl_seconds: int = 7 * 24 * 3600
    expiry_interval_seconds: float = 30.0
    expiry_batch_size: int = 500

    # Earn rules, in basis points of the money paid (100 bp = 1 point per 100 currency units).
    earn_default_base_bp: int = 100
    earn_base_bp: dict[str, int] = {}
    earn_bonus_bp_per_service: int = 100
    earn_max_bonus_services: int = 4
    earn_cap_per_transaction: int = 10_000
    earn_cap_per_month: int = 100_000
    earn_campaigns: list[CampaignSetting] = []
    # Services that may credit points by publishing points.credit.requested.
    command_credit_services: list[str] = ["shop", "travel", "fintech"]

    def earn_rules(self) -> EarnRules:
        return EarnRules(
            default_base_bp=self.earn_default_base_bp,
            base_bp=dict(self.earn_base_bp),
            bonus_bp_per_service=self.earn_bonus_bp_per_service,
            max_bonus_services=self.earn_max_bonus_services,
            cap_per_transaction=self.earn_cap_per_transaction,
            cap_per_month=self.earn_cap_per_month,
            campaigns=tuple(Campaign(**c.model_dump()) for c in self.earn_campaigns),
        )
