"""A model load's progress: stages share the whole by their expected seconds, bytes move a
stage within its share, a changed plan keeps what was reached, and the fraction never goes
back nor reaches 100% before the load is done."""

from __future__ import annotations

import pytest

from inference.progress import (
    CONVERSION_STAGES,
    LOAD_STAGES,
    STAGE_SECONDS,
    LoadingState,
    LoadProgress,
)


class TestLoadProgress:
    def test_stages_share_the_whole_by_expected_seconds(self) -> None:
        """Beginning a stage moves the fraction to the sum of the shares before it."""
        progress = LoadProgress()
        progress.plan(LOAD_STAGES)
        assert progress.state() == LoadingState(0.0, "starting")
        progress.begin("loading_tokenizer")
        assert progress.state().fraction == 0.0
        progress.begin("loading_weights")
        expected = STAGE_SECONDS["loading_tokenizer"] / sum(STAGE_SECONDS[s] for s in LOAD_STAGES)
        assert progress.state().fraction == pytest.approx(expected)
        assert progress.state().label == "loading the weights"

    def test_bytes_move_within_the_stage_and_never_back(self) -> None:
        """advance() places the fraction inside the current stage's share; a smaller count
        later, or beginning an earlier stage again, does not lower it."""
        progress = LoadProgress()
        progress.plan(("hashing", "reading_gguf"))
        hashing_share = STAGE_SECONDS["hashing"] / (
            STAGE_SECONDS["hashing"] + STAGE_SECONDS["reading_gguf"]
        )
        progress.begin("hashing")
        progress.advance(50, 100)
        assert progress.state().fraction == pytest.approx(hashing_share / 2)
        progress.advance(10, 100)
        assert progress.state().fraction == pytest.approx(hashing_share / 2)
        progress.advance(500, 100)  # more than the total counts as all of it
        assert progress.state().fraction == pytest.approx(hashing_share)
        progress.begin("reading_gguf")
        reached = progress.state().fraction
        progress.begin("hashing")
        assert progress.state().fraction == reached

    def test_skipping_the_conversion_keeps_what_was_reached(self) -> None:
        """A GGUF already converted: after hashing, the load stages share the rest, so the
        percentage goes on from where hashing left it."""
        progress = LoadProgress()
        progress.plan((*CONVERSION_STAGES, *LOAD_STAGES))
        progress.begin("hashing")
        progress.advance(1, 1)
        after_hashing = progress.state().fraction
        assert 0 < after_hashing < 0.05
        progress.skip(CONVERSION_STAGES)
        progress.begin("loading_tokenizer")
        assert progress.state().fraction == after_hashing
        progress.begin("loading_weights")
        share_left = 1 - after_hashing
        tokenizer_part = STAGE_SECONDS["loading_tokenizer"] / sum(
            STAGE_SECONDS[s] for s in LOAD_STAGES
        )
        expected = after_hashing + share_left * tokenizer_part
        assert progress.state().fraction == pytest.approx(expected)

    def test_percent_reaches_100_only_when_finished(self) -> None:
        """The last stage's end is 99% at most; finish() makes it 100."""
        progress = LoadProgress()
        progress.plan(LOAD_STAGES)
        progress.begin("loading_weights")
        progress.advance(1, 1)
        assert progress.state().percent == 99
        progress.finish()
        assert progress.state().percent == 100

    def test_listener_sees_every_change(self) -> None:
        """on_change gets each new snapshot, in order."""
        seen: list[LoadingState] = []
        progress = LoadProgress(on_change=seen.append)
        progress.plan(LOAD_STAGES)
        progress.begin("loading_tokenizer")
        progress.begin("loading_weights")
        progress.finish()
        assert [state.stage for state in seen] == ["loading_tokenizer", "loading_weights", "done"]
