"""Content hashes of JSON-able values: sha256 of canonical JSON, shown as 12 hex digits."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(value: Any) -> str:
    """Stable hash of a JSON-able value (sorted keys, no whitespace), 12 hex digits."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
