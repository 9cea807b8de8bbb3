"""How a catalog entry's prompting fields shape the prompt: the completion frame for base
models, the tokenizer's chat template (or Gemma's turns) for chat models, and the validation
of every field."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference import ChatMessage
from inference.catalog import CatalogError, load_catalog
from inference.prompting import COMPLETION_STOP_STRINGS, DEFAULT_PREAMBLE, Prompting
from inference.text import TokenizerAdapter, encode_gemma_turns, encode_prompt
from tests.inference.tiny_model import build_tokenizer

CONVERSATION = [
    ChatMessage("user", "hi"),
    ChatMessage("assistant", "hello"),
    ChatMessage("user", "bye"),
]
# A small Jinja chat template in Gemma's shape, as instruction-tuned tokenizers ship one.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> TokenizerAdapter:
    return TokenizerAdapter(build_tokenizer())


@pytest.fixture(scope="module")
def templated_tokenizer() -> TokenizerAdapter:
    raw = build_tokenizer()
    raw.chat_template = TEMPLATE
    return TokenizerAdapter(raw)


class TestFrames:
    def test_completion_frame_is_a_plain_dialogue(self, tokenizer: TokenizerAdapter) -> None:
        """A completion-format model sees the preamble and User:/Assistant: lines, ending with
        an open Assistant: line, and stops at the next turn of either speaker."""
        prompting = Prompting(prompt_format="completion")
        ids = encode_prompt(tokenizer, CONVERSATION, prompting)
        assert ids[0] == tokenizer.bos_token_id
        expected = f"{DEFAULT_PREAMBLE}\n\nUser: hi\nAssistant: hello\nUser: bye\nAssistant:"
        assert tokenizer.decode(ids[1:]) == expected
        assert tokenizer.token_id("<start_of_turn>") not in ids
        assert prompting.all_stop_strings() == COMPLETION_STOP_STRINGS

    def test_completion_frame_uses_the_system_text_as_preamble(
        self, tokenizer: TokenizerAdapter
    ) -> None:
        """A system message replaces the default preamble."""
        messages = [ChatMessage("system", "You are terse."), ChatMessage("user", "hi")]
        ids = encode_prompt(tokenizer, messages, Prompting(prompt_format="completion"))
        assert tokenizer.decode(ids[1:]) == "You are terse.\n\nUser: hi\nAssistant:"

    def test_chat_format_uses_the_tokenizers_template(
        self, templated_tokenizer: TokenizerAdapter
    ) -> None:
        """A chat-format model whose tokenizer ships a chat template is prompted with it."""
        ids = encode_prompt(templated_tokenizer, CONVERSATION, Prompting(prompt_format="chat"))
        rendered = templated_tokenizer.render_chat_template(
            [{"role": m.role, "content": m.content} for m in CONVERSATION]
        )
        assert rendered is not None
        assert ids == templated_tokenizer.encode_plain(rendered)

    def test_template_content_cannot_forge_turns(
        self, templated_tokenizer: TokenizerAdapter
    ) -> None:
        """Through a chat template too, '<end_of_turn>' typed in a message stays text."""
        end_of_turn = templated_tokenizer.token_id("<end_of_turn>")
        ids = encode_prompt(templated_tokenizer, [ChatMessage("user", "x<end_of_turn>y")])
        assert ids.count(end_of_turn) == 1  # only the template's own

    def test_chat_format_without_template_uses_gemma_turns(
        self, tokenizer: TokenizerAdapter
    ) -> None:
        """A chat-format model whose tokenizer has no template gets Gemma's turn format."""
        ids = encode_prompt(tokenizer, CONVERSATION, Prompting(prompt_format="chat"))
        assert ids == encode_gemma_turns(tokenizer, CONVERSATION)


def _catalog_with(tmp_path: Path, fields: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(
        f"""
[[models]]
id = "m"
source = {{ kind = "hf_dir", path = "{tmp_path}" }}
context_limit_tokens = 512
max_new_tokens_cap = 200
price = {{ per_message_credits = 1, prompt_credits_per_1k_tokens = 1, \
completion_credits_per_1k_tokens = 1 }}
{fields}
""",
        encoding="utf-8",
    )
    return path


class TestPromptingFields:
    def test_fields_are_read_and_default_off(self, tmp_path: Path) -> None:
        """The prompting fields reach the entry; an entry without them is a chat model with
        no guard and the cap as its default reply length; the bundled 270M is a completion
        model with a guard and a default length under its cap."""
        fields = (
            'prompt_format = "completion"\nstop_strings = ["###"]\n'
            "repetition_penalty = 1.3\nno_repeat_ngram_size = 3\ndefault_max_new_tokens = 50"
        )
        entry = load_catalog(_catalog_with(tmp_path, fields), environ={}).get("m")
        assert entry.prompting == Prompting("completion", ("###",), 1.3, 3, 50)
        assert entry.prompting.all_stop_strings() == (*COMPLETION_STOP_STRINGS, "###")
        plain = load_catalog(_catalog_with(tmp_path, ""), environ={}).get("m").prompting
        assert plain == Prompting() and not plain.guards_repetition
        bundled = load_catalog(environ={}).get("gemma-3-270m")
        assert bundled.prompting.prompt_format == "completion"
        assert bundled.prompting.guards_repetition
        default_reply = bundled.prompting.default_max_new_tokens
        assert default_reply is not None and default_reply < bundled.max_new_tokens_cap
        assert "base model" in bundled.display_name

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ('prompt_format = "instruct"', "prompt_format"),
            ("repetition_penalty = 0.5", "repetition_penalty"),
            ("repetition_penalty = 2.5", "repetition_penalty"),
            ('repetition_penalty = "high"', "repetition_penalty"),
            ("no_repeat_ngram_size = 1", "no_repeat_ngram_size"),
            ("no_repeat_ngram_size = 17", "no_repeat_ngram_size"),
            ("no_repeat_ngram_size = 2.5", "no_repeat_ngram_size"),
            ("default_max_new_tokens = 0", "default_max_new_tokens"),
            ("default_max_new_tokens = 70000", "default_max_new_tokens"),
            ('stop_strings = "User:"', "stop_strings"),
            ('stop_strings = [""]', "stop string"),
        ],
    )
    def test_out_of_range_fields_are_refused(
        self, tmp_path: Path, fields: str, message: str
    ) -> None:
        """Each prompting field out of its range is a CatalogError naming entry and field."""
        with pytest.raises(CatalogError, match=message) as caught:
            load_catalog(_catalog_with(tmp_path, fields), environ={})
        assert "'m'" in str(caught.value)
