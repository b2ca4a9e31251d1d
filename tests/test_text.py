"""Text encoders, condition text and long context (tiny random CLIP/open_clip models, the real MiniLM)."""

from __future__ import annotations

import pytest
import torch

from histosynth.console import HistosynthError
from histosynth.text.condition import condition_text, context_length_for, level_of
from histosynth.text.encoders import BertEncoder, ClipEncoder, load_encoder
from histosynth.text.longcontext import interpolated_positions
from histosynth.text.testing import save_random_clip, save_random_open_clip
from histosynth.tokenizers import clip_bpe

REPORT = "Invasive ductal carcinoma, Nottingham grade 3, with lymphovascular invasion; TILs moderate."


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    return load_encoder(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm")


# ---- condition text ---------------------------------------------------------------------------
def test_level_of_bins_include_both_edges():
    levels = ["low", "high"]
    assert [level_of(p, levels) for p in (0.0, 0.49, 0.5, 1.0)] == ["low", "low", "high", "high"]
    assert [level_of(p, ["low", "mid", "high"]) for p in (0.0, 0.34, 1.0)] == ["low", "mid", "high"]
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(HistosynthError):
            level_of(bad, levels)


def test_condition_text_fills_template_and_requires_scores():
    template = "{tumor} tumor; {til} til; {summary}"
    text = condition_text(template, "grade 3 carcinoma", {"tumor": 1.0, "til": 0.2}, ["low", "high"])
    assert text == "high tumor; low til; grade 3 carcinoma"
    assert condition_text("{summary}", "", {}, ["low", "high"]) == ""
    with pytest.raises(HistosynthError, match="til"):
        condition_text(template, "x", {"tumor": 0.3}, ["low", "high"])


def test_context_length_is_prefix_plus_budget_plus_specials():
    clip = clip_bpe()
    pathldm = "{tumor} tumor; {til} til; {summary}"
    prefix = clip.count("high tumor; high til;")
    assert prefix == 6
    assert context_length_for(clip, pathldm, 35, ["low", "high"]) == 6 + 35 + 2
    # beyond CLIP's 77 positions the length is rounded up to whole 77-token chunks (PathLDM: 154)
    assert context_length_for(clip, pathldm, 140, ["low", "high"], chunk_size=77) == 154
    assert context_length_for(clip, "{summary}", 75, ["low", "high"]) == 77


# ---- Hugging Face CLIP from a folder (the path a hub id takes) ------------------------------------
def test_tiny_clip_folder_matches_transformers(tiny_clip, tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPTextModel

    assert isinstance(tiny_clip, ClipEncoder)
    assert (tiny_clip.width, tiny_clip.max_positions, tiny_clip.chunk_size) == (32, 77, 77)
    out = tiny_clip.encode([REPORT, "benign"], 77)
    assert out.hidden.shape == (2, 77, 32) and out.mask.shape == (2, 77) and out.pooled.shape == (2, 32)
    assert out.mask.dtype == torch.long and not out.hidden.requires_grad

    hf_tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    batch = hf_tok([REPORT, "benign"], padding="max_length", max_length=77, return_tensors="pt")
    ids, mask = tiny_clip.token_ids([REPORT, "benign"], 77)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])
    ref = CLIPTextModel.from_pretrained(tiny_clip_dir).eval()(**batch)
    torch.testing.assert_close(out.hidden, ref.last_hidden_state)
    torch.testing.assert_close(out.pooled, ref.pooler_output)
    assert torch.equal(tiny_clip.encode([REPORT], 77).hidden[0], out.hidden[0])  # deterministic


def test_full_clip_model_folder_gives_its_text_half(tmp_path):
    """PLIP (vinid/plip) is a whole CLIPModel checkpoint; the encoder is its text model."""
    from transformers import CLIPConfig, CLIPModel

    from histosynth.text.testing import save_clip_tokenizer

    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(tmp_path / "plip-like")
    save_clip_tokenizer(tmp_path / "plip-like")
    enc = load_encoder(str(tmp_path / "plip-like"))
    ids, mask = enc.token_ids([REPORT], 77)
    with torch.no_grad():
        expected = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(enc.encode([REPORT], 77).hidden, expected)


def test_folder_with_missing_weights_is_refused(tmp_path, tiny_clip_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(tiny_clip_dir, folder)
    state = load_file(folder / "model.safetensors")
    del state["final_layer_norm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HistosynthError, match="partly random"):
        load_encoder(str(folder))


def test_chunked_154_equals_clip_with_repeated_position_table(tiny_clip, tiny_clip_dir):
    """PathLDM's scheme == a CLIPTextModel with 154 positions whose table is the 77-row table twice."""
    from transformers import CLIPTextConfig, CLIPTextModel

    long_text = " ".join([REPORT] * 5)  # ~90 tokens: crosses into the second chunk
    bpe = tiny_clip.tokenizer
    full_text = bpe.decode(bpe.encode(" ".join([REPORT] * 10))[:152])  # no padding at all
    texts = [long_text, REPORT, full_text]
    out = tiny_clip.encode(texts, 154, long_context="chunked")
    assert out.hidden.shape == (3, 154, 32)
    assert 77 < int(out.mask[0].sum()) < 154 and int(out.mask[2].sum()) == 154

    config = CLIPTextConfig.from_pretrained(tiny_clip_dir)
    config.max_position_embeddings = 154
    reference = CLIPTextModel(config).eval()
    state = CLIPTextModel.from_pretrained(tiny_clip_dir).state_dict()
    table = state["embeddings.position_embedding.weight"]
    state["embeddings.position_embedding.weight"] = torch.cat([table, table])
    reference.load_state_dict(state)
    ids, mask = tiny_clip.token_ids(texts, 154)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out.hidden, expected, rtol=1e-5, atol=1e-5)

    # the first chunk is plain CLIP for a text that fits in 77 tokens
    short = tiny_clip.encode([REPORT], 77)
    n = int(short.mask.sum())
    torch.testing.assert_close(out.hidden[1, :n], short.hidden[0, :n], rtol=1e-5, atol=1e-5)


def test_interpolated_positions_differ_from_chunked(tiny_clip):
    table = tiny_clip.model.embeddings.position_embedding.weight
    stretched = interpolated_positions(table, 154)
    assert stretched.shape == (154, 32)
    torch.testing.assert_close(stretched[0], table[0])
    torch.testing.assert_close(stretched[-1], table[-1])
    chunked = tiny_clip.encode([REPORT], 154, long_context="chunked").hidden
    interp = tiny_clip.encode([REPORT], 154, long_context="interpolate").hidden
    assert interp.shape == chunked.shape and not torch.allclose(interp[0, 1:5], chunked[0, 1:5])


def test_text_longer_than_context_is_an_error_not_truncated(tiny_clip):
    with pytest.raises(HistosynthError, match="context_length 77"):
        tiny_clip.encode([" ".join([REPORT] * 5)], 77)


def test_unknown_hub_id_offline_is_one_line_error():
    with pytest.raises(HistosynthError) as info:
        load_encoder("histosynth-test/no-such-encoder")
    assert "local folder" in str(info.value) and "\n" not in str(info.value)


# ---- open_clip towers ---------------------------------------------------------------------------
def test_open_clip_local_dir_with_context_128(tmp_path):
    import open_clip

    folder = save_random_open_clip(tmp_path / "conch-style", context_length=128)
    enc = load_encoder(str(folder))
    assert (enc.width, enc.max_positions, enc.chunk_size) == (32, 128, 128)
    texts = [REPORT, "benign breast tissue"]
    out = enc.encode(texts, 128)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(texts)
    with torch.no_grad():
        expected = model.encode_text(tokens)
    torch.testing.assert_close(out.pooled @ model.text_projection, expected, rtol=1e-5, atol=1e-5)
    assert enc.encode(texts, 256).hidden.shape == (2, 256, 32)


def test_open_clip_architecture_without_weights_is_refused():
    with pytest.raises(HistosynthError, match="randomly initialised"):
        load_encoder("open_clip:ViT-B-32")


# ---- the real MiniLM ------------------------------------------------------------------------------
def test_minilm_related_pathology_sentences_embed_closer(minilm):
    assert isinstance(minilm, BertEncoder) and minilm.width == 384
    texts = [
        "Invasive ductal carcinoma of the breast, grade 3, with lymphovascular invasion.",
        "High grade infiltrating ductal breast carcinoma; vascular invasion present.",
        "Benign colonic mucosa without dysplasia.",
        "The quarterly revenue of the retail company grew by four percent.",
    ]
    out = minilm.encode(texts, 35)
    assert out.hidden.shape == (4, 35, 384)
    pooled = torch.nn.functional.normalize(out.pooled, dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2   # same diagnosis vs another tissue
    assert sim[0, 2] > sim[0, 3]         # another tissue is still closer than finance
    longer = minilm.encode(texts[:1], 154)
    assert longer.hidden.shape == (1, 154, 384)
    n = int(out.mask[0].sum())
    torch.testing.assert_close(longer.hidden[0, :n], out.hidden[0, :n], rtol=1e-4, atol=1e-4)


def test_minilm_context_is_computed_from_budget(minilm):
    assert context_length_for(minilm, "{summary}", 35, ["low", "high"]) == 37
    with pytest.raises(HistosynthError, match="exceeds the 512 positions"):
        minilm.encode(["x"], 600)
