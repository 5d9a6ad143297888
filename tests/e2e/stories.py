"""A story written for a test module, posted once through the API and projected."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ecs.projector import Projector
from tests.conftest import Tenant, make_tenant


@dataclass
class PostedStory:
    tenant: Tenant
    chronicle: str
    event_at: dict[int, str] = field(default_factory=dict)
    """Event id by sequence."""

    async def context(self, client: Any, **body: Any) -> dict[str, Any]:
        """A context bundle (asserted to be a 200)."""
        return await self._post(client, "context", body)

    async def query(self, client: Any, **body: Any) -> dict[str, Any]:
        """A hybrid question's answer (asserted to be a 200)."""
        return await self._post(client, "query", body)

    async def post(self, client: Any, endpoint: str, body: dict[str, Any]) -> Any:
        """The response, whatever its status."""
        return await client.post(
            f"/api/chronicles/{self.chronicle}/{endpoint}", json=body, headers=self.tenant.headers
        )

    async def _post(self, client: Any, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.post(client, endpoint, body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


async def post_story(client: Any, engine: Any, title: str, events: list[dict[str, Any]]) -> PostedStory:
    """A new tenant with one chronicle holding ``events`` (one batch), projected into ECS."""
    tenant = await make_tenant(engine)
    response = await client.post("/api/chronicles", json={"title": title}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    chronicle = response.json()["id"]
    response = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    return PostedStory(tenant, chronicle, {e["sequence"]: e["id"] for e in response.json()["events"]})
