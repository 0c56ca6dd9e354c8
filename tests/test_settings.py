"""DatabaseSettings: every bad input named at once, with its fix; the password never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigma_db import ConfigurationError, DatabaseSettings

SECRET = "p@ss:w/o%r#d-very-secret"
GOOD = {
    "DB_HOST": "db.internal",
    "DB_PORT": "5432",
    "DB_NAME": "edge_lab",
    "DB_USER": "edge_lab_rw",
    "DB_PASSWORD": SECRET,
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(__import__("os").environ):
        if name.startswith("DB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def load() -> DatabaseSettings:
    return DatabaseSettings()


def problems_of(exc: pytest.ExceptionInfo[ConfigurationError]) -> list[str]:
    return exc.value.problems


def test_reads_required_and_defaults(env: pytest.MonkeyPatch) -> None:
    settings = load()
    assert (settings.host, settings.port, settings.name, settings.user) == (
        "db.internal",
        5432,
        "edge_lab",
        "edge_lab_rw",
    )
    assert settings.secret() == SECRET
    assert settings.topology.schema == "app"
    assert settings.conn_max == 10
    assert settings.env == "dev"


def test_all_missing_variables_listed_in_one_error(env: pytest.MonkeyPatch) -> None:
    for name in GOOD:
        env.delenv(name)
    with pytest.raises(ConfigurationError) as exc:
        load()
    message = str(exc.value)
    for name in GOOD:
        assert f"{name} is not set" in message
    assert len(problems_of(exc)) == 5


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DB_PORT", "abc", "DB_PORT (got 'abc')"),
        ("DB_PORT", "0", "DB_PORT (got '0')"),
        ("DB_PORT", "70000", "DB_PORT (got '70000')"),
        ("DB_SSLMODE", "sometimes", "DB_SSLMODE (got 'sometimes')"),
        ("DB_CONN_MAX", "0", "DB_CONN_MAX (got '0')"),
        ("DB_CONN_MAX", "-3", "DB_CONN_MAX (got '-3')"),
        ("DB_ENV", "production", "DB_ENV (got 'production')"),
        ("DB_HOST", "postgres://u:pw@h/db", "DB_HOST (value not shown): looks like a URL"),
        ("DB_PASSWORD", "", "DB_PASSWORD: is empty"),
    ],
)
def test_invalid_values_name_the_variable_and_fix(
    env: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert expected in str(exc.value)
    assert "; set " in str(exc.value)  # every line carries its fix


@pytest.mark.parametrize(
    "bad",
    ['edge"lab', "edge_lab;drop", "Edge_Lab", "edge lab", "x" * 64, "select", ""],
)
@pytest.mark.parametrize("variable", ["DB_NAME", "DB_SCHEMA"])
def test_database_and_schema_names_are_identifiers(
    env: pytest.MonkeyPatch, variable: str, bad: str
) -> None:
    env.setenv(variable, bad)
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert variable in str(exc.value)


def test_several_invalid_values_reported_together(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_PORT", "abc")
    env.setenv("DB_SSLMODE", "bogus")
    env.setenv("DB_CONN_MAX", "0")
    env.delenv("DB_USER")
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert len(problems_of(exc)) == 4


def test_password_never_in_errors_or_repr(env: pytest.MonkeyPatch) -> None:
    settings = load()
    shown = [repr(settings), str(settings), str(settings.url()), repr(settings.url())]
    shown += [settings.display_dsn, str(settings.masked())]
    assert not any(SECRET in text for text in shown)
    env.setenv("DB_PORT", "nope")
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert SECRET not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_password_with_url_metacharacters_round_trips(env: pytest.MonkeyPatch) -> None:
    url = load().url()
    assert url.password == SECRET
    assert url.render_as_string(hide_password=False).count("@") == 1  # escaped in the URL


def test_password_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("DB_PASSWORD")
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n", encoding="utf-8")
    env.setenv("DB_PASSWORD_FILE", str(secret))
    assert load().secret() == "from-a-file"
    secret.write_text("rotated\n", encoding="utf-8")
    assert load().secret() == "rotated"


def test_unreadable_password_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("DB_PASSWORD")
    env.setenv("DB_PASSWORD_FILE", str(tmp_path))  # a missing one: see test_..._not_echoed
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert f"DB_PASSWORD_FILE (got {str(tmp_path)!r}): cannot be read (Is a directory)" in str(
        exc.value
    )


def test_empty_password_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("DB_PASSWORD")
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    env.setenv("DB_PASSWORD_FILE", str(empty))
    with pytest.raises(ConfigurationError, match=r"DB_PASSWORD_FILE.*is empty"):
        load()


def test_password_and_file_both_set(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x", encoding="utf-8")
    env.setenv("DB_PASSWORD_FILE", str(secret))
    with pytest.raises(ConfigurationError, match="both set; keep only one"):
        load()


def test_dotenv_file_is_read_and_environment_wins(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("DB_USER")
    (tmp_path / ".env").write_text("DB_USER=from_dotenv\nDB_HOST=ignored\n", encoding="utf-8")
    settings = load()
    assert settings.user == "from_dotenv"
    assert settings.host == "db.internal"


def test_a_dotenv_file_that_is_not_utf8_is_one_clear_error(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_bytes(b"DB_APPLICATION_NAME=caf\xe9\n")
    with pytest.raises(ConfigurationError, match=r"Cannot read \.env .*save it as UTF-8"):
        load()


def test_a_dsn_pasted_into_db_user_is_refused_without_echoing_it(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("DB_USER", "app:Hunter2pw")
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert "DB_USER" in str(exc.value) and "user:password" in str(exc.value)
    assert "Hunter2pw" not in str(exc.value)
    env.setenv("DB_USER", "app@myserver")  # Azure's login form stays valid
    assert load().user == "app@myserver"


def test_keyword_arguments_override_environment(env: pytest.MonkeyPatch) -> None:
    assert DatabaseSettings(port=6543).port == 6543


def test_consolidated_database_in_prod_is_a_configuration_error(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_NAME", "edge_products")
    env.setenv("DB_SCHEMA", "lab")
    env.setenv("DB_ENV", "prod")
    with pytest.raises(ConfigurationError, match="not allowed in DB_ENV=prod"):
        load()


def test_unknown_product_schema_in_consolidated_dev(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_NAME", "edge_products")
    env.setenv("DB_SCHEMA", "billing")
    with pytest.raises(ConfigurationError, match=r"one of lab\|sim\|market\|pilot\|platform"):
        load()


def test_settings_are_frozen(env: pytest.MonkeyPatch) -> None:
    settings = load()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_a_keyword_that_is_no_setting_is_refused_with_the_closest(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as exc:
        DatabaseSettings(schema="lab", pool_size=3, conn_maxx=4)
    assert problems_of(exc) == [
        "'schema' is not a setting; did you mean schema_name?",
        "'pool_size' is not a setting; did you mean conn_max?",
        "'conn_maxx' is not a setting; did you mean conn_max?",
    ]
    with pytest.raises(ConfigurationError) as exc:
        DatabaseSettings(DB_CONN_MAX=3)  # the variable's name, not the keyword
    assert problems_of(exc) == ["'DB_CONN_MAX' is not a setting; did you mean conn_max?"]
    # The alias and the pydantic-settings private arguments stay accepted.
    assert DatabaseSettings(DB_SCHEMA="public", _env_file=None).topology.schema == "public"


def test_from_env_names_a_missing_variable_as_not_set(env: pytest.MonkeyPatch) -> None:
    given = {name: value for name, value in GOOD.items() if name != "DB_HOST"}
    with pytest.raises(ConfigurationError) as exc:
        DatabaseSettings.from_env(given)
    assert problems_of(exc) == [
        "DB_HOST is not set; set the server's host name or IP, e.g. DB_HOST=localhost."
    ]


def test_a_nul_byte_is_refused_before_libpq_cuts_the_parameters_after_it(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The environment cannot hold a NUL; a keyword or a file can.
    with pytest.raises(ConfigurationError, match="DB_PASSWORD: contains a NUL byte") as exc:
        DatabaseSettings(password="ab\x00cd")
    assert "cd" not in str(exc.value)
    env.delenv("DB_PASSWORD")
    secret = tmp_path / "pw"
    secret.write_bytes(b"ab\x00cd\n")
    env.setenv("DB_PASSWORD_FILE", str(secret))
    with pytest.raises(ConfigurationError, match=r"DB_PASSWORD_FILE.*contains a NUL byte"):
        load()
    with pytest.raises(ConfigurationError, match=r"DB_HOST.*control characters"):
        DatabaseSettings(host="db\x00internal", password_file=None, password="x")


def test_an_empty_password_file_variable_is_reported_as_empty(env: pytest.MonkeyPatch) -> None:
    env.delenv("DB_PASSWORD")
    env.setenv("DB_PASSWORD_FILE", "")
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert problems_of(exc) == [
        "DB_PASSWORD_FILE (got ''): is empty; set a readable file holding only the password."
    ]


def test_a_password_file_gone_after_start_up_is_a_configuration_error(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("rotated\n")
    env.delenv("DB_PASSWORD")
    env.setenv("DB_PASSWORD_FILE", str(secret))
    settings = load()
    secret.unlink()
    with pytest.raises(ConfigurationError) as exc:
        settings.secret()
    assert str(exc.value) == (
        f"DB_PASSWORD_FILE {secret} cannot be read (No such file or directory) (it was readable "
        "when the settings were built); restore the file, and have rotation replace it atomically."
    )


def test_connect_timeout_starts_at_libpqs_least(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_CONNECT_TIMEOUT", "1")
    with pytest.raises(ConfigurationError, match=r"DB_CONNECT_TIMEOUT.*2 to 300"):
        load()
    env.setenv("DB_CONNECT_TIMEOUT", "2")
    assert load().connect_timeout == 2


def test_a_pool_recycle_of_zero_is_refused(env: pytest.MonkeyPatch) -> None:
    # To SQLAlchemy 0 means a new server connection on every checkout, not "never".
    env.setenv("DB_POOL_RECYCLE", "0")
    with pytest.raises(ConfigurationError) as caught:
        load()
    assert "DB_POOL_RECYCLE (got '0'): 0 would open a new connection on every checkout" in str(
        caught.value
    )
    assert "or -1 for never" in str(caught.value)
    env.setenv("DB_POOL_RECYCLE", "-1")
    assert load().pool_recycle == -1


def test_the_heading_names_the_env_file_actually_read(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DB_HOST=from-dotenv\n")
    env.setenv("DB_PORT", "x")
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert str(exc.value).startswith(
        "Invalid database settings (from arguments, environment and .env):"
    )
    with pytest.raises(ConfigurationError) as exc:
        DatabaseSettings(_env_file=None)
    assert str(exc.value).startswith("Invalid database settings (from arguments and environment):")
    with pytest.raises(ConfigurationError, match=r"_env_file /nonexistent/prod\.env is not a file"):
        DatabaseSettings(_env_file="/nonexistent/prod.env")


NOT_UTF8 = "S3cr3t\udcff"  # how Python sees $'S3cr3t\xff' from a shell


@pytest.mark.parametrize(
    "variable",
    [
        "DB_PASSWORD",
        "DB_HOST",
        "DB_NAME",
        "DB_USER",
        "DB_SCHEMA",
        "DB_PRODUCT",
        "DB_APPLICATION_NAME",
    ],
)
def test_a_byte_that_is_not_utf8_is_one_clear_line(env: pytest.MonkeyPatch, variable: str) -> None:
    env.setenv(variable, NOT_UTF8)
    with pytest.raises(ConfigurationError) as exc:
        load()
    [line] = problems_of(exc)
    assert line.startswith(variable)
    assert "contains bytes that are not UTF-8" in line and "; set " in line
    assert "codec" not in line
    if variable == "DB_PASSWORD":
        assert "S3cr3t" not in str(exc.value)


def test_a_password_file_that_is_not_utf8_says_so(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("DB_PASSWORD")
    secret = tmp_path / "pw"
    secret.write_bytes(b"S3cr3t\xff\n")
    env.setenv("DB_PASSWORD_FILE", str(secret))
    with pytest.raises(ConfigurationError, match=r"DB_PASSWORD_FILE.*is not UTF-8 text") as exc:
        load()
    assert "S3cr3t" not in str(exc.value)


@pytest.mark.parametrize(
    ("value", "hint"),
    [("S3cr3t", "looks more like a password than a path"), ("/run/S3cr3t", "set it to the path")],
)
def test_a_password_file_that_does_not_exist_is_not_echoed(
    env: pytest.MonkeyPatch, value: str, hint: str
) -> None:
    # A password pasted into the _FILE variable: a plausible mix-up, and the value is the secret.
    env.delenv("DB_PASSWORD")
    env.setenv("DB_PASSWORD_FILE", value)
    with pytest.raises(ConfigurationError) as exc:
        load()
    [line] = problems_of(exc)
    assert line.startswith("DB_PASSWORD_FILE (value not shown) names no existing file; ")
    assert hint in line
    assert "S3cr3t" not in str(exc.value)


def test_a_dotenv_directory_is_named_when_settings_are_missing(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").mkdir()
    assert load().host == "db.internal"  # a virtualenv called .env: harmless when all is set
    env.delenv("DB_USER")
    with pytest.raises(ConfigurationError) as exc:
        load()
    assert problems_of(exc) == [
        ".env is a directory, so no DB_* settings were read from it; if it should hold them, "
        "make it a file of DB_*=value lines, else set them in the environment.",
        "DB_USER is not set; set the login role, e.g. DB_USER=edge_lab_rw.",
    ]
