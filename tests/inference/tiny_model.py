"""Builds a tiny randomly initialised Gemma 3 and a small real tokenizer, saved as an ordinary
Hugging Face directory, so tests exercise the real loading and generation code in seconds.

The tokenizer knows Gemma's special tokens (<pad> 0, <eos> 1, <bos> 2, <start_of_turn>,
<end_of_turn>), every printable ASCII character, and SentencePiece-style byte fallback for
everything else, so a non-ASCII character is several byte tokens: exactly the case where
incremental detokenization must not split characters."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers
from tokenizers.models import BPE
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# Small enough that test prompts cross it, so sliding-window layers are really exercised.
SLIDING_WINDOW = 8


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for character in "▁\n" + string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )


def build_config(vocab_size: int) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,  # bitsandbytes CPU 4-bit kernels need output sizes divisible by 32
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention"] * 2 + ["full_attention", "sliding_attention"],
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        # Larger than the default so that greedy choices are clear-cut, not near-ties that
        # float rounding in a padded batch could flip.
        initializer_range=0.2,
    )


def save_tiny_gemma(directory: Path, seed: int = 0) -> Path:
    """Writes config, float32 safetensors and tokenizer to `directory`; returns it."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(build_config(vocab_size=len(tokenizer)))
    model.generation_config.eos_token_id = 1
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
