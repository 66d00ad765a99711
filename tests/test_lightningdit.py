"""Tests for vtp_nb.lightningdit against the official LightningDiT layout (hustvl/LightningDiT, models/lightningdit.py).

`RefLightningDiT` below is our own re-implementation of the official forward, built from the same module names so that
its `state_dict()` produces the official keys: RMSNorm with learnable gains (computed in float32), fused-qkv attention
with optional q/k-norm, EVA-02 RoPE (`VisionRotaryEmbeddingFast`: base 10000, interleaved pairs, row half then column
half) stored as `freqs_cos/freqs_sin` buffers, fused `w12` SwiGLU of width int(2/3 * int(4 D)), MAE/DiT's sin-cos table
(`[sin c, cos c, sin r, cos r]`) as a frozen `pos_embed` parameter, DiT's timestep embedder on the raw t, and DiT's
3-channel `forward_with_cfg`. Random weights (gains far from 1) are converted with `lightningdit_state_dict_to_ours` and
our model must give the same outputs. When the environment variable LIGHTNINGDIT_REPO points to a checkout of
LightningDiT, the official module itself is compared too (skipped otherwise).
"""
import os, sys, math, types, importlib
os.environ['HF_HUB_OFFLINE'] = '1'
from dataclasses import replace
import numpy as np
import pytest, torch
from torch import nn
import torch.nn.functional as F
from vtp_nb.core import set_seed, count_params
from vtp_nb.lightningdit import (DiTConfig, LightningDiT, lightningdit_config, lightningdit_tables, sincos_pos_embed,
                                 lightningdit_state_dict_to_ours, ours_to_lightningdit_state_dict, lightningdit_from_official,
                                 check_lightningdit_config, LIGHTNINGDIT_SIZES, VTP_GENERATION)

torch.set_num_threads(1)
ATOL = 1e-5  # float32; the measured differences are ~1e-6


# ---------------------------------------------------------------- reference: the official forward, re-implemented
def ref_sincos_1d(dim, pos):
    "MAE/DiT 1-D table in float64: [sin | cos] of pos * 10000^(-k/(dim/2))."
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

def ref_sincos_2d(dim, g):
    "MAE/DiT 2-D table: meshgrid in 'xy' order, so the first half encodes the column, the second the row."
    first, second = np.meshgrid(np.arange(g, dtype=np.float32), np.arange(g, dtype=np.float32))
    return np.concatenate([ref_sincos_1d(dim // 2, first), ref_sincos_1d(dim // 2, second)], axis=1)

class RefRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__(); self.eps = eps; self.weight = nn.Parameter(torch.ones(dim))
    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight

class RefRope(nn.Module):
    "EVA-02 VisionRotaryEmbeddingFast(dim=head_dim/2, pt_seq_len=g)."
    def __init__(self, dim, g, theta=10000.0):
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)  # (dim/2,)
        pos = torch.arange(g) / g * g
        f = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (g, dim): each frequency twice
        f = torch.cat([f[:, None, :].expand(g, g, dim), f[None, :, :].expand(g, g, dim)], dim=-1)  # row half, column half
        self.register_buffer('freqs_cos', f.cos().reshape(g * g, -1))
        self.register_buffer('freqs_sin', f.sin().reshape(g * g, -1))
    def forward(self, x):
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * self.freqs_cos + rotated * self.freqs_sin

class RefAttention(nn.Module):
    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RefRMSNorm(self.hd) if qk_norm else nn.Identity()
        self.k_norm = RefRMSNorm(self.hd) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
    def forward(self, x, rope=None):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None: q, k = rope(q), rope(k)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))

class RefSwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__(); self.w12 = nn.Linear(dim, 2 * hidden); self.w3 = nn.Linear(hidden, dim)
    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)

class RefPatchEmbed(nn.Module):
    def __init__(self, c, dim, p):
        super().__init__(); self.proj = nn.Conv2d(c, dim, p, p)
    def forward(self, x): return self.proj(x).flatten(2).transpose(1, 2)

class RefTimestep(nn.Module):
    def __init__(self, dim, freq=256):
        super().__init__(); self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))
    def forward(self, t):
        half = self.freq // 2
        a = t[:, None].float() * torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)[None]
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=-1))

class RefLabel(nn.Module):
    def __init__(self, n, dim, p):
        super().__init__(); self.n, self.p = n, p
        self.embedding_table = nn.Embedding(n + (p > 0), dim)
    def forward(self, y, force_drop=None):
        if force_drop is not None: y = torch.where(force_drop == 1, self.n, y)
        return self.embedding_table(y)

def ref_modulate(x, shift, scale): return x * (1 + scale[:, None]) + shift[:, None]

class RefBlock(nn.Module):
    def __init__(self, dim, heads, qk_norm, hidden):
        super().__init__()
        self.norm1, self.norm2 = RefRMSNorm(dim), RefRMSNorm(dim)
        self.attn = RefAttention(dim, heads, qk_norm)
        self.mlp = RefSwiGLU(dim, hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
    def forward(self, x, c, rope):
        s1, g1, a1, s2, g2, a2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + a1[:, None] * self.attn(ref_modulate(self.norm1(x), s1, g1), rope)
        return x + a2[:, None] * self.mlp(ref_modulate(self.norm2(x), s2, g2))

class RefFinal(nn.Module):
    def __init__(self, dim, p, c):
        super().__init__()
        self.norm_final = RefRMSNorm(dim); self.linear = nn.Linear(dim, p * p * c)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(ref_modulate(self.norm_final(x), shift, scale))

class RefLightningDiT(nn.Module):
    "LightningDiT with use_rmsnorm=True, use_swiglu=True, wo_shift=False, learn_sigma=False (VTP's settings)."
    def __init__(self, input_size, patch_size, in_channels, hidden_size, depth, num_heads, num_classes,
                 class_dropout_prob=0.1, use_qknorm=False, use_rope=True):
        super().__init__()
        self.c, self.p = in_channels, patch_size
        g = input_size // patch_size
        self.x_embedder = RefPatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = RefTimestep(hidden_size)
        self.y_embedder = RefLabel(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.from_numpy(ref_sincos_2d(hidden_size, g)).float()[None], requires_grad=False)
        self.feat_rope = RefRope(hidden_size // num_heads // 2, g) if use_rope else None
        hidden = int(2 / 3 * int(hidden_size * 4.0))
        self.blocks = nn.ModuleList([RefBlock(hidden_size, num_heads, use_qknorm, hidden) for _ in range(depth)])
        self.final_layer = RefFinal(hidden_size, patch_size, in_channels)
    def forward(self, x, t, y, force_drop=None):
        B, C, H, W = x.shape
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, force_drop)
        for blk in self.blocks: h = blk(h, c, self.feat_rope)
        out = self.final_layer(h, c)
        g, p = H // self.p, self.p
        return torch.einsum('nhwpqc->nchpwq', out.reshape(B, g, g, p, p, C)).reshape(B, C, H, W)
    def forward_with_cfg(self, x, t, y, cfg_scale):
        "DiT's guidance: the batch is [cond; uncond]; only channels 0-2 are guided."
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        eps, rest = out[:, :3], out[:, 3:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)


def randomize(model, seed=0, std=0.05, qkv_std=0.15):
    "Random weights everywhere (RMSNorm gains around 1 with spread 0.5); the fixed tables are left alone."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k == 'pos_embed': continue
            if 'norm' in k.split('.')[-2]:  # norm1, norm2, norm_final, q_norm, k_norm
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((qkv_std if 'qkv' in k else std) * torch.randn(p.shape, generator=g))
    return model


# shapes: B/1-like (head_dim 64), XL/1-like (head_dim 72), and a patch-2 model; all tiny
SHAPES = {'B1': dict(size='B/1', input_size=4, hidden_size=128, num_heads=2),
          'XL1': dict(size='XL/1', input_size=4, hidden_size=144, num_heads=2),
          'B2': dict(size='B/2', input_size=8, hidden_size=64, num_heads=2)}

def make_pair(shape, use_rope=True, qk_norm=False, norm_affine=True, depth=2, C=8, K=5, seed=0):
    s = dict(SHAPES[shape]); size = s.pop('size')
    cfg = lightningdit_config(size, in_channels=C, num_classes=K, depth=depth, use_rope=use_rope, qk_norm=qk_norm,
                              norm_affine=norm_affine, **s)
    ref = RefLightningDiT(cfg.input_size, cfg.patch_size, C, cfg.hidden_size, depth, cfg.num_heads, K,
                          use_qknorm=qk_norm, use_rope=use_rope)
    return cfg, randomize(ref, seed).eval()

def inputs(cfg, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])[:n]
    y = torch.tensor([0, 1, 4, cfg.num_classes, 2])[:n]  # includes the null class
    return x, t, y


# ---------------------------------------------------------------- config
def test_official_config_values():
    xl, b = lightningdit_config('XL/1'), lightningdit_config('B/1')
    assert (xl.hidden_size, xl.depth, xl.num_heads, xl.patch_size, xl.mlp_hidden) == (1152, 28, 16, 1, 3072)
    assert (b.hidden_size, b.depth, b.num_heads, b.patch_size, b.mlp_hidden) == (768, 12, 12, 1, 2048)
    for c in (xl, b):
        assert (c.in_channels, c.input_size, c.num_classes, c.mlp_ratio, c.class_dropout) == (64, 16, 1000, 4.0, 0.1)
        assert (c.qk_norm, c.use_rope, c.rope_base, c.time_scale) == (False, True, 10000.0, 1.0)
        assert (c.pos_embed_order, c.norm_affine, c.fused_glu_init) == ('lightningdit', True, True)
        check_lightningdit_config(c)
    assert LIGHTNINGDIT_SIZES['L/2'] == (1024, 24, 16, 2) and lightningdit_config('L/2').mlp_hidden == 2730
    assert lightningdit_config('LightningDiT-B/1') == b
    assert {v['model'] for v in VTP_GENERATION.values()} == {'XL/1', 'B/1'}
    demo, xlc = VTP_GENERATION['vtp_l_dit_b_demo'], VTP_GENERATION['vtp_l_dit_xl']
    assert (demo['sampling_method'], demo['num_sampling_steps'], demo['timestep_shift']) == ('dopri5', 50, 0.0)
    assert (xlc['sampling_method'], xlc['num_sampling_steps'], xlc['timestep_shift']) == ('euler', 250, 0.075)
    assert (xlc['lr'], xlc['beta2'], xlc['global_batch_size'], xlc['ema_decay'], xlc['cfg_scale']) == (2e-4, 0.95, 1024, 0.9999, 1.0)
    assert (VTP_GENERATION['vtp_b_dit_xl']['lognorm_mu'], VTP_GENERATION['vtp_b_dit_xl']['lognorm_sigma']) == (-0.5, 1.25)


def test_small_mode_defaults_unchanged():
    c = DiTConfig()
    assert (c.rope_base, c.time_scale, c.qk_norm, c.use_rope) == (100.0, 1000.0, True, True)
    assert (c.pos_embed_order, c.norm_affine, c.mlp_hidden, c.fused_glu_init) == ('timm', False, None, False)
    sd = LightningDiT(DiTConfig(in_channels=4, hidden_size=32, depth=1, num_heads=2)).state_dict()
    assert not any(k.endswith(('norm1.weight', 'norm2.weight', 'final_layer.norm.weight')) for k in sd)  # no gains
    assert sd['blocks.0.mlp.fc1_g.weight'].shape == (88, 32)  # swiglu_hidden(32) = 85 rounded up to 88


def test_fused_glu_init_bound():
    D = 256; cfg = lightningdit_config('B/1', in_channels=4, input_size=2, hidden_size=D, depth=2, num_heads=4)
    H = cfg.mlp_hidden
    fused, split = math.sqrt(6 / (D + 2 * H)), math.sqrt(6 / (D + H))
    set_seed(0); w = LightningDiT(cfg).blocks[0].mlp.fc1_x.weight.abs().max().item()
    set_seed(0); w0 = LightningDiT(replace(cfg, fused_glu_init=False)).blocks[0].mlp.fc1_x.weight.abs().max().item()
    assert 0.98 * fused < w <= fused < 0.98 * split < w0 <= split


# ---------------------------------------------------------------- tables
@pytest.mark.parametrize('g,D', [(1, 64), (4, 128), (16, 768), (16, 1152)])
def test_sincos_matches_official_formula(g, D):
    ours = sincos_pos_embed(g, g, D, 'lightningdit')
    ref = torch.from_numpy(ref_sincos_2d(D, g)).float()
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    if g > 1: assert not torch.allclose(sincos_pos_embed(g, g, D), ref, atol=1e-2)  # timm's order is another table


@pytest.mark.parametrize('head_dim,g', [(64, 4), (72, 16), (64, 16)])
def test_rope_tables_match_eva(head_dim, g):
    cfg = lightningdit_config('B/1', input_size=g, hidden_size=2 * head_dim, num_heads=2)
    tab, ref = lightningdit_tables(cfg), RefRope(head_dim // 2, g)
    torch.testing.assert_close(tab['feat_rope.freqs_cos'], ref.freqs_cos, atol=2e-6, rtol=0)
    torch.testing.assert_close(tab['feat_rope.freqs_sin'], ref.freqs_sin, atol=2e-6, rtol=0)
    other = lightningdit_tables(replace(cfg, rope_base=100.0))['feat_rope.freqs_sin']
    assert not torch.allclose(other, ref.freqs_sin, atol=1e-2)


# ---------------------------------------------------------------- equal outputs
@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('use_rope,qk_norm', [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize('norm_affine', [True, False])
def test_converted_weights_give_official_outputs(shape, use_rope, qk_norm, norm_affine):
    cfg, ref = make_pair(shape, use_rope, qk_norm, norm_affine)
    ours = LightningDiT(cfg).eval()
    ours.load_state_dict(lightningdit_state_dict_to_ours(ref.state_dict(), cfg))
    x, t, y = inputs(cfg)
    with torch.no_grad():
        want, got = ref(x, t, y), ours(x, t, y)
        assert want.abs().mean() > 0.1  # a non-trivial output
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        drop = torch.tensor([1, 0, 1, 0, 1])  # CFG's unconditional branch
        torch.testing.assert_close(ours(x, t, y, force_drop=drop), ref(x, t, y, force_drop=drop), atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x, t, torch.full_like(y, cfg.num_classes)), ref(x, t, y, force_drop=torch.ones(5)),
                                   atol=ATOL, rtol=0)


def test_each_small_mode_default_breaks_the_match():
    cfg, ref = make_pair('B1')
    sd = lightningdit_state_dict_to_ours(ref.state_dict(), cfg)
    x, t, y = inputs(cfg)
    for k, v in dict(rope_base=100.0, time_scale=1000.0, pos_embed_order='timm').items():
        m = LightningDiT(replace(cfg, **{k: v})).eval(); m.load_state_dict(sd)
        with torch.no_grad(): assert (m(x, t, y) - ref(x, t, y)).abs().max() > 1e-3, k
        with pytest.raises(ValueError, match=k): lightningdit_state_dict_to_ours(ref.state_dict(), replace(cfg, **{k: v}))


@pytest.mark.parametrize('norm_affine', [True, False])
def test_export_loads_into_reference(norm_affine):
    cfg, ref = make_pair('XL1', norm_affine=norm_affine)
    set_seed(3); ours = LightningDiT(cfg).eval()
    with torch.no_grad():  # random weights on our side, including gains when we have them
        for k, p in ours.named_parameters(): p.copy_(1 + 0.5 * torch.randn_like(p) if 'norm' in k else 0.05 * torch.randn_like(p))
    off = ours_to_lightningdit_state_dict(ours.state_dict(), cfg)
    ref.load_state_dict(off, strict=True)
    x, t, y = inputs(cfg)
    with torch.no_grad(): torch.testing.assert_close(ref(x, t, y), ours(x, t, y), atol=ATOL, rtol=0)
    back = lightningdit_state_dict_to_ours(off, cfg)
    assert sorted(back) == sorted(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())  # exact round trip


def test_from_official_checkpoint_uses_ema():
    cfg, ref = make_pair('B1')
    other = randomize(RefLightningDiT(4, 1, 8, 128, 2, 2, 5), seed=9)
    m = lightningdit_from_official({'model': other.state_dict(), 'ema': ref.state_dict(), 'opt': {}, 'config': {}}, cfg)
    x, t, y = inputs(cfg)
    with torch.no_grad(): torch.testing.assert_close(m(x, t, y), ref(x, t, y), atol=ATOL, rtol=0)
    assert not m.training


def test_cfg_official_guides_three_channels():
    cfg, ref = make_pair('B1')
    ours = LightningDiT(cfg).eval(); ours.load_state_dict(lightningdit_state_dict_to_ours(ref.state_dict(), cfg))
    x, t, _ = inputs(cfg, n=2)
    y = torch.tensor([1, 2]); null = torch.full((2,), cfg.num_classes)
    s = 4.0
    with torch.no_grad():
        off = ref.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), s)[:2]
        vc, vu = ours(x, t, y), ours(x, t, null)
    full = vu + s * (vc - vu)  # classifier-free guidance on every channel
    torch.testing.assert_close(off[:, :3], full[:, :3], atol=1e-4, rtol=0)
    torch.testing.assert_close(off[:, 3:], vc[:, 3:], atol=ATOL, rtol=0)  # the rest stays conditional
    assert (off[:, 3:] - full[:, 3:]).abs().max() > 1e-2


# ---------------------------------------------------------------- errors
def test_conversion_errors():
    cfg, ref = make_pair('B1')
    sd = ref.state_dict()
    with pytest.raises(KeyError, match='blocks.0.mlp.w1.weight'):
        lightningdit_state_dict_to_ours({**sd, 'blocks.0.mlp.w1.weight': sd['blocks.0.mlp.w3.weight']}, cfg)
    with pytest.raises(KeyError, match='blocks.1.attn.proj.bias'):
        lightningdit_state_dict_to_ours({k: v for k, v in sd.items() if k != 'blocks.1.attn.proj.bias'}, cfg)
    with pytest.raises(KeyError, match='blocks.2'):  # a deeper checkpoint than the config
        lightningdit_state_dict_to_ours({**sd, 'blocks.2.attn.proj.bias': sd['blocks.1.attn.proj.bias']}, cfg)
    with pytest.raises(KeyError, match='ema'):  # a whole training checkpoint is not a state dict
        lightningdit_state_dict_to_ours({'ema': sd}, cfg)
    zero = {**sd, 'blocks.1.norm2.weight': sd['blocks.1.norm2.weight'].clone().index_fill_(0, torch.tensor([3]), 0.0)}
    lightningdit_state_dict_to_ours(zero, cfg)  # with gains as parameters a zero gain is fine
    with pytest.raises(ValueError, match='zero RMSNorm gain'): lightningdit_state_dict_to_ours(zero, replace(cfg, norm_affine=False))
    with pytest.raises(ValueError, match='pos_embed'): lightningdit_state_dict_to_ours(sd, replace(cfg, input_size=8))
    with pytest.raises(KeyError, match='feat_rope'): lightningdit_state_dict_to_ours(sd, replace(cfg, use_rope=False))
    with pytest.raises(KeyError, match='q_norm'): lightningdit_state_dict_to_ours(sd, replace(cfg, qk_norm=True))
    no_null = RefLightningDiT(4, 1, 8, 128, 2, 2, 5, class_dropout_prob=0.0).state_dict()  # no null row
    with pytest.raises(ValueError, match='y_embedder.table.weight'): lightningdit_state_dict_to_ours(no_null, cfg)
    with pytest.raises(ValueError, match='time_scale'): ours_to_lightningdit_state_dict({}, replace(cfg, time_scale=1000.0))


# ---------------------------------------------------------------- the official module itself, when available
def _import_official(repo):
    "Import models.lightningdit from a LightningDiT checkout; fairscale (only imported by its rmsnorm.py) is stubbed."
    for name in ['fairscale', 'fairscale.nn', 'fairscale.nn.model_parallel', 'fairscale.nn.model_parallel.initialize',
                 'fairscale.nn.model_parallel.layers']:
        sys.modules.setdefault(name, types.ModuleType(name))
    layers = sys.modules['fairscale.nn.model_parallel.layers']
    layers.ColumnParallelLinear = layers.ParallelEmbedding = layers.RowParallelLinear = object
    sys.modules['fairscale.nn.model_parallel'].initialize = sys.modules['fairscale.nn.model_parallel.initialize']
    sys.path.insert(0, repo)
    try: return importlib.import_module('models.lightningdit')
    finally: sys.path.remove(repo)


@pytest.fixture
def official(monkeypatch):
    repo = os.environ.get('LIGHTNINGDIT_REPO')
    if not repo or not os.path.exists(os.path.join(repo, 'models', 'lightningdit.py')):
        pytest.skip('set LIGHTNINGDIT_REPO to a hustvl/LightningDiT checkout to compare with the official module')
    pytest.importorskip('einops')
    monkeypatch.setenv('TORCHDYNAMO_DISABLE', '1')  # read when its @torch.compile decorators run: plain eager functions
    try: return _import_official(repo)
    except ImportError as e: pytest.skip(f'official module not importable: {e}')


@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('use_rope,qk_norm', [(True, False), (False, False), (True, True)])
def test_official_module(official, shape, use_rope, qk_norm):
    cfg, ref = make_pair(shape, use_rope, qk_norm)
    off = official.LightningDiT(input_size=cfg.input_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
                                hidden_size=cfg.hidden_size, depth=cfg.depth, num_heads=cfg.num_heads,
                                num_classes=cfg.num_classes, use_qknorm=qk_norm, use_swiglu=True, use_rope=use_rope,
                                use_rmsnorm=True).eval()
    tables = lightningdit_tables(cfg)  # the official model's own fixed tables = the reference's = ours
    assert sorted(k for k in off.state_dict() if k in ('pos_embed',) or k.startswith('feat_rope.')) == sorted(tables)
    for k, v in tables.items():
        torch.testing.assert_close(ref.state_dict()[k], off.state_dict()[k], atol=0, rtol=0)
        torch.testing.assert_close(v, off.state_dict()[k], atol=2e-6, rtol=0)
    off.load_state_dict(ref.state_dict(), strict=True)  # the reference has exactly the official names and shapes
    ours = LightningDiT(cfg).eval(); ours.load_state_dict(lightningdit_state_dict_to_ours(off.state_dict(), cfg))
    x, t, y = inputs(cfg)
    with torch.no_grad():
        want = off(x, t, y)
        torch.testing.assert_close(ref(x, t, y), want, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x, t, y), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize('size', ['B/1', 'XL/1'])
def test_official_parameter_count(official, size):
    D, depth, heads, p = LIGHTNINGDIT_SIZES[size]
    with torch.device('meta'):
        off = official.LightningDiT(input_size=16, patch_size=p, in_channels=64, hidden_size=D, depth=depth,
                                    num_heads=heads, num_classes=1000, use_qknorm=False, use_swiglu=True, use_rope=True,
                                    use_rmsnorm=True)
        ours = LightningDiT(lightningdit_config(size))
    assert sum(v.numel() for v in off.parameters()) == count_params(ours) + 256 * D  # + the frozen pos_embed parameter
