from datetime import datetime

from kizuna.kit.settings import ServiceSettings
from pydantic import BaseModel, Field

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


class Earner(BaseModel):
    """A service whose purchases earn points through the earning contract (kizuna.points.v1
    earning.proto), as its declaration says: KIZUNA_EARNERS='[{"service": "shop", "label": "Shop",
    "rate_percent": 1.0}]'."""

    service: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    label: str = Field(min_length=1, max_length=60)
    rate_percent: float = Field(default=1.0, ge=0, le=100)


# Until make up passes the declarations' list, the earners the ecosystem has today.
DEFAULT_EARNERS = [
    Earner(service="shop", label="shop", rate_percent=1.0),
    Earner(service="travel", label="travel", rate_percent=1.0),
    Earner(service="fintech", label="card", rate_percent=1.0),
]


class Settings(ServiceSettings):
    # Every ledger call holds a connection for its whole transaction: up to twice this many at once
    # (kept open), which keeps a few cores and their database busy; more concurrent calls queue for
    # a connection rather than each opening one.
    database_pool_size: int = 16
    # Where the ecosystem header (kizuna.kit.header) reads a member's balance: this service itself.
    points_addr: str = "127.0.0.1:50051"

    # Credit, Reserve and Capture calls that arrive together commit together, in one transaction
    # (PostgreSQL; see points.group_commit); off, each runs in its own.
    ledger_group_commit: bool = True

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
    # The services whose purchase events earn points, their labels and base rates (data, from the
    # declarations; earn_base_bp overrides a rate in basis points).
    kizuna_earners: list[Earner] = DEFAULT_EARNERS

    # Bounds: no single credit, earn or event may move more than these; out of range is
    # INVALID_ARGUMENT (a dead letter for an event), never an overflow. Money in minor units.
    max_credit_points: int = Field(default=1_000_000, gt=0, le=10**12)
    max_purchase_minor: int = Field(default=10_000_000_000, gt=0, le=10**15)
    # Points one service may credit (Credit, Earn, credit commands, purchase grants and merchant
    # bonuses) per UTC day; a breach is refused and counted in kizuna.points.budget_refused.
    credit_budget_per_day: int = Field(default=100_000_000, gt=0, le=10**15)
    credit_budget_per_day_by_service: dict[str, int] = {}

    def earner(self, service: str) -> Earner | None:
        return next((e for e in self.kizuna_earners if e.service == service), None)

    def labels(self) -> dict[str, str]:
        return {e.service: e.label for e in self.kizuna_earners}

    def daily_budget(self, service: str) -> int:
        return self.credit_budget_per_day_by_service.get(service, self.credit_budget_per_day)

    def earn_rules(self) -> EarnRules:
        return EarnRules(
            default_base_bp=self.earn_default_base_bp,
            base_bp={e.service: round(e.rate_percent * 100) for e in self.kizuna_earners} | self.earn_base_bp,
            bonus_bp_per_service=self.earn_bonus_bp_per_service,
            max_bonus_services=self.earn_max_bonus_services,
            cap_per_transaction=self.earn_cap_per_transaction,
            cap_per_month=self.earn_cap_per_month,
            campaigns=tuple(Campaign(**c.model_dump()) for c in self.earn_campaigns),
            labels=self.labels(),
        )
