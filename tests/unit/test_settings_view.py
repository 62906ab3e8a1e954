"""GET /api/settings hides secrets: by a setting's name, and a URL's password."""

from __future__ import annotations

from selftune.api.settings_view import REDACTED, is_secret_name, redacted_settings
from selftune.config import Settings


def test_secret_names_are_whole_parts_of_the_name() -> None:
    for name in ("api_key", "upstream_api_key", "client_secret", "db_password", "auth_token"):
        assert is_secret_name(name), name
    for name in ("default_max_tokens", "replay_answer_tokens", "keyword_weight", "host"):
        assert not is_secret_name(name), name


def test_passwords_in_urls_and_secret_settings_are_hidden() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://app:hunter2@db.local/selftune",
        proxy={
            "upstream_url": "https://user:pw@up.example/v1?api_key=abc&model=x",
            "upstream_api_key": "sk-upstream",
        },
    )
    shown = {item["name"]: item for item in redacted_settings(settings)}
    assert (
        shown["database_url"]["value"] == f"postgresql+psycopg://app:{REDACTED}@db.local/selftune"
    )
    assert shown["proxy.upstream_url"]["value"] == (
        f"https://user:{REDACTED}@up.example/v1?api_key={REDACTED}&model=x"
    )
    assert shown["proxy.upstream_api_key"]["value"] == REDACTED
    assert all(item["redacted"] for item in map(shown.get, ["database_url", "proxy.upstream_url"]))
    text = repr(list(shown.values()))
    for secret in ("hunter2", ":pw@", "abc", "sk-upstream"):
        assert secret not in text, secret
    assert shown["data_dir"]["value"] == "selftune-data"  # a path, as text
