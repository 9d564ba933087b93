"""What partner's routes, jobs and commands share while it runs, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database

from partner.till import Till

CONTEXT = "partner"


@dataclass
class Context:
    db: Database
    clock: Clock
    till: Till


def of_runtime(runtime: Any) -> Context:
    context: Context = runtime.state[CONTEXT]
    return context


def _context(request: Request) -> Context:
    return of_runtime(request.app.state.runtime)


ContextDep = Annotated[Context, Depends(_context)]
