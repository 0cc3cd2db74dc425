"""Process settings, built once from flags, environment and defaults.

Precedence, highest first: explicit arguments (CLI flags) > environment variables > defaults.

Environment variables:
    SHELF_HOME            workspace folder (default ``./shelf-home``)
    SHELF_PSEUDONYM_KEY   secret key for the user-id HMAC (required outside development)
    SHELF_DEV             ``1``/``true`` turns on development mode (a built-in key is allowed)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shelf.errors import SettingsError

DEFAULT_HOME = Path("./shelf-home")
# Published on purpose: a key everyone knows protects nothing, so it is refused outside dev mode.
DEVELOPMENT_KEY = "shelf-development-key-not-secret"
MIN_KEY_LENGTH = 16

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_flag(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a flag; expected one of 1/0, true/false, yes/no, on/off")


@dataclass(frozen=True)
class Settings:
    """Everything a shelf process is configured with."""

    home: Path = DEFAULT_HOME
    pseudonym_key: str | None = None
    dev_mode: bool = False

    @classmethod
    def load(
        cls,
        *,
        home: Path | str | None = None,
        pseudonym_key: str | None = None,
        dev_mode: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        env = os.environ if environ is None else environ
        resolved_home = Path(home) if home is not None else Path(env.get("SHELF_HOME") or DEFAULT_HOME)
        key = pseudonym_key if pseudonym_key is not None else env.get("SHELF_PSEUDONYM_KEY")
        dev = dev_mode if dev_mode is not None else _parse_flag("SHELF_DEV", env.get("SHELF_DEV", ""))
        return cls(home=resolved_home, pseudonym_key=key or None, dev_mode=dev)

    def require_pseudonym_key(self) -> bytes:
        """The HMAC key, or a refusal when running outside development mode without a real one."""
        key = self.pseudonym_key
        if key is None or key == DEVELOPMENT_KEY:
            if self.dev_mode:
                return DEVELOPMENT_KEY.encode()
            what = "is not set" if key is None else "is the published development key"
            raise SettingsError(
                f"SHELF_PSEUDONYM_KEY {what}; outside development mode shelf refuses to start. "
                f"Set SHELF_PSEUDONYM_KEY to a secret of at least {MIN_KEY_LENGTH} characters "
                "(keep it: changing it changes every shopper's pseudonym), or set SHELF_DEV=1 for a local trial."
            )
        if len(key) < MIN_KEY_LENGTH and not self.dev_mode:
            raise SettingsError(
                f"SHELF_PSEUDONYM_KEY has {len(key)} characters; expected at least {MIN_KEY_LENGTH}"
            )
        return key.encode()
