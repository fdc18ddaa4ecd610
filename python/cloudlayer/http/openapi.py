"""GET /openapi.json: the OpenAPI 3.1 document kept in the package (cloudlayer/openapi.json).

The JSON file is the source, edited by hand, except the wire-model schemas: those are msgspec's own
(`model_schemas()`), so the document cannot drift from transactions/models.py. tests/test_openapi.py
fails when they differ; `python -m cloudlayer.http.openapi` rewrites them in the file.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from quart import Response
from quart_trio import QuartTrio

from ..transactions.models import TransactionRequest, TransactionResponse

PATH = "/openapi.json"
_RESOURCE = "openapi.json"


def document_bytes() -> bytes:
    return resources.files("cloudlayer").joinpath(_RESOURCE).read_bytes()


def model_schemas() -> dict[str, Any]:
    """The wire models' JSON Schemas as msgspec generates them, keyed by component name."""
    _, components = msgspec.json.schema_components(
        [TransactionRequest, TransactionResponse], ref_template="#/components/schemas/{name}"
    )
    return components


def register(app: QuartTrio) -> None:
    body = document_bytes()  # read once per worker; served from memory

    @app.get(PATH)
    async def openapi_document() -> Response:
        return Response(body, status=200, content_type="application/json", headers={"Cache-Control": "no-cache"})


def _sync_models(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["components"]["schemas"].update(model_schemas())
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    # Rewrite the model schemas in the source tree's openapi.json after changing transactions/models.py.
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / _RESOURCE
    _sync_models(target)
    print(f"updated model schemas in {target}")
