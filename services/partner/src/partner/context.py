"""What partner's routes, jobs and commands share while it runs (the kit builds it at start, typed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.service import context_of

from partner.till import Till


@dataclass
class Context:
    db: Database
    clock: Clock
    till: Till

    async def aclose(self) -> None:
        await self.till.points.close()
        await self.till.grants.aclose()


ContextDep = Annotated[Context, Depends(context_of(Context))]
