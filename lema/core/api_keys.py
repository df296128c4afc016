"""API keys for the correction-as-a-service routes: created once (the key is shown once), kept only as SHA-256
hashes with their limits, listed without secrets, revoked by name (`lema keys create/list/revoke`).

Where keys live: a JSON file (`endpoint.api_keys_file`, written by `lema keys`), and, for deployments that mount
secrets, an environment variable (`endpoint.api_keys_env`) holding the same JSON list. A key is `lema_` + 32 random
bytes (URL-safe base64): enough entropy that a fast hash is the right one (as GitHub and Stripe tokens), so checking
a key costs one SHA-256 and a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from lema.core.errors import AlreadyExists, InvalidInput, NotFound

PREFIX = "lema_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_KEYS = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key's record: never the key itself."""

    name: str
    sha256: str
    prefix: str  # the key's first characters, to recognise it in a list
    requests_per_minute: int
    corrections_per_day: int
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_json(cls, data: dict, where: str) -> ApiKey:
        try:
            key = cls(**{f: data[f] for f in ("name", "sha256", "prefix", "requests_per_minute",
                                               "corrections_per_day", "created_at")},
                      revoked_at=data.get("revoked_at"))
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"{where}: an API key entry needs name, sha256, prefix, requests_per_minute, "
                               f"corrections_per_day and created_at ({exc})") from None
        if not re.fullmatch(r"[0-9a-f]{64}", str(key.sha256)):
            raise InvalidInput(f"{where}: key {str(key.name)[:64]!r}: sha256 must be 64 hex digits")
        return key


def check_limits(requests_per_minute: int, corrections_per_day: int) -> None:
    if not 1 <= requests_per_minute <= 1_000_000:
        raise InvalidInput(f"requests_per_minute must be in 1..1000000 (got {requests_per_minute})")
    if not 0 <= corrections_per_day <= 100_000_000:
        raise InvalidInput(f"corrections_per_day must be in 0..100000000 (got {corrections_per_day})")


def read_keys(path: Path | None, env_name: str | None = None) -> list[ApiKey]:
    """Every key record from the file (if it exists) and the environment variable (if set)."""
    keys: list[ApiKey] = []
    sources: list[tuple[str, str]] = []
    if path is not None and path.is_file():
        sources.append((str(path), path.read_text()))
    if env_name and os.environ.get(env_name, "").strip():
        sources.append((f"${env_name}", os.environ[env_name]))
    for where, text in sources:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
        entries = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise InvalidInput(f"{where}: expected {{\"keys\": [...]}} or a list of key entries")
        keys += [ApiKey.from_json(entry if isinstance(entry, dict) else {}, where) for entry in entries]
    if len(keys) > MAX_KEYS:
        raise InvalidInput(f"{len(keys)} API keys: at most {MAX_KEYS}")
    return keys


def _write(path: Path, keys: list[ApiKey]) -> None:
    """Atomically, readable by the owner only (the hashes are not secrets, but the limits are the owner's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".api-keys-")
    with os.fdopen(handle, "w") as f:
        json.dump({"keys": [asdict(k) for k in keys]}, f, indent=2)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def create_key(path: Path, name: str, requests_per_minute: int = 60, corrections_per_day: int = 1000) -> str:
    """Add a key named `name`; return the key (shown once: only its hash is kept)."""
    if not NAME_PATTERN.match(name or ""):
        raise InvalidInput("name must be 1-64 letters, digits or . _ - (starting with a letter or digit)")
    check_limits(requests_per_minute, corrections_per_day)
    keys = read_keys(path)
    if any(k.name == name and k.active for k in keys):
        raise AlreadyExists(f"name: an active key named {name!r} exists (revoke it first)")
    key = PREFIX + secrets.token_urlsafe(32)
    keys.append(ApiKey(name, hash_key(key), key[:12], requests_per_minute, corrections_per_day,
                       datetime.now(timezone.utc).isoformat(timespec="seconds")))
    _write(path, keys)
    return key


def revoke_key(path: Path, name: str) -> ApiKey:
    keys = read_keys(path)
    found = [i for i, k in enumerate(keys) if k.name == name and k.active]
    if not found:
        raise NotFound(f"name: no active key named {name[:64]!r}")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for i in found:
        keys[i] = ApiKey(**{**asdict(keys[i]), "revoked_at": now})
    _write(path, keys)
    return keys[found[-1]]


class KeyRing:
    """The active keys by hash, reloaded when the file changes (create and revoke take effect without a restart)."""

    def __init__(self, path: Path | None, env_name: str | None = None):
        self.path, self.env_name = path, env_name
        self._stamp: tuple | None = None
        self._by_hash: dict[str, ApiKey] = {}

    def _current_stamp(self) -> tuple:
        try:
            stat = self.path.stat() if self.path is not None else None
        except OSError:
            stat = None
        env = os.environ.get(self.env_name, "") if self.env_name else ""
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None, hash(env)

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._by_hash = {k.sha256: k for k in read_keys(self.path, self.env_name) if k.active}
            self._stamp = stamp

    def __len__(self) -> int:
        self._refresh()
        return len(self._by_hash)

    def find(self, offered: str) -> ApiKey | None:
        self._refresh()
        digest = hash_key(offered)
        found = self._by_hash.get(digest)
        # the dictionary lookup is on a hash of a high-entropy key; compare_digest keeps the last step constant-time
        return found if found is not None and hmac.compare_digest(found.sha256, digest) else None
