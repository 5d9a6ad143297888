from __future__ import annotations

from tests.conftest import Tenant


async def test_create_chronicle_and_ingest(client, tenant: Tenant) -> None:
    response = await client.post("/api/chronicles", json={"title": "Smoke"}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    chronicle = response.json()
    response = await client.post(
        f"/api/chronicles/{chronicle['id']}/events",
        json={"events": [{"summary": "Bram lit the lamps at the inn.", "actors": ["Bram"], "location": "inn",
                          "external_id": "e1"}]},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["events"][0]["sequence"] == 1
