"Tests for vtp_nb.vit: parameter counts against the official release, checkpoints, resolutions, config errors."
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import dataclasses, io
import pytest, torch
from vtp_nb.vit import ViTConfig, VIT_SIZES, VisualTokenizer, rope_2d_sincos, apply_rope

# encoder trunks (patch embed, cls/mask tokens, blocks, final norm) of the official VTP-S/B/L checkpoints
OFFICIAL_TRUNK = {'S': 21.6e6, 'B': 85.6e6, 'L': 303.5e6}

@pytest.mark.parametrize('size', ['S', 'B', 'L'])
def test_trunk_params_match_official(size):
    with torch.device('meta'): m = VisualTokenizer(VIT_SIZES[size]())
    trunk = m.param_counts()['trunk']
    assert abs(trunk / OFFICIAL_TRUNK[size] - 1) < 0.01, (size, trunk)
    assert m.param_counts()['bottleneck'] == m.cfg.width * 64

def test_state_dict_round_trip():
    torch.manual_seed(0)
    m = VisualTokenizer(VIT_SIZES['tiny'](drop_path_rec=0.1)).eval()
    buf = io.BytesIO()
    torch.save({'config': dataclasses.asdict(m.cfg), 'model': m.state_dict()}, buf)
    buf.seek(0); ck = torch.load(buf, weights_only=True)
    m2 = VisualTokenizer.from_config_dict(ck['config']); m2.load_state_dict(ck['model']); m2.eval()
    assert m2.cfg == m.cfg
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad(): assert torch.equal(m(x), m2(x))
    # a fresh model differs, so the equality above is a real check
    with torch.no_grad(): assert not torch.equal(VisualTokenizer(m.cfg).eval()(x), m(x))
    assert 'mask_token' in ck['model'] and 'bottleneck.weight' in ck['model']

@pytest.mark.parametrize('hw', [(32, 32), (48, 48), (64, 64), (40, 24)])
def test_resolution_agnostic(hw):
    m = VisualTokenizer(VIT_SIZES['tiny']()).eval()
    H, W = hw
    x = torch.rand(1, 3, H, W) * 2 - 1
    with torch.no_grad():
        z = m.encode(x)
        assert z.shape == (1, 16, H // 8, W // 8)
        assert m.decode(z).shape == x.shape
        f = m.forward_features(x)
    assert f['patch'].shape == (1, (H // 8) * (W // 8), 64) and f['z_cls'].shape == (1, 16)

def test_rope_same_angles_at_any_resolution():
    "Normalised coordinates: the corner patches of a 4x4 and an 8x8 grid sit at +-(1 - 1/h)."
    s4, c4 = rope_2d_sincos(4, 4, 16); s8, c8 = rope_2d_sincos(8, 8, 16)
    a4, a8 = torch.atan2(s4, c4), torch.atan2(s8, c8)
    # centre symmetry: first and last patch have opposite angles at both resolutions
    assert torch.allclose(a4[0], -a4[-1], atol=1e-5) and torch.allclose(a8[0], -a8[-1], atol=1e-5)

def test_rope_leaves_cls_alone_in_both_dtypes():
    q = torch.randn(2, 5, 17, 16)
    for dt in (torch.float32, torch.bfloat16):
        s, c = rope_2d_sincos(4, 4, 16, dtype=dt)
        out = apply_rope(q, s, c, n_prefix=1)
        assert out.dtype == torch.float32
        assert torch.equal(out[..., 0, :], q[..., 0, :].to(dt).float())

@pytest.mark.parametrize('kw,field', [
    (dict(width=100, heads=3), 'width=100 must be divisible by heads=3'),
    (dict(dec_width=96, dec_heads=5), 'dec_width=96 must be divisible by dec_heads=5'),
    (dict(width=36, heads=6), 'head dim 6 must be a multiple of 4'),
    (dict(img_size=250), 'img_size=250'),
    (dict(rope_dtype='fp16'), 'rope_dtype'),
    (dict(drop_path_ssl=1.0), 'drop_path_ssl'),
    (dict(depth=0), 'depth=0'),
    (dict(bottleneck_dim=16.0), 'bottleneck_dim'),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field.replace('(', r'\(')): ViTConfig(**kw)

def test_unknown_config_key_and_bad_inputs():
    with pytest.raises(ValueError, match='widht'): ViTConfig.from_dict({'widht': 64})
    m = VisualTokenizer(VIT_SIZES['tiny']())
    with pytest.raises(ValueError, match='multiple of patch_size=8'): m.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match='branch'): m.forward_features(torch.zeros(1, 3, 32, 32), branch='dino')
    with pytest.raises(ValueError, match=r'expected \(B, N\)'):
        m.forward_features(torch.zeros(1, 3, 32, 32), masks=torch.zeros(1, 15, dtype=torch.bool))

def test_routing_switch():
    for ae_only, dim in ((True, 64), (False, 16)):
        m = VisualTokenizer(VIT_SIZES['tiny'](bottleneck_ae_only=ae_only))
        with torch.no_grad(): cls, patch = m.semantic_features(m.forward_features(torch.zeros(2, 3, 32, 32)))
        assert m.semantic_dim == dim and cls.shape == (2, dim) and patch.shape == (2, 16, dim)

def test_gradients_reach_mask_token_without_masks():
    "The 0 * mask_token term keeps every parameter in the graph (DDP needs it)."
    m = VisualTokenizer(VIT_SIZES['tiny']())
    f = m.forward_features(torch.rand(2, 3, 32, 32))
    (f['cls'].sum() + f['z_patch'].sum() + m.decode(m.encode(torch.rand(1, 3, 32, 32))).sum()).backward()
    assert all(p.grad is not None for p in m.parameters())

def test_intermediate_layers_conventions():
    m = VisualTokenizer(VIT_SIZES['tiny']()).eval()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        (p, c), = m.get_intermediate_layers(x, 1, return_class_token=True)
        f = m.forward_features(x)
        grids = m.get_intermediate_layers(x, [0, 1], reshape=True)
    assert torch.allclose(p, f['patch'], atol=1e-6) and torch.allclose(c, f['cls'], atol=1e-6)
    assert [tuple(g.shape) for g in grids] == [(2, 64, 4, 6)] * 2
