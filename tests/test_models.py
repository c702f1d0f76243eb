"""Every registered model: builds, runs forward and backward, every parameter gets a gradient."""

import math

import pytest
import torch

import openslip
from openslip.models import ModelConfig, create_model, list_models, model_config
from openslip.models.slip import full_context, trim_tokens, trimmed_text_length
from openslip.optim import clamp_logit_scale
from openslip.registry import UnknownNameError

# Reference totals (SLIP paper code, counted with its timm ViT and CLIP text tower), in millions.
REFERENCE_PARAMS = {
    "clip_vit_s16": 85.3,
    "slip_vit_s16": 104.7,
    "clip_vit_b16": 149.6,
    "slip_vit_b16": 170.6,
    "clip_vit_l16": 367.3,
    "slip_vit_l16": 389.3,
}
KINDS = ("slip", "clip", "simclr")
SMALL = ("vit_micro", "vit_tiny")


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_totals_match_reference(name):
    with torch.device("meta"):
        model = create_model(name)
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(total, 1) == REFERENCE_PARAMS[name]


def _inputs(model, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.cfg.vision.image_size
    img = lambda: torch.randn(batch, 3, size, size, generator=g)  # noqa: E731
    kw = {}
    if model.has_text:
        tokens = torch.randint(1, 1000, (batch, 77), generator=g)
        lengths = torch.randint(3, 20, (batch,), generator=g)
        tokens[:, 0] = 49406
        tokens[torch.arange(batch), lengths] = 49407
        tokens[torch.arange(77)[None] > lengths[:, None]] = 0
        kw.update(image=img(), text=tokens)
    if model.has_ssl_head:
        kw.update(view1=img(), view2=img())
    return kw


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SMALL)
def test_forward_backward_every_parameter_gets_gradient(kind, size):
    torch.manual_seed(0)
    model = create_model(f"{kind}_{size}")
    out = model(**_inputs(model))
    loss = openslip.SLIPLoss.for_model(model)(out)["loss"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no/bad gradient for {missing}"
    if model.has_text:
        assert out["image_embed"].shape == (4, model.cfg.embed_dim)
        assert out["text_embed"].shape == (4, model.cfg.embed_dim)
    if model.has_ssl_head:
        assert out["view1_embed"].shape == (4, model.cfg.ssl_head.out_dim)


@pytest.mark.parametrize("name", ["slip_vit_micro", "clip_vit_micro"])
def test_encode_matches_forward(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    kw = _inputs(model)
    with torch.no_grad():
        out = model(**kw)
        torch.testing.assert_close(model.encode_image(kw["image"]), out["image_embed"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(kw["text"]), out["text_embed"], rtol=1e-5, atol=1e-5)
        assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_text_trimming_is_exact():
    """Stopping the causal text tower at the last EOT gives the same embedding as running all 77 tokens."""
    torch.manual_seed(0)
    model = create_model("clip_vit_micro").eval()
    tokens = _inputs(model)["text"]
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        model.trim_text = False
        full = model.encode_text(tokens)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_ids_trimmed_on_the_host_give_the_same_embeddings_and_a_gpu_forward_reads_nothing_back():
    """Callers trim the ids on the CPU (`trim_tokens`: the training loader's tokenizer, the evaluations, bench), so
    the model trims only on a CPU: on another device it would wait for the device mid-forward to read the length.
    On the meta device (no data) any such read raises, so the forward there proves none happens."""
    torch.manual_seed(0)
    model = create_model("clip_vit_micro").eval()
    tokens = _inputs(model)["text"]
    short = trim_tokens(tokens)
    assert short.shape[1] == trimmed_text_length(tokens) < tokens.shape[1] and short.is_contiguous()
    assert torch.equal(full_context(short, tokens.shape[1]), tokens)  # the tokenizer pads with 0
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(short), model.encode_text(tokens), rtol=0, atol=0)
        on_meta = model.to("meta")
        with pytest.raises(RuntimeError, match="meta"):
            int(short.to("meta").argmax(dim=-1).max())  # what a trim would read
        assert on_meta.encode_text(short.to("meta")).shape == (short.shape[0], model.cfg.embed_dim)


def test_views_batched_through_vit_equal_separate_calls():
    torch.manual_seed(0)
    model = create_model("slip_vit_micro").eval()
    kw = _inputs(model)
    with torch.no_grad():
        out = model(**kw)
        sep = model.image_mlp(model.visual(kw["view1"]))
    torch.testing.assert_close(out["view1_embed"], sep, rtol=1e-5, atol=1e-5)


def test_head_norm_variants_and_grad_checkpointing():
    torch.manual_seed(0)
    for norm in ("bn", "ln", "none"):
        model = create_model("slip_vit_micro", head_norm=norm)
        kw = _inputs(model, batch=2)
        ref = model(**kw)
        model.set_grad_checkpointing(True)
        ckpt = model(**kw)
        torch.testing.assert_close(ref["view1_embed"], ckpt["view1_embed"])
        openslip.SLIPLoss()(ckpt)["loss"].backward()
    with pytest.raises(ValueError, match="choose one of"):
        create_model("slip_vit_micro", head_norm="gn")


def test_other_image_size_interpolates_position_embedding():
    model = create_model("slip_vit_micro").eval()
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, 64)


def test_registry_names_aliases_and_errors():
    names = list_models()
    for kind in KINDS:
        for size in ("vit_s16", "vit_b16", "vit_l16", "vit_tiny"):
            assert f"{kind}_{size}" in names
    assert model_config("SLIP_VITB16").name == "slip_vit_b16"
    assert model_config("simclr_VITL16".upper()).text is None
    with pytest.raises(UnknownNameError, match="slip_vit_b16"):
        create_model("slip_vit_x99")


def test_timm_and_reference_key_names():
    model = create_model("slip_vit_micro")
    keys = set(model.state_dict())
    expected = {
        "visual.cls_token",
        "visual.pos_embed",
        "visual.patch_embed.proj.weight",
        "visual.blocks.0.norm1.weight",
        "visual.blocks.0.attn.qkv.weight",
        "visual.blocks.0.attn.proj.bias",
        "visual.blocks.0.mlp.fc1.weight",
        "visual.blocks.1.mlp.fc2.bias",
        "visual.norm.weight",
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.0.ln_1.weight",
        "transformer.resblocks.0.attn.in_proj_weight",
        "transformer.resblocks.0.attn.in_proj_bias",
        "transformer.resblocks.0.attn.out_proj.weight",
        "transformer.resblocks.1.mlp.c_fc.weight",
        "transformer.resblocks.1.mlp.c_proj.bias",
        "ln_final.weight",
        "image_projection",
        "text_projection",
        "logit_scale",
        "image_mlp.layer1.weight",
        "image_mlp.bn1.running_mean",
        "image_mlp.layer3.weight",
    }
    assert expected <= keys, expected - keys


def test_matches_naive_reference_forward():
    """Same embeddings as a plain re-statement of the reference (nn.MultiheadAttention, -inf mask, 77 tokens)."""
    from reference_forward import reference_encode_text, reference_visual

    torch.manual_seed(0)
    model = create_model("clip_vit_micro").double().eval()
    kw = _inputs(model)
    sd = model.state_dict()
    with torch.no_grad():
        img = kw["image"].double()
        expect_img = reference_visual(sd, img, model.cfg.vision.heads) @ sd["image_projection"]
        torch.testing.assert_close(model.encode_image(img), expect_img, rtol=1e-10, atol=1e-10)
        expect_txt = reference_encode_text(sd, kw["text"], model.cfg.text.heads)
        torch.testing.assert_close(model.encode_text(kw["text"]), expect_txt, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_runs_fp32_kernels_in_a_bf16_cpu_step(causal: bool, one_thread) -> None:
    """Under CPU bf16 autocast the attention kernel takes fp32 inputs (faster there, and more exact) and returns
    bf16; in fp32 it is plain SDPA. Both are the same softmax(q k^T / sqrt(d)) v as the explicit formula."""
    import torch.nn.functional as F

    from openslip.models.layers import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(
        attention(q, k, v, causal=causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    )
    scores = q @ k.transpose(-2, -1) / 8**0.5
    if causal:
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    explicit = scores.softmax(-1) @ v
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(qb, kb, vb, causal=causal)
    assert out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float(), is_causal=causal).bfloat16()
    assert torch.equal(out, expected)
    torch.testing.assert_close(out.float(), explicit, rtol=2e-2, atol=2e-2)  # bf16 inputs and output


def test_sigmoid_models_have_siglips_scale_and_bias_and_softmax_models_are_unchanged():
    """loss.contrastive=sigmoid (docs/OBJECTIVES.md): t starts at 10 and b at -10, as in SigLIP; no clamp on t."""
    softmax = create_model("clip_vit_micro")
    assert [k for k in softmax.state_dict() if k.startswith("logit")] == ["logit_scale"]
    sigmoid = create_model("clip_vit_micro", contrastive="sigmoid")
    assert set(sigmoid.state_dict()) - set(softmax.state_dict()) == {"logit_bias"}
    assert sigmoid.logit_scale.exp().item() == pytest.approx(10.0) and sigmoid.logit_bias.item() == -10.0
    size = sigmoid.cfg.vision.image_size
    out = sigmoid(image=torch.randn(2, 3, size, size), text=openslip.get_tokenizer()(["a", "b"]))
    assert out["logit_bias"] is sigmoid.logit_bias and "logit_bias" not in softmax.forward_heads({})
    assert ModelConfig.from_dict(sigmoid.cfg.to_dict()) == sigmoid.cfg
    for model, clamped in ((softmax, True), (sigmoid, False)):
        with torch.no_grad():
            model.logit_scale.fill_(math.log(200.0))
        clamp_logit_scale(model)
        assert (model.logit_scale.exp().item() == pytest.approx(100.0)) == clamped
    with pytest.raises(ValueError, match="needs a text tower"):
        create_model("simclr_vit_micro", contrastive="sigmoid")
    with pytest.raises(ValueError, match="choose one of: softmax, sigmoid"):
        create_model("clip_vit_micro", contrastive="hinge")
