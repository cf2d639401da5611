"""Tiny randomly initialised models for fast tests and quick experiments.

They have the real architectures (Llama with grouped-query attention and tied embeddings;
GPT-2 with ``Conv1D`` layers) at a few hundred thousand to a few million parameters, so code that
works on them works on the real model. Their vocabulary matches the course tokenizer by default.
"""

from __future__ import annotations

import torch

__all__ = ["COURSE_VOCAB_SIZE", "tiny_llama", "tiny_gpt2"]

COURSE_VOCAB_SIZE = 49152  # SmolLM2's tokenizer


def tiny_llama(vocab_size: int = COURSE_VOCAB_SIZE, hidden_size: int = 64, num_layers: int = 2,
               num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
               tie_embeddings: bool = True, seed: int = 0):
    """A small ``LlamaForCausalLM`` (random weights, eval mode) shaped like SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size, max_position_embeddings=512,
        tie_word_embeddings=tie_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = COURSE_VOCAB_SIZE, n_embd: int = 64, n_layer: int = 2,
              n_head: int = 4, seed: int = 0):
    """A small ``GPT2LMHeadModel`` (random weights, eval mode): its linear layers are ``Conv1D``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        n_positions=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()
