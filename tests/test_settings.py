from __future__ import annotations

import pytest

from shelf.errors import SettingsError
from shelf.settings import DEVELOPMENT_KEY, Settings


def test_missing_or_default_key_refused_outside_dev() -> None:
    with pytest.raises(SettingsError, match="SHELF_PSEUDONYM_KEY is not set"):
        Settings.load(environ={}).require_pseudonym_key()
    with pytest.raises(SettingsError, match="development key"):
        Settings.load(environ={"SHELF_PSEUDONYM_KEY": DEVELOPMENT_KEY}).require_pseudonym_key()
    with pytest.raises(SettingsError, match="at least"):
        Settings.load(environ={"SHELF_PSEUDONYM_KEY": "short"}).require_pseudonym_key()


def test_dev_mode_allows_the_builtin_key_and_flags_override_env() -> None:
    settings = Settings.load(environ={"SHELF_DEV": "1", "SHELF_HOME": "/tmp/a"}, home="/tmp/b")
    assert settings.require_pseudonym_key() == DEVELOPMENT_KEY.encode()
    assert str(settings.home) == "/tmp/b"


def test_bad_flag_value_is_refused() -> None:
    with pytest.raises(SettingsError, match="SHELF_DEV"):
        Settings.load(environ={"SHELF_DEV": "maybe"})
