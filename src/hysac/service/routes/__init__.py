"""The service's routes, one module per resource; each is an ``APIRouter`` whose handlers take the shared
:class:`~hysac.service.state.ServiceState` through ``Depends(get_state)``."""

from __future__ import annotations

from fastapi import APIRouter

from . import classify, health, items, pages, search, traverse

__all__ = ["ROUTERS"]

#: included in this order by :func:`hysac.service.app.create_app`
ROUTERS: tuple[APIRouter, ...] = (health.router, classify.router, search.router, traverse.router, items.router,
                                  pages.router)
