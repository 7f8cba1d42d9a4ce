#!/usr/bin/env python3
"""Writes the engine's parity fixtures under tests/fixtures/models/ with HuggingFace transformers.

Every fixture is a reference no one here wrote: random-weight models built and run by
`transformers`, and the real pretrained stories260K run by `transformers` too. The Rust tests
(tests/engine_parity.rs) load the same folders with `circuit::model::Model` and compare.

    /tmp/venv/bin/python scripts/make_reference.py            # rewrites the fixtures
    /tmp/venv/bin/python scripts/make_reference.py neox_parallel_f16   # only the ones named
    /tmp/venv/bin/pip install -r scripts/requirements.txt     # the pinned versions

Per model folder:
  config.json, model.safetensors, tokenizer.json   (what `Model::load` reads; not for stories260K,
                                                    whose files stay in ../shared/models)
  expected.safetensors    for prompt i: `prompt{i}.ids` (T,) i64, `prompt{i}.logits` (T, V) f32,
                          `prompt{i}.hidden` (L+1, T, D) HF hidden_states (last one after the final
                          norm), `prompt{i}.attn` (L, H, T, T) eager attention patterns
  expected.json           the prompt texts (and, where generated, the greedy continuation of
                          `greedy_prompt`: `greedy_ids`, the ids HF's `generate` appended)
"""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
from transformers import (Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel,
                          GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "models"
STORIES = ROOT.parent / "shared" / "models" / "stories260K"

PROMPTS = [
    "Once upon a time",
    "The cat sat",
    "A",
    "Tom and Lily went to the park to play with a red ball.",
]

CORPUS = [
    "Once upon a time there was a little girl named Lily. She loved to play outside in the park.",
    "The cat sat on the mat. The dog sat on the log. Tom and Lily went to the park.",
    "A red ball, a blue ball and a green ball. They played with the ball all day long.",
] * 20


def tiny_tokenizer(vocab_size: int, add_bos: bool) -> Tokenizer:
    """A byte-level BPE with `vocab_size` ids, trained on a few sentences (GPT-2 style)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Replaces HF's init (std 0.02, zero biases, unit norms) by larger random values, so that
    every weight (biases and norm gains included) moves the logits and a wrong index shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "ln" in name or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def run_reference(model, tok: Tokenizer, prompts, folder: Path, extra=None):
    tensors = {}
    for i, text in enumerate(prompts):
        ids = tok.encode(text).ids
        with torch.no_grad():
            out = model(
                torch.tensor([ids]),
                output_hidden_states=True,
                output_attentions=True,
            )
        tensors[f"prompt{i}.ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"prompt{i}.logits"] = out.logits[0].float().contiguous()
        tensors[f"prompt{i}.hidden"] = torch.stack([h[0] for h in out.hidden_states]).float().contiguous()
        tensors[f"prompt{i}.attn"] = torch.stack([a[0] for a in out.attentions]).float().contiguous()
    save_file(tensors, str(folder / "expected.safetensors"))
    meta = {"prompts": prompts, "generator": "scripts/make_reference.py",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    meta.update(extra or {})
    (folder / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")


def save_model(model, tok: Tokenizer, folder: Path, dtype):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    # save_pretrained may add generation_config.json; the engine does not read it.
    (folder / "generation_config.json").unlink(missing_ok=True)
    # The reference is HF loading the saved folder and computing in f32 from the values as
    # stored (rounded to dtype), as the engine does. (Casting the in-memory model back would
    # also leave buffers such as Llama's rotary inv_freq rounded to the storage dtype.)
    return type(model).from_pretrained(folder, dtype=torch.float32,
                                       attn_implementation="eager").eval()


def gpt2_tiny():
    """3 layers, 5 heads, d_model 80, an MLP width (160) that is not 4·d, vocab 300, F32."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = GPT2Config(n_layer=3, n_head=5, n_embd=80, n_inner=160, vocab_size=300,
                        n_positions=48, layer_norm_epsilon=1e-5, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    randomize(model, 1)
    folder = OUT / "gpt2-tiny"
    model = save_model(model, tok, folder, torch.float32)
    run_reference(model, tok, PROMPTS, folder)


def gpt2_f16():
    """2 layers, 4 heads, d_model 32, vocab 300 (> tokenizer's 280: padded embeddings), F16."""
    tok = tiny_tokenizer(280, add_bos=False)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=300, n_positions=32,
                        bos_token_id=0, eos_token_id=0,
                        attn_implementation="eager")
    torch.manual_seed(2)
    model = GPT2LMHeadModel(config).eval()
    randomize(model, 3)
    folder = OUT / "gpt2-f16"
    model = save_model(model, tok, folder, torch.float16)
    run_reference(model, tok, PROMPTS, folder)


def llama_gqa_bf16():
    """2 layers, 6 query heads sharing 2 key/value heads, head 8, rope_theta 500, BF16."""
    tok = tiny_tokenizer(300, add_bos=True)
    config = LlamaConfig(hidden_size=48, intermediate_size=100, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, vocab_size=300,
                         max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
                         bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(4)
    model = LlamaForCausalLM(config).eval()
    randomize(model, 5)
    folder = OUT / "llama-gqa-bf16"
    model = save_model(model, tok, folder, torch.bfloat16)
    run_reference(model, tok, PROMPTS, folder)


def greedy(model, tok: Tokenizer, prompt: str, new_tokens: int) -> dict:
    """HF's greedy `generate` from `prompt`: the ids it appends (random models produce arbitrary
    but deterministic tokens, so ids are compared, not text)."""
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                   min_new_tokens=new_tokens)
    return {"greedy_prompt": prompt, "greedy_ids": generated[0, len(ids):].tolist()}


def neox_parallel_f16():
    """GPT-NeoX (Pythia's wiring): parallel residual, partial rotary (a quarter of each head,
    rotary base 2000), q/k/v fused per head, exact GELU, untied embed_out; 3 layers, 4 heads of
    16, an MLP width (144) that is not 4·d, F16. config.json in transformers 5's spelling
    (`rope_parameters`)."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = GPTNeoXConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                           intermediate_size=144, vocab_size=300, max_position_embeddings=64,
                           rotary_pct=0.25, rotary_emb_base=2000, use_parallel_residual=True,
                           layer_norm_eps=1e-5, hidden_act="gelu", tie_word_embeddings=False,
                           bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(6)
    model = GPTNeoXForCausalLM(config).eval()
    randomize(model, 7)
    folder = OUT / "neox-parallel-f16"
    model = save_model(model, tok, folder, torch.float16)
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[1], 8))


def neox_sequential_bf16():
    """GPT-NeoX with `use_parallel_residual: false` (the MLP reads the attention's output), half
    of each head rotated (rotary base 500), no attention biases; 2 layers, 3 heads of 16, BF16.
    Its config.json is rewritten in the spelling of transformers 4 (and of the Pythia configs
    on the hub): `rotary_pct`, `rotary_emb_base`; the reference is HF reading that file."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = GPTNeoXConfig(hidden_size=48, num_attention_heads=3, num_hidden_layers=2,
                           intermediate_size=80, vocab_size=300, max_position_embeddings=64,
                           rotary_pct=0.5, rotary_emb_base=500, use_parallel_residual=False,
                           attention_bias=False, layer_norm_eps=1e-5, hidden_act="gelu",
                           tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                           attn_implementation="eager")
    torch.manual_seed(8)
    model = GPTNeoXForCausalLM(config).eval()
    randomize(model, 9)
    folder = OUT / "neox-sequential-bf16"
    save_model(model, tok, folder, torch.bfloat16)
    path = folder / "config.json"
    written = json.loads(path.read_text())
    rope = written.pop("rope_parameters")
    assert rope.get("rope_type", "default") == "default", rope
    written["rotary_pct"] = rope["partial_rotary_factor"]
    written["rotary_emb_base"] = rope["rope_theta"]
    path.write_text(json.dumps(written, indent=2) + "\n")
    model = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.5
    assert model.config.rope_parameters["rope_theta"] == 500
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[0], 8))


def qwen2_tied_f32():
    """Qwen2: Llama's blocks with q/k/v biases (random, like every weight), 2 layers, 4 query
    heads sharing 2 key/value heads of 12, rope_theta 300, tied embeddings (as Qwen2-0.5B), F32.
    `sliding_window` and `max_window_layers` are set as the hub's configs set them, with
    `use_sliding_window: false` (the window is off, as in every released Qwen2)."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = Qwen2Config(hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                         max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=300.0,
                         tie_word_embeddings=True, use_sliding_window=False, sliding_window=4,
                         max_window_layers=1, bos_token_id=0, eos_token_id=0,
                         attn_implementation="eager")
    torch.manual_seed(10)
    model = Qwen2ForCausalLM(config).eval()
    randomize(model, 11)
    folder = OUT / "qwen2-tied-f32"
    model = save_model(model, tok, folder, torch.float32)
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[0], 8))


def mistral_head_dim_bf16():
    """Mistral (v0.3's form: `sliding_window: null`): Llama's blocks without biases, with an
    explicit head_dim (16) that is not hidden_size / heads (48 / 4 = 12), so q is 64 wide; 2
    layers, 4 query heads sharing 1 key/value head, rope_theta 1000, untied, BF16."""
    tok = tiny_tokenizer(300, add_bos=True)
    config = MistralConfig(hidden_size=48, intermediate_size=88, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                           vocab_size=300, max_position_embeddings=64, rms_norm_eps=1e-5,
                           rope_theta=1000.0, sliding_window=None, tie_word_embeddings=False,
                           bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(12)
    model = MistralForCausalLM(config).eval()
    randomize(model, 13)
    folder = OUT / "mistral-head-dim-bf16"
    model = save_model(model, tok, folder, torch.bfloat16)
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[1], 8))


def mistral_window_f32():
    """Mistral-7B-v0.1's form: a sliding window on every layer, here of 3 keys, shorter than
    every prompt but "A", so it binds at most positions; 3 layers, 4 query heads sharing 2
    key/value heads of 8, rope_theta 800, untied, F32."""
    tok = tiny_tokenizer(300, add_bos=True)
    config = MistralConfig(hidden_size=32, intermediate_size=56, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                           max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=800.0,
                           sliding_window=3, tie_word_embeddings=False, bos_token_id=0,
                           eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(14)
    model = MistralForCausalLM(config).eval()
    randomize(model, 15)
    folder = OUT / "mistral-window-f32"
    model = save_model(model, tok, folder, torch.float32)
    assert model.config.sliding_window == 3
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[3], 8))


def qwen2_window_f16():
    """Qwen2 with `use_sliding_window: true`, a window of 4 keys and `max_window_layers: 1`:
    layer 0 attends to every key, layers 1 and 2 slide. config.json is rewritten without
    `layer_types` (the spelling of transformers 4 and the hub's Qwen2 configs), so the layers
    come from `max_window_layers`; the reference is HF reading that file. 3 layers, 4 query
    heads sharing 2 key/value heads of 8, rope_theta 600, untied, F16."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                         max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=600.0,
                         tie_word_embeddings=False, use_sliding_window=True, sliding_window=4,
                         max_window_layers=1, bos_token_id=0, eos_token_id=0,
                         attn_implementation="eager")
    torch.manual_seed(16)
    model = Qwen2ForCausalLM(config).eval()
    randomize(model, 17)
    folder = OUT / "qwen2-window-f16"
    save_model(model, tok, folder, torch.float16)
    path = folder / "config.json"
    written = json.loads(path.read_text())
    written.pop("layer_types", None)
    path.write_text(json.dumps(written, indent=2) + "\n")
    model = Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention",
                                        "sliding_attention"], model.config.layer_types
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[3], 8))


def gemma2_bf16():
    """Gemma 2: GeGLU (gelu_pytorch_tanh), RMSNorm with (1 + w), embeddings scaled by √48,
    pre- and post-norms around attention and MLP, soft caps small enough to bind on these
    random weights (attention 4, final logits 5), query_pre_attn_scalar 24 (not head_dim), an
    explicit head_dim (16, not 48 / 4 = 12), 4 query heads sharing 2 key/value heads, rope_theta
    700, tied embeddings, 3 layers, BF16. Sliding windows of 4 keys on the default layers (0 and
    2), shorter than most prompts, so they bind."""
    tok = tiny_tokenizer(300, add_bos=True)
    config = Gemma2Config(hidden_size=48, intermediate_size=88, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          vocab_size=300, max_position_embeddings=64, rms_norm_eps=1e-6,
                          rope_theta=700.0, query_pre_attn_scalar=24,
                          attn_logit_softcapping=4.0, final_logit_softcapping=5.0,
                          sliding_window=4, hidden_activation="gelu_pytorch_tanh",
                          tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                          pad_token_id=0, attn_implementation="eager")
    torch.manual_seed(14)
    model = Gemma2ForCausalLM(config).eval()
    randomize(model, 15)
    folder = OUT / "gemma2-bf16"
    model = save_model(model, tok, folder, torch.bfloat16)
    assert model.config.layer_types == ["sliding_attention", "full_attention",
                                        "sliding_attention"], model.config.layer_types
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[3], 8))


def qwen2_layer_types_bf16():
    """Qwen2 in transformers 5's spelling: `layer_types` sliding, full, sliding (which no
    `max_window_layers` gives: the list decides), a window of 3 keys, tied embeddings; 3
    layers, 2 query heads sharing 1 key/value head of 12, rope_theta 400, BF16."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = Qwen2Config(hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=12,
                         vocab_size=300, max_position_embeddings=64, rms_norm_eps=1e-6,
                         rope_theta=400.0, tie_word_embeddings=True, use_sliding_window=True,
                         sliding_window=3, max_window_layers=2,
                         layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                         bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(18)
    model = Qwen2ForCausalLM(config).eval()
    randomize(model, 19)
    folder = OUT / "qwen2-layer-types-bf16"
    model = save_model(model, tok, folder, torch.bfloat16)
    written = json.loads((folder / "config.json").read_text())
    assert written["layer_types"] == ["sliding_attention", "full_attention",
                                      "sliding_attention"], written
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[3], 8))


def stories260k():
    """Only the reference outputs are committed; the model stays in ../shared/models."""
    tok = Tokenizer.from_file(str(STORIES / "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(STORIES, attn_implementation="eager").eval()
    ids = tok.encode("Once upon a time").ids
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    continuation = tok.decode(generated[0, len(ids):].tolist())
    print("stories260K greedy:", repr(continuation))
    folder = OUT / "stories260K"
    folder.mkdir(parents=True, exist_ok=True)
    run_reference(model, tok, PROMPTS, folder,
                  {"greedy_prompt": "Once upon a time", "greedy_new_tokens": 20,
                   "greedy_continuation": continuation})


def qwen3_bf16():
    """Qwen3: Llama's blocks with a per-head RMSNorm of q and of k before rotary (`q_norm`,
    `k_norm`, random gains like every norm), an explicit head_dim (12) that is not
    hidden_size / heads (40 / 4 = 10), no biases (`attention_bias: false`), 3 layers, 4 query
    heads sharing 2 key/value heads, rope_theta 700, tied embeddings (as Qwen3-0.6B), and a
    sliding window of 3 keys from layer 1 on (`max_window_layers: 1`), BF16."""
    tok = tiny_tokenizer(300, add_bos=False)
    config = Qwen3Config(hidden_size=40, intermediate_size=56, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                         vocab_size=300, max_position_embeddings=64, rms_norm_eps=1e-6,
                         rope_theta=700.0, attention_bias=False, tie_word_embeddings=True,
                         use_sliding_window=True, sliding_window=3, max_window_layers=1,
                         bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(20)
    model = Qwen3ForCausalLM(config).eval()
    randomize(model, 21)
    folder = OUT / "qwen3-bf16"
    model = save_model(model, tok, folder, torch.bfloat16)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    run_reference(model, tok, PROMPTS, folder, greedy(model, tok, PROMPTS[0], 8))


if __name__ == "__main__":
    torch.set_num_threads(1)
    FIXTURES = [gpt2_tiny, gpt2_f16, llama_gqa_bf16, neox_parallel_f16, neox_sequential_bf16,
                qwen2_tied_f32, mistral_head_dim_bf16, gemma2_bf16, stories260k,
                mistral_window_f32, qwen2_window_f16, qwen2_layer_types_bf16, qwen3_bf16]
    # Names on the command line (e.g. `neox_parallel_f16`) rewrite only those fixtures.
    chosen = sys.argv[1:] or [f.__name__ for f in FIXTURES]
    for fixture in FIXTURES:
        if fixture.__name__ in chosen:
            fixture()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")
