"""Writes a tiny random Gemma 3 as a GGUF file, laid out as llama.cpp writes Gemma 3 (tensor
names, norm weights stored as 1 + w, a SentencePiece-style token list), so the real GGUF
conversion path of transformers runs on it in a second; and holds a cache directory's conversion
lock as another process converting into it would, so a start stays in its preparation for as
long as a test needs."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf
import torch
from transformers import Gemma3ForCausalLM

from tests.inference.tiny_model import build_config, build_tokenizer

_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}
_SPECIAL = {"<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"}
# GGUF token types (llama.cpp): normal 1, unknown 2, control 3, byte 6.
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def tiny_gguf_model(seed: int) -> Gemma3ForCausalLM:
    """The model the GGUF holds. GGUF metadata has no per-layer attention types, so the
    layers follow Gemma 3's default pattern (all sliding for four layers)."""
    config = build_config(vocab_size=len(build_tokenizer()))
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    model = tiny_gguf_model(seed)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
    writer.add_sliding_window(config.sliding_window)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([_token_type(token) for token in tokens])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    for key, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if key == "lm_head.weight":
            continue  # tied to the embedding
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name, array = "output_norm.weight", array + 1
        else:
            parts = key.split(".")  # model.layers.<i>.<module path>.weight
            short = _LAYER_TENSORS[".".join(parts[3:-1])]
            name = f"blk.{parts[2]}.{short}.weight"
            if short.endswith("norm"):
                array = array + 1  # llama.cpp stores Gemma's norm weights as 1 + w
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@contextmanager
def conversion_lock_held(cache_dir: Path) -> Iterator[None]:
    """While this block runs, `cache_dir`'s conversion lock is held (an exclusive `flock` on
    the directory, as `inference.gguf_cache` takes it): a conversion into it, in this process
    or another, waits in its `waiting_for_conversion` stage."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(cache_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def tiny_gguf_catalog_entry(model_id: str, gguf_path: Path, extra: str = "") -> str:
    """A catalog entry serving the GGUF at `gguf_path` (converted at its first load)."""
    return f"""
[[models]]
id = "{model_id}"
display_name = "{model_id} (tiny GGUF)"
source = {{ kind = "gguf_file", path = "{gguf_path}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = 256
max_new_tokens_cap = 16
price = {{ per_message_credits = 1, prompt_credits_per_1k_tokens = 50, \
completion_credits_per_1k_tokens = 100 }}
{extra}
"""


def _token_type(token: str) -> int:
    if token in _SPECIAL:
        return _CONTROL
    if token == "<unk>":
        return _UNKNOWN
    if token.startswith("<0x") and len(token) == 6:
        return _BYTE
    return _NORMAL
