"""`circuit.Model`: tokens, logits and the activation cache, against the CLI, against
HuggingFace transformers (the committed parity fixture of tests/engine_parity.rs), and against
the identities the cache's tensors must satisfy."""

import json
import struct

import numpy as np
import pytest

import circuit
from conftest import ROOT, cli_json

GPT2_TINY = ROOT / "tests/fixtures/models/gpt2-tiny"


def read_safetensors(path):
    """A safetensors file as numpy arrays (the format: u64 header length, JSON header, data)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64, "F64": np.float64, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(raw, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def test_end_logits_equal_circuit_run():
    model = circuit.Model("toy-seqcont")
    report = cli_json("run", "--prompt", "1 2 3", "--logits", "--format", "json")
    prompt = report["prompts"][0]
    ids = model.tokenize("1 2 3")
    assert ids.tolist() == prompt["token_ids"]
    assert ids.dtype == np.int64
    logits = model.forward(ids)
    assert logits.dtype == np.float32
    assert logits.shape == (1, len(ids), model.config["vocab_size"])
    np.testing.assert_array_equal(logits[0, -1], np.array(prompt["logits"], dtype=np.float32))


def test_tokens_are_those_dataset_inspect_shows():
    model = circuit.Model("toy-seqcont")
    report = cli_json("dataset", "inspect", "seqcont.numerals", "--n", "2", "--format", "json")
    for prompt in report["prompts"]:
        ids = model.tokenize(prompt["prompt"])
        assert ids.tolist() == [t["id"] for t in prompt["tokens"]]
        assert model.to_str_tokens(ids) == [t["text"] for t in prompt["tokens"]]


FAMILY_FIXTURES = sorted(
    p.name for p in (ROOT / "tests/fixtures/models").iterdir() if (p / "expected.safetensors").exists()
)
# The real pretrained model's weights live in ../shared; only its reference is committed.
MODEL_FOLDER = {"stories260K": ROOT.parent / "shared/models/stories260K"}


@pytest.mark.parametrize("fixture", FAMILY_FIXTURES)
def test_cache_matches_transformers_hidden_states_and_attentions(fixture):
    """`blocks.{l}.hook_resid_pre` is transformers' `hidden_states[l]`, `attn.hook_pattern` its
    eager `attentions[l]`, the logits its logits (fixtures from scripts/make_reference.py), on
    every family's parity fixture: GPT-2, Llama, GPT-NeoX, Qwen2, Qwen3, Mistral, Gemma 2."""
    folder = ROOT / "tests/fixtures/models" / fixture
    expected = read_safetensors(folder / "expected.safetensors")
    model = circuit.Model(str(MODEL_FOLDER.get(fixture, folder)))
    n_layers = model.config["n_layers"]
    n_prompts = len([k for k in expected if k.endswith(".ids")])
    assert n_prompts >= 2
    for i in range(n_prompts):
        ids = expected[f"prompt{i}.ids"]
        logits, cache = model.forward(ids, cache=True)
        np.testing.assert_allclose(logits[0], expected[f"prompt{i}.logits"], atol=1e-4, rtol=0)
        hidden = expected[f"prompt{i}.hidden"]  # (L+1, T, D); the last one after the final norm
        attn = expected[f"prompt{i}.attn"]  # (L, H, T, T)
        for l in range(n_layers):
            np.testing.assert_allclose(cache[f"blocks.{l}.hook_resid_pre"][0], hidden[l], atol=1e-4, rtol=0)
            np.testing.assert_allclose(cache[f"blocks.{l}.attn.hook_pattern"][0], attn[l], atol=1e-4, rtol=0)


def test_cache_names_shapes_and_identities():
    model = circuit.Model("toy-seqcont")
    c = model.config
    L, H, D, d = c["n_layers"], c["n_heads"], c["d_model"], c["d_head"]
    ids = np.stack([model.tokenize("1 2 3 4"), model.tokenize("5 6 7 8")])  # (B, T)
    B, T = ids.shape
    logits, cache = model.forward(ids, cache=True)
    assert logits.shape == (B, T, c["vocab_size"])
    shapes = {
        "hook_resid_pre": (B, T, D),
        "attn.hook_q": (B, T, H, d),
        "attn.hook_k": (B, T, c["n_kv_heads"], d),
        "attn.hook_v": (B, T, c["n_kv_heads"], d),
        "attn.hook_attn_scores": (B, H, T, T),
        "attn.hook_pattern": (B, H, T, T),
        "attn.hook_z": (B, T, H, d),
        "attn.hook_result": (B, T, H, D),
        "hook_attn_out": (B, T, D),
        "hook_resid_mid": (B, T, D),
        "hook_mlp_out": (B, T, D),
        "hook_resid_post": (B, T, D),
    }
    assert set(cache) == {f"blocks.{l}.{k}" for l in range(L) for k in shapes}
    for l in range(L):
        for k, shape in shapes.items():
            assert cache[f"blocks.{l}.{k}"].shape == shape, k
            assert cache[f"blocks.{l}.{k}"].dtype == np.float32
    for l in range(L):
        b = f"blocks.{l}."
        np.testing.assert_allclose(cache[b + "hook_resid_mid"], cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"], atol=1e-5)
        np.testing.assert_allclose(cache[b + "hook_resid_post"], cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"], atol=1e-5)
        if l + 1 < L:
            np.testing.assert_array_equal(cache[b + "hook_resid_post"], cache[f"blocks.{l + 1}.hook_resid_pre"])
        pattern = cache[b + "attn.hook_pattern"]
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
        assert np.all(np.triu(pattern[0, 0], 1) == 0), "causal"
        z = np.einsum("bhqk,bkhd->bqhd", pattern, cache[b + "attn.hook_v"])
        np.testing.assert_allclose(cache[b + "attn.hook_z"], z, atol=1e-5)
    # A batch row is the prompt alone.
    alone = model.forward(ids[1])
    np.testing.assert_allclose(logits[1:], alone, atol=1e-5)


def test_lists_and_any_integer_dtype_are_accepted():
    model = circuit.Model("toy-seqcont")
    ids = model.tokenize("1 2 3")
    want = model.forward(ids)
    for given in [ids.tolist(), [ids.tolist()], ids.astype(np.int32), ids.astype(np.uint32), ids.astype(np.uint8)]:
        np.testing.assert_array_equal(model.forward(given), want)


@pytest.mark.parametrize(
    "ids, error, message",
    [
        (np.array([1.0, 2.0]), TypeError, "integer array"),
        (np.array([[[1, 2]]]), ValueError, "shape (T,) or (B, T)"),
        (np.zeros((0,), dtype=np.int64), ValueError, "at least one token"),
        (np.array([3, -1]), ValueError, "token id -1"),
        ("1 2 3", TypeError, "integer array"),
        (np.array([True, False]), TypeError, "integer array"),
    ],
)
def test_wrong_ids_raise_clear_errors(ids, error, message):
    model = circuit.Model("toy-seqcont")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.forward(ids)


def test_engine_errors_carry_their_code():
    model = circuit.Model("toy-seqcont")
    with pytest.raises(circuit.CircuitError) as e:
        model.forward(np.array([3, 10**6]))
    assert e.value.code == "circuit::model::token_out_of_range"
    assert "×" in e.value.report and e.value.message in e.value.report
    with pytest.raises(circuit.CircuitError) as e:
        model.forward(np.ones(model.config["n_ctx"] + 1, dtype=np.int64))
    assert e.value.code == "circuit::model::prompt_too_long"
    with pytest.raises(circuit.CircuitError) as e:
        circuit.Model("no/such/model")
    assert e.value.code == "circuit::model::not_found"


@pytest.mark.parametrize(
    "fixture", ["llama-gqa-bf16", "neox-parallel-f16", "qwen2-tied-f32", "qwen3-bf16", "gemma2-bf16"]
)
def test_rotary_families_name_queries_and_keys_after_rotary(fixture):
    """Every family with rotary positions caches q and k after the rotation, as
    TransformerLens's `hook_rot_q` / `hook_rot_k`; GPT-2 (learned positions) has `hook_q`."""
    model = circuit.Model(str(ROOT / "tests/fixtures/models" / fixture))
    _, cache = model.forward(np.array([[1, 2, 3]]), cache=True)
    assert "blocks.0.attn.hook_rot_q" in cache and "blocks.0.attn.hook_rot_k" in cache
    assert "blocks.0.attn.hook_q" not in cache and "blocks.0.attn.hook_k" not in cache
    _, cache = circuit.Model(str(GPT2_TINY)).forward(np.array([[1, 2, 3]]), cache=True)
    assert "blocks.0.attn.hook_q" in cache and "blocks.0.attn.hook_rot_q" not in cache
