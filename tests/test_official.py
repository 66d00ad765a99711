"Tests for vtp_nb.official: config and name mapping, round trips, fake checkpoint folders, and the official conventions."
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import json, math
import pytest, torch
import torch.nn as nn
from safetensors.torch import save_file, load_file
from timm.layers import RmsNorm
from vtp_nb.vit import VIT_SIZES, rope_2d_sincos, apply_rope
from vtp_nb.clip import text_config, get_tokenizer
from vtp_nb.official import (TINY_OFFICIAL_CONFIG, TINY_OFFICIAL_SHAPES, KEY_MAP, official_config_to_ours,
    ours_to_official_config, official_state_dict_to_ours, ours_to_official_state_dict, build_modules, flat_state_dict,
    convert_pixel_space, load_official, export_official, rope_periods)

def tiny_modules(seed=0, dtype=None):
    "Tiny tokenizer + SigLIP-style CLIP branch from the tiny official config, weights perturbed away from the init."
    torch.manual_seed(seed)
    vit, text, ex = official_config_to_ours(TINY_OFFICIAL_CONFIG)
    tok, clip = build_modules(vit, text, ex['clip_pool'], ex['clip_loss'])
    with torch.no_grad():
        for p in [*tok.parameters(), *clip.parameters()]: p.add_(torch.randn_like(p) * 0.05)
    if dtype is not None: tok.to(dtype); clip.to(dtype)
    return tok.eval(), clip.eval()

# ---------- round trips ----------

SIZES = {'tiny': (lambda: official_config_to_ours(TINY_OFFICIAL_CONFIG)[0], lambda: official_config_to_ours(TINY_OFFICIAL_CONFIG)[1]),
         'S': (VIT_SIZES['S'], lambda: text_config('S')), 'B': (VIT_SIZES['B'], lambda: text_config('S')),
         'L': (VIT_SIZES['L'], lambda: text_config('L14'))}

@pytest.mark.parametrize('size', list(SIZES))
def test_round_trip_is_exact(size):
    vit_f, text_f = SIZES[size]
    vit, text = vit_f(), text_f()
    tok, clip = tiny_modules() if size == 'tiny' else build_modules(vit, text, device='meta')  # S/B/L: shapes only
    ours = flat_state_dict(tok, clip)
    off = ours_to_official_state_dict(ours, tok.cfg)
    assert len(off) == len(ours) + 2                                        # + the two RoPE period buffers
    back = official_state_dict_to_ours(off)
    assert sorted(back) == sorted(ours)
    for k, v in ours.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype, k
        if size == 'tiny': assert torch.equal(back[k], v), k
        elif not k.endswith(('logit_scale', 'logit_bias')): assert back[k] is v, k   # renamed, never copied or cast
    # the config round-trips too
    cfg = ours_to_official_config(tok.cfg, text)
    vit2, text2, _ = official_config_to_ours(cfg, rope_dtype=tok.cfg.rope_dtype)
    assert (vit2, text2) == (tok.cfg, text)

def test_round_trip_keeps_bfloat16():
    tok, clip = tiny_modules(dtype=torch.bfloat16)
    off = ours_to_official_state_dict(flat_state_dict(tok, clip), tok.cfg, nonscalar_logit_scale=True)
    assert off['trunk.blocks.0.mlp.w1.weight'].dtype == torch.bfloat16 and off['logit_scale'].shape == (1,)
    back = official_state_dict_to_ours(off)
    assert back['clip.logit_scale'].shape == () and back['tokenizer.patch_embed.weight'].dtype == torch.bfloat16

def test_tiny_shapes_equal_the_official_table():
    tok, clip = tiny_modules()
    off = ours_to_official_state_dict(flat_state_dict(tok, clip), tok.cfg)
    assert {k: tuple(v.shape) for k, v in off.items()} == TINY_OFFICIAL_SHAPES
    # and the other way: a checkpoint with exactly the official names and shapes converts to our modules' names and shapes
    fake = {k: torch.zeros(s) for k, s in TINY_OFFICIAL_SHAPES.items()}
    fake['trunk.rope_embed.periods'], fake['pixel_decoder.rope_embed.periods'] = rope_periods(32), rope_periods(16)
    ours = official_state_dict_to_ours(fake)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in flat_state_dict(tok, clip).items()}

def test_legacy_dino_head_names():
    from vtp_nb.ssl import DINOHead
    h = DINOHead(64, 128, hidden_dim=48, bottleneck_dim=24)
    ours = {f'dino_head.{k}': v for k, v in h.state_dict().items()}
    off = ours_to_official_state_dict(ours, VIT_SIZES['tiny'](), layout='legacy')
    # the names of the official DINOHead (nlayers=3, old-style torch weight_norm), read from vtp/models/heads/dino_head.py
    assert sorted(off) == sorted(['dino_head.mlp.0.weight', 'dino_head.mlp.0.bias', 'dino_head.mlp.2.weight', 'dino_head.mlp.2.bias',
                                  'dino_head.mlp.4.weight', 'dino_head.mlp.4.bias', 'dino_head.last_layer.weight_g',
                                  'dino_head.last_layer.weight_v'])
    assert off['dino_head.last_layer.weight_g'].shape == (128, 1) and off['dino_head.last_layer.weight_v'].shape == (128, 24)
    assert sorted(official_state_dict_to_ours(off, layout='legacy')) == sorted(ours)

def test_legacy_layout_renames_clip_parts():
    tok, clip = tiny_modules()
    off = ours_to_official_state_dict(flat_state_dict(tok, clip), tok.cfg, layout='legacy')
    assert 'proj.weight' in off and 'visual_proj.weight' not in off
    assert 'transformer.resblocks.0.attn.in_proj_weight' in off

# ---------- errors ----------

def test_unknown_key_is_listed():
    tok, clip = tiny_modules()
    off = ours_to_official_state_dict(flat_state_dict(tok, clip), tok.cfg)
    with pytest.raises(KeyError, match='trunk.storage_tokens'):
        official_state_dict_to_ours({**off, 'trunk.storage_tokens': torch.zeros(1, 4, 64), 'trunk.blocks.0.ls1.gamma': torch.ones(64)})
    with pytest.raises(KeyError, match='tokenizer.extra'):
        ours_to_official_state_dict({'tokenizer.extra': torch.zeros(1)}, tok.cfg)

def test_wrong_rope_periods_are_an_error():
    tok, clip = tiny_modules()
    off = ours_to_official_state_dict(flat_state_dict(tok, clip), tok.cfg)
    off['trunk.rope_embed.periods'] = rope_periods(32, base=10000.)
    with pytest.raises(ValueError, match='RoPE periods'): official_state_dict_to_ours(off)

@pytest.mark.parametrize('field,value', [('vision_ffn_layer', 'mlp'), ('vision_ffn_layer', 'swiglu64'),
    ('vision_init_values', 1e-5), ('vision_use_qk_norm', True), ('vision_norm_layer', 'layernorm'), ('vision_patch_size', 14),
    ('vision_mlp_ratio', 3.0), ('decoder_use_qk_norm', True), ('decoder_init_values', 0.1), ('text_quick_gelu', True),
    ('text_embed_cls', True), ('text_proj_bias', True), ('train_reconstruction', False), ('vision_feature_bottleneck', 64),
    ('some_new_field', 1)])
def test_unsupported_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field): official_config_to_ours({**TINY_OFFICIAL_CONFIG, field: value})

def test_config_defaults_and_text_fields_ignored_without_clip():
    vit, text, ex = official_config_to_ours({'model_type': 'vtp', 'train_clip': False, 'text_quick_gelu': True})
    assert text is None and (vit.width, vit.depth, vit.bottleneck_dim, vit.dec_width, vit.dec_depth) == (768, 12, 64, 768, 12)
    assert official_config_to_ours({'decoder_norm_layer': 'layernormbf16'})[0].dec_norm_eps == 1e-5
    assert official_config_to_ours({'vision_clip_feat': 'pooled'})[2]['clip_pool'] == 'mean'

def test_export_config_errors():
    with pytest.raises(ValueError, match='patch_size'): ours_to_official_config(VIT_SIZES['tiny']())
    with pytest.raises(ValueError, match='TextConfig.width'): ours_to_official_config(VIT_SIZES['B'](), text_config('tiny', embed_dim=32))

# ---------- folders ----------

def test_fake_checkpoint_folder_loads(tmp_path):
    tok, clip = tiny_modules()
    export_official(tmp_path / 'ck', tok, clip)
    cfg = json.loads((tmp_path / 'ck' / 'config.json').read_text())
    assert cfg['architectures'] == ['VTPModel'] and cfg['init_logit_bias'] is not None
    tok2, clip2, info = load_official(tmp_path / 'ck')
    assert info['checkpoint_dtypes'] == ['torch.bfloat16', 'torch.float32']   # fp32 weights + bf16 RoPE buffers
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    t = get_tokenizer(8)(['a red circle', 'a star'])
    with torch.no_grad():
        torch.testing.assert_close(tok2(x), tok(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(clip2.encode_text(t), clip.encode_text(t), atol=1e-6, rtol=0)
    assert torch.equal(clip2.text.attn_mask, torch.full((8, 8), float('-inf')).triu(1))   # rebuilt, causal
    assert not any(p.is_meta for p in [*tok2.parameters(), *clip2.parameters()])
    # as stored (ImageNet space): bit-exact weights
    tok3, _, _ = load_official(tmp_path / 'ck', pixel_space='imagenet')
    stored = load_file(str(tmp_path / 'ck' / 'model.safetensors'))
    assert torch.equal(tok3.patch_embed.weight, stored['trunk.patch_embed.proj.weight'])

def test_sharded_folder_and_dtype_kept(tmp_path):
    tok, clip = tiny_modules(dtype=torch.bfloat16)
    export_official(tmp_path / 'one', tok, clip)
    sd = load_file(str(tmp_path / 'one' / 'model.safetensors'))
    keys = sorted(sd); half = len(keys) // 2
    d = tmp_path / 'sharded'; d.mkdir()
    (d / 'config.json').write_text((tmp_path / 'one' / 'config.json').read_text())
    shards = {'model-00001-of-00002.safetensors': keys[:half], 'model-00002-of-00002.safetensors': keys[half:]}
    for f, ks in shards.items(): save_file({k: sd[k] for k in ks}, str(d / f))
    (d / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': {k: f for f, ks in shards.items() for k in ks}}))
    tok2, clip2, info = load_official(d, pixel_space='imagenet')
    assert tok2.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and clip2.logit_scale.dtype == torch.bfloat16
    tok3, _, _ = load_official(d, pixel_space='imagenet', dtype=torch.float32)
    assert tok3.blocks[0].attn.qkv.weight.dtype == torch.float32

def test_missing_and_mismatched_keys_in_folder(tmp_path):
    tok, clip = tiny_modules()
    export_official(tmp_path / 'ck', tok, clip)
    f = tmp_path / 'ck' / 'model.safetensors'
    sd = load_file(str(f))
    save_file({k: v for k, v in sd.items() if k != 'trunk.norm.weight'}, str(f))
    with pytest.raises(KeyError, match='tokenizer.norm.weight'): load_official(tmp_path / 'ck')
    save_file({**sd, 'trunk.norm.weight': torch.ones(65)}, str(f))
    with pytest.raises(ValueError, match='tokenizer.norm.weight'): load_official(tmp_path / 'ck')
    f.unlink()
    with pytest.raises(FileNotFoundError, match='safetensors'): load_official(tmp_path / 'ck')
    with pytest.raises(FileNotFoundError, match='config.json'): load_official(tmp_path / 'nowhere')

# ---------- official conventions ----------

def test_rope_convention():
    "Rotate-half pairing (j, j + Dh/2), patch-centre coords in [-1, 1] per axis, rows then columns, base 100, cls untouched."
    h, w, Dh = 2, 3, 8
    sin, cos = rope_2d_sincos(h, w, Dh, base=100.0)
    q = torch.randn(1, 1, 1 + h * w, Dh)
    out = apply_rope(q, sin, cos, n_prefix=1)
    assert torch.equal(out[..., 0, :], q[..., 0, :])
    for n in range(h * w):
        r, c = divmod(n, w)                                   # row-major token order
        y, x = 2 * (r + 0.5) / h - 1, 2 * (c + 0.5) / w - 1
        periods = [100.0 ** (2 * j / (Dh // 2)) for j in range(Dh // 4)]
        theta = [2 * math.pi * y / T for T in periods] + [2 * math.pi * x / T for T in periods]   # (Dh/2,)
        a, b = q[0, 0, 1 + n, :Dh // 2], q[0, 0, 1 + n, Dh // 2:]
        z = torch.complex(a.double(), b.double()) * torch.exp(1j * torch.tensor(theta, dtype=torch.float64))
        torch.testing.assert_close(out[0, 0, 1 + n], torch.cat([z.real, z.imag]).float(), atol=1e-5, rtol=0)
    p = rope_periods(32)
    assert p.dtype == torch.bfloat16 and torch.allclose(p.float(), 100 ** (torch.arange(8) / 8), rtol=1e-2)

@pytest.mark.parametrize('size', ['tiny', 'S', 'B', 'L'])
def test_swiglu_hidden_rounding(size):
    vit = official_config_to_ours(TINY_OFFICIAL_CONFIG)[0] if size == 'tiny' else VIT_SIZES[size]()
    with torch.device('meta'): tok, _ = build_modules(vit)
    for D, mlp in ((vit.width, tok.blocks[0].mlp), (vit.dec_width, tok.decoder.blocks[0].mlp)):
        d = int(int(D * 4.0) * 2 / 3)                         # official: hidden = int(D * ratio), then SwiGLUFFN's 2/3
        assert mlp.fc1_g.out_features == mlp.fc1_x.out_features == d + (-d % 8) == mlp.fc2.in_features
    assert {'S': 1024, 'B': 2048, 'L': 2736}.get(size, tok.blocks[0].mlp.fc1_g.out_features) == tok.blocks[0].mlp.fc1_g.out_features

def test_norm_types_and_eps():
    tok, clip = tiny_modules()
    for n in (tok.blocks[0].norm1, tok.blocks[1].norm2, tok.norm):
        assert isinstance(n, RmsNorm) and n.eps == 1e-5 and [k for k, _ in n.named_parameters()] == ['weight']
    x = torch.randn(3, 64)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * tok.norm.weight
    torch.testing.assert_close(tok.norm(x), ref)
    for n in (tok.decoder.blocks[0].norm1, tok.decoder.norm):
        assert isinstance(n, nn.LayerNorm) and n.eps == 1e-6 and n.bias is not None
    for n in (clip.text.ln_final, clip.text.transformer.resblocks[0].ln_1):
        assert isinstance(n, nn.LayerNorm) and n.eps == 1e-5 and n.bias is not None

def test_bottleneck_after_final_norm():
    tok, _ = tiny_modules()
    seen = {}
    h = tok.norm.register_forward_hook(lambda m, i, o: seen.setdefault('normed', o))
    with torch.no_grad(): f = tok.forward_features(torch.rand(2, 3, 32, 32) * 2 - 1)
    h.remove()
    t = seen['normed']                                            # (B, 1+N, D)
    W = tok.bottleneck.weight
    torch.testing.assert_close(f['z_cls'], t[:, 0] @ W.T); torch.testing.assert_close(f['z_patch'], t[:, 1:] @ W.T)
    assert torch.equal(f['cls'], t[:, 0]) and torch.equal(f['patch'], t[:, 1:])
    assert tok.bottleneck.bias is None

def test_pixel_shuffle_channel_order():
    tok, _ = tiny_modules()
    p = tok.cfg.patch_size
    with torch.no_grad():
        tok.decoder.proj_out.weight.zero_(); tok.decoder.proj_out.bias.copy_(torch.arange(3 * p * p, dtype=torch.float32))
        y = tok.decode(torch.randn(1, tok.cfg.bottleneck_dim, 2, 3))   # (1, 3, 2p, 3p)
    c, i, j = torch.meshgrid(torch.arange(3), torch.arange(p), torch.arange(p), indexing='ij')
    for r, s in ((0, 0), (1, 2)):                                  # every patch of the grid has the same layout
        assert torch.equal(y[0, :, r * p:(r + 1) * p, s * p:(s + 1) * p], (c * p * p + i * p + j).float())

def test_pixel_space_fold_is_exact_and_invertible():
    tok, _ = tiny_modules()
    sd = {f'tokenizer.{k}': v for k, v in tok.state_dict().items()}
    m1 = convert_pixel_space(sd, 'imagenet', 'minus_one')
    back = convert_pixel_space(m1, 'minus_one', 'imagenet')
    for k in ('tokenizer.patch_embed.weight', 'tokenizer.patch_embed.bias', 'tokenizer.decoder.proj_out.bias'):
        torch.testing.assert_close(back[k], sd[k], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match='pixel spaces'): convert_pixel_space(sd, 'imagenet', 'zero_one')

def test_official_names_carry_official_semantics():
    "Recompute one encoder block's FFN and the text projection from the *official* names with the official formulas."
    tok, clip = tiny_modules()
    off = ours_to_official_state_dict(flat_state_dict(tok, clip), tok.cfg)
    x = torch.randn(4, 64)
    g = lambda n: off[f'trunk.blocks.0.mlp.{n}']
    w1 = x @ g('w1.weight').T + g('w1.bias'); w2 = x @ g('w2.weight').T + g('w2.bias')
    ref = (torch.nn.functional.silu(w1) * w2) @ g('w3.weight').T + g('w3.bias')   # official: w3(silu(w1 x) * w2 x)
    with torch.no_grad(): torch.testing.assert_close(tok.blocks[0].mlp(x), ref)
    tokens = get_tokenizer(8)(['a red circle'])
    with torch.no_grad():
        t = clip.text
        h = t.ln_final(t.transformer(t.token_embedding(tokens) + t.positional_embedding, attn_mask=t.attn_mask))
        pooled = h[torch.arange(1), tokens.argmax(-1)]                             # EOT token
        torch.testing.assert_close(t(tokens), pooled @ off['text_projection'])     # official: x @ P, P stored [width, embed]

# ---------- starting training from an official folder (vtp_nb.train.init_weights) ----------

RUN_SET = ['model.patch_size=16', 'model.width=64', 'model.depth=1', 'model.heads=2', 'model.dec_width=32', 'model.dec_depth=1',
           'model.dec_heads=2', 'clip.text.width=32', 'clip.text.embed_dim=32', 'clip.text.layers=1', 'clip.text.heads=2',
           'clip.loss=siglip', 'ssl.out_dim=64', 'ssl.hidden_dim=32', 'ssl.bottleneck_dim=16']

def test_init_weights_parts_present_absent_and_unused(tmp_path):
    "SigLIP parts arrive; a tokenizer-only release leaves CLIP at its init; a run without CLIP ignores the checkpoint's CLIP."
    from vtp_nb.train import make_config, apply_overrides, init_weights
    from vtp_nb.vtp import build_vtp
    cfg = apply_overrides(make_config('small'), RUN_SET)
    torch.manual_seed(0); src = build_vtp(cfg)
    with torch.no_grad():
        for p in [*src.tokenizer.parameters(), *src.clip.parameters()]: p.add_(torch.randn_like(p) * 0.05)
    full, tok_only = export_official(tmp_path/'full', src.tokenizer, src.clip), export_official(tmp_path/'tok', src.tokenizer)
    assert json.loads((full/'config.json').read_text())['init_logit_bias'] is not None
    torch.manual_seed(1); m = build_vtp(cfg)
    info = init_weights(m, cfg, full)
    torch.testing.assert_close(m.clip.logit_bias, src.clip.logit_bias)
    torch.testing.assert_close(m.clip.text.text_projection, src.clip.text.text_projection)
    assert info['left'] == ['ssl heads and centres (DINO/iBOT)', 'EMA teacher (re-synchronised from the loaded student)']
    torch.manual_seed(1); ref = build_vtp(cfg).clip.state_dict()                  # what a fresh run initialises
    torch.manual_seed(1); m = build_vtp(cfg)
    info = init_weights(m, cfg, tok_only)
    assert 'clip (not in the checkpoint)' in info['left'] and len(info['loaded']) == 1
    for k, v in m.clip.state_dict().items(): assert torch.equal(v, ref[k]), k
    torch.testing.assert_close(m.tokenizer.patch_embed.weight, src.tokenizer.patch_embed.weight)
    ae = apply_overrides(make_config('small'), RUN_SET + ['objective.variant=ae'])
    info = init_weights(build_vtp(ae), ae, full)
    assert info['unused'] == ['clip (this run has no CLIP term)'] and info['left'] == []

def test_init_weights_refuses_other_text_tower_and_unknown_names(tmp_path):
    from vtp_nb.train import make_config, apply_overrides, init_weights, ConfigError
    from vtp_nb.vtp import build_vtp
    cfg = apply_overrides(make_config('small'), RUN_SET)
    folder = export_official(tmp_path/'f', *[getattr(build_vtp(cfg), k) for k in ('tokenizer', 'clip')])
    other = apply_overrides(make_config('small'), RUN_SET + ['clip.text.layers=2', 'clip.loss=clip'])
    with pytest.raises(ConfigError, match=r"clip.text.layers: checkpoint 1, this run 2[\s\S]*clip.loss: checkpoint 'siglip'"):
        init_weights(build_vtp(other), other, folder)
    sd = load_file(str(folder/'model.safetensors')); sd['trunk.extra_thing'] = torch.zeros(1)
    save_file(sd, str(folder/'model.safetensors'))
    with pytest.raises(ConfigError, match='trunk.extra_thing'): init_weights(build_vtp(cfg), cfg, folder)
