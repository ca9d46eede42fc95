"""Tiny pretrained checkpoints on disk, as a user brings them: transformers models built from
config with a real tokenizer, written with `save_pretrained` (safetensors), nothing downloaded.

The same loading code then reads them as it reads real weights (components/base).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import transformers

from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe

# A ChatML template, as Qwen2 ships it (without its tool-calling parts).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tiny sizes of each family's shapes; vocab_size and special ids are filled from the tokenizer.
SMALL = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(SMALL, num_key_value_heads=2, sliding_window=None)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(SMALL, num_key_value_heads=1, head_dim=12)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", SMALL),
    "phi": ("PhiConfig", "PhiForCausalLM", SMALL),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=48, n_layer=2, n_head=4, n_positions=256)),
    "bert": ("BertConfig", "BertForMaskedLM", SMALL),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", SMALL),
    "t5": ("T5Config", "T5ForConditionalGeneration", dict(d_model=48, d_kv=12, d_ff=96, num_layers=2, num_heads=4)),
    "bart": ("BartConfig", "BartForConditionalGeneration",
             dict(d_model=48, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=256)),
}
CAUSAL = ["llama", "qwen2", "mistral", "gemma", "gpt_neox", "phi", "gpt2"]


@lru_cache(maxsize=2)
def _tokenizer(chat: bool):
    docs = [f"{e.prompt}{e.response}" for e in generate_tasks(40, seed=1)]
    extra = 32  # T5-style sentinels, so every family can use it
    tokenizer = train_bpe(docs, TokenizerConfig(vocab_size=600, mask_token="<mask>", sentinel_tokens=extra))
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.chat_template = CHATML
    return tokenizer


def save_checkpoint(folder: Path, arch: str, chat: bool = False, seed: int = 0) -> Path:
    """Write a tiny random `arch` model (a key of CONFIGS) and its tokenizer into `folder` in
    Hugging Face format (safetensors). chat: the tokenizer carries a ChatML template, eos <|im_end|>."""
    config_name, model_name, shape = CONFIGS[arch]
    tokenizer = _tokenizer(chat)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if arch in ("t5", "bart"):
        ids["decoder_start_token_id"] = tokenizer.pad_token_id
    config = getattr(transformers, config_name)(**shape, **ids)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_pretrained_checkpoint(folder: Path, arch: str = "llama", chat: bool = True, steps: int = 300, seed: int = 0) -> Path:
    """`save_checkpoint`, then a few seconds of next-token training in-process on generated task text in the
    project's Alpaca format (other seeds than the instructions step's), so the base knows the tasks a little
    and a fine-tune shows a measurable gain, as with a real pretrained checkpoint. Causal archs only."""
    from components.core.sft import IGNORE_INDEX, encode_pair, pad_batch

    save_checkpoint(folder, arch, chat, seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token=tokenizer.eos_token,
                                                 pad_token=tokenizer.pad_token)  # no template: the Alpaca text as it is
    pairs = [encode_pair(plain, e.prompt, e.response) for e in generate_tasks(60, seed=seed + 101)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = pad_batch([pairs[i] for i in torch.randint(len(pairs), (32,), generator=generator).tolist()], tokenizer.pad_token_id)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)  # prompt and answer alike
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder, safe_serialization=True)
    return folder
