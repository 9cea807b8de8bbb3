"""`ledgerchat eval replies`: its metric functions on fixed texts, the shipped prompt list,
the command end to end on the tiny model, and (real_model) the bundled 270M ending its
replies by itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.replies_eval import (
    DEFAULT_PROMPTS_PATH,
    PromptListError,
    ReplyResult,
    is_looping,
    load_prompts,
    only_echoes,
    summarize,
)
from tests.inference.conftest import TINY
from web.cli import main

HELD_OUT_PROMPTS = Path(__file__).parent / "data" / "heldout_prompts.txt"
FIGURE_KEYS = {"self_ended_share", "loop_share", "median_completion_tokens"}


class TestMetrics:
    @pytest.mark.parametrize(
        ("text", "looping"),
        [
            ("!when! " * 12, True),  # the 270M's old loop: an 8-word run seen 5 times
            ("Paris is the capital.\nParis is the capital.\nParis is the capital.", True),
            ("a b c d e f g h, a b c d e f g h, and a b c d e f g h", True),
            ("ok\nok\nok\nok", False),  # a line under 8 characters may repeat
            ("Paris is the capital.\nParis is the capital.", False),  # twice is no loop
            ("The capital of France is Paris. It is on the Seine.", False),
            ("", False),
        ],
    )
    def test_loop_detection(self, text: str, looping: bool) -> None:
        """A loop is a line of 8+ characters or an 8-word sequence seen 3+ times."""
        assert is_looping(text) is looping

    def test_echo_detection(self) -> None:
        """A reply with no words beyond the question's (or no words at all) only echoes."""
        assert only_echoes("What is the capital of France?", " What is the capital of France")
        assert only_echoes("Why?", "  ")
        assert not only_echoes("What is the capital of France?", "Paris.")

    def test_summary_figures(self) -> None:
        """Shares count stop, loops and echoes over all replies; the median is of tokens."""
        results = [
            ReplyResult("q1", "A fine answer.", "stop", 4),
            ReplyResult("q2", "x y z w v u t s " * 3, "length", 30),
            ReplyResult("q3", "q3", "stop", 2),
            ReplyResult("q4", "Another answer here.", "stop", 10),
        ]
        assert summarize(results) == {
            "prompts": 4,
            "self_ended_share": 0.75,
            "loop_share": 0.25,
            "echo_share": 0.25,
            "median_completion_tokens": 7.0,
        }
        with pytest.raises(ValueError):
            summarize([])


class TestPromptLists:
    def test_shipped_and_held_out_lists(self) -> None:
        """The shipped list has at least 30 distinct prompts; the held-out list shares none
        of them (it measures prompts the mechanism was not tuned on)."""
        shipped = load_prompts()
        held_out = load_prompts(HELD_OUT_PROMPTS)
        assert len(set(shipped)) == len(shipped) >= 30
        assert len(held_out) >= 20
        assert not set(shipped) & set(held_out)
        assert DEFAULT_PROMPTS_PATH.parent.name == "inference"  # package data, shipped

    def test_empty_or_missing_list_is_refused(self, tmp_path: Path) -> None:
        """A file with only comments, or no file, is a PromptListError."""
        empty = tmp_path / "empty.txt"
        empty.write_text("# nothing\n\n", encoding="utf-8")
        for path in (empty, tmp_path / "missing.txt"):
            with pytest.raises(PromptListError):
                load_prompts(path)


class TestEvalCommand:
    def test_runs_on_the_tiny_model(
        self,
        tiny_catalog_path: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        no_catalog_env: None,
    ) -> None:
        """`eval replies` runs every prompt and ends with one JSON line of its figures; the
        random tiny model never stops by itself, so every reply runs to the limit."""
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("# a comment\nfirst prompt\nsecond one\nthird\n", encoding="utf-8")
        argv = ["eval", "replies", "--catalog", str(tiny_catalog_path), "--model", TINY]
        code = main([*argv, "--prompts", str(prompts), "--max-new-tokens", "6"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert code == 0
        figures = json.loads(lines[-1])
        assert set(figures) >= FIGURE_KEYS
        assert figures["prompts"] == 3
        assert figures["self_ended_share"] == 0.0
        assert figures["median_completion_tokens"] == 6
        assert sum(line.startswith("length") for line in lines) == 3

    def test_usage_errors_exit_2(
        self, tiny_catalog_path: Path, tmp_path: Path, no_catalog_env: None
    ) -> None:
        """An unknown model, a missing prompt file or a bad limit is a usage error."""
        base = ["eval", "replies", "--catalog", str(tiny_catalog_path)]
        assert main([*base, "--model", "nope"]) == 2
        assert main([*base, "--model", TINY, "--prompts", str(tmp_path / "no.txt")]) == 2
        assert main([*base, "--model", TINY, "--max-new-tokens", "0"]) == 2


@pytest.mark.real_model
class TestBundledModelEndsItsReplies:
    def test_a_few_prompts_end_by_themselves(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_catalog_env: None
    ) -> None:
        """The bundled 270M, greedy, ends held-out replies by itself, without loops, with
        replies that say more than the question."""
        prompts = tmp_path / "prompts.txt"
        held_out = load_prompts(HELD_OUT_PROMPTS)[:4]
        prompts.write_text("\n".join(held_out), encoding="utf-8")
        assert main(["eval", "replies", "--prompts", str(prompts)]) == 0
        figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert figures["self_ended_share"] >= 0.75
        assert figures["loop_share"] == 0.0
        assert figures["echo_share"] == 0.0
        assert figures["median_completion_tokens"] >= 3
