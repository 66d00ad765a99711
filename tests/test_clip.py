"Tests for vtp_nb.clip: offline tokenizer, loss equivalence, multi-rank gathering, logit-scale clamp, BranchSampler."
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import math
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from vtp_nb.clip import (TextConfig, TEXT_SIZES, text_config, get_tokenizer, build_text_tower, ClipImageHead, info_nce,
                         clamp_logit_scale_, ContrastiveLoss, ClipConfig, ClipBranch, zero_shot_classifier,
                         zero_shot_eval, BranchSampler)


def _feats(B, E, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, E, generator=g), dim=-1), F.normalize(torch.randn(B, E, generator=g), dim=-1)


# ---- tokenizer and text tower
def test_tokenizer_offline():
    import open_clip.tokenizer as octok
    assert os.environ['HF_HUB_OFFLINE'] == '1'
    assert Path(octok.default_bpe()).is_file()                # the BPE vocabulary ships inside the package
    tok = get_tokenizer(24)
    ids = tok(['a red circle on a striped background', 'x ' * 40])
    assert ids.shape == (2, 24) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sot_token_id and ids[1, -1] == tok.eot_token_id   # truncated caption keeps EOT last
    assert ids.max() < TEXT_SIZES['tiny'].vocab_size
    assert get_tokenizer(24) is tok                            # cached


def test_text_tower_shapes_and_causality():
    torch.manual_seed(0)
    cfg = text_config('tiny', embed_dim=32)
    tower = build_text_tower(cfg).eval()
    ids = get_tokenizer(cfg.context_length)(['a blue star', 'a heart'])
    out = tower(ids)
    assert out.shape == (2, 32)
    changed = ids.clone(); changed[:, -3:] = 77               # after EOT: invisible through the causal mask
    torch.testing.assert_close(tower(changed), out)
    assert tower.text_projection.shape == (cfg.width, 32) and tower.attn_mask is not None


def test_text_config_errors():
    with pytest.raises(KeyError, match='unknown text size'): text_config('huge')
    with pytest.raises(ValueError, match='vocab'): build_text_tower(text_config('tiny', vocab_size=500))
    with pytest.raises(ValueError, match='divisible'): build_text_tower(text_config('tiny', heads=3))
    assert text_config('L14').width == 768 and TEXT_SIZES['tiny'].width == 64
    cfg = text_config('tiny', layers=1)
    assert TEXT_SIZES['tiny'].layers == 2 and cfg.layers == 1  # overrides do not mutate the registry


# ---- losses
@pytest.mark.parametrize('B,scale', [(2, 1.0), (8, 1 / 0.07), (33, 100.0)])
def test_info_nce_matches_open_clip(B, scale):
    u, v = _feats(B, 16, seed=B)
    torch.testing.assert_close(info_nce(u, v, scale), ClipLoss()(u, v, torch.tensor(scale)))
    torch.testing.assert_close(ContrastiveLoss('clip')(u, v, torch.tensor(scale)), ClipLoss()(u, v, torch.tensor(scale)))


def test_info_nce_limits_and_duplicates():
    u, v = _feats(16, 8)
    assert math.isclose(info_nce(u, v, 0.).item(), math.log(16), rel_tol=1e-6)
    assert info_nce(u, u, 100.).item() < 1e-3
    # identical captions share the target: with identical text embeddings the loss is unchanged
    cid = torch.tensor([0, 1, 0, 2])
    img = F.normalize(torch.randn(4, 8), dim=-1); txt = F.normalize(torch.randn(3, 8), dim=-1)[cid]
    torch.testing.assert_close(info_nce(img, txt, 10., cid), info_nce(img, txt, 10.))


def test_siglip_equation_and_errors():
    u, v = _feats(6, 8)
    got = ContrastiveLoss('siglip')(u, v, torch.tensor(10.), torch.tensor(-10.))
    z = 2 * torch.eye(6) - 1
    torch.testing.assert_close(got, -F.logsigmoid(z * (10. * u @ v.T - 10.)).sum() / 6)
    with pytest.raises(ValueError, match='logit_bias'): ContrastiveLoss('siglip')(u, v, torch.tensor(10.))
    with pytest.raises(ValueError, match="'clip' or 'siglip'"): ContrastiveLoss('nce')


def _ddp_worker(rank, world_size, init_file, q):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    u, v = _feats(8, 16)                                        # the same global batch on every rank
    res = {}
    for local_loss in (False, True):
        ul, vl = (t.chunk(world_size)[rank].clone().requires_grad_() for t in (u, v))
        loss_fn = ContrastiveLoss('clip', rank=rank, world_size=world_size, local_loss=local_loss, gather_with_grad=True)
        res[local_loss] = loss_fn(ul, vl, torch.tensor(1 / 0.07)).item()
    q.put((rank, res))                                          # plain floats: no shared-memory tensors
    dist.barrier()                                              # tear down together (gloo can abort otherwise)
    dist.destroy_process_group()


def test_clip_loss_gathers_across_ranks(tmp_path):
    "Two CPU ranks (gloo): OpenCLIP's gathering makes each rank's loss use the global batch."
    mp = torch.multiprocessing.get_context('spawn')
    q = mp.Queue()
    procs = [mp.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / 'init'), q)) for r in range(2)]
    for p in procs: p.start()
    res = dict(q.get(timeout=180) for _ in procs)
    for p in procs: p.join(timeout=60)
    u, v = _feats(8, 16)
    full = info_nce(u, v, 1 / 0.07).item()
    for r in (0, 1): assert math.isclose(res[r][False], full, rel_tol=1e-5)     # global logits on every rank
    assert math.isclose((res[0][True] + res[1][True]) / 2, full, rel_tol=1e-5)  # local_loss: own rows, mean = global


# ---- logit scale
def test_clamp_logit_scale():
    t = torch.nn.Parameter(torch.tensor(9.))
    clamp_logit_scale_(t); assert math.isclose(t.item(), math.log(100), rel_tol=1e-6)
    with torch.no_grad(): t.fill_(-3.)
    clamp_logit_scale_(t); assert t.item() == 0.
    with torch.no_grad(): t.fill_(2.)
    clamp_logit_scale_(t); assert t.item() == 2.                # inside the range: untouched
    br = ClipBranch(16)
    assert math.isclose(br.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad(): br.logit_scale.fill_(10.)
    br.clamp_logit_scale_(); assert math.isclose(br.logit_scale.item(), math.log(100), rel_tol=1e-6)
    clamp_logit_scale_(br, max_log=1.); assert br.logit_scale.item() == 1.   # module form


def test_clip_branch_step_and_head():
    torch.manual_seed(0)
    br = ClipBranch(16, ClipConfig(pool='mean'))
    cls, patch = torch.randn(4, 16), torch.randn(4, 9, 16)
    out = br(cls, patch, br.tokenize(['a circle', 'a square', 'a star', 'a ring']))
    assert out['image_features'].shape == (4, 64) and torch.allclose(out['image_features'].norm(dim=-1), torch.ones(4))
    out['loss'].backward()
    assert br.logit_scale.grad is not None and br.text.token_embedding.weight.grad is not None
    with pytest.raises(ValueError, match="'cls' or 'mean'"): ClipImageHead(16, 8, pool='max')
    with pytest.raises(ValueError, match='patch tokens'): ClipImageHead(16, 8, pool='mean')(cls)
    sig = ClipBranch(16, ClipConfig(loss='siglip'))
    assert math.isclose(sig.logit_scale.exp().item(), 10., rel_tol=1e-5) and sig.logit_bias.item() == -10.
    sig(cls, patch, sig.tokenize(['a', 'b', 'c', 'd']))['loss'].backward()


# ---- zero-shot
def test_zero_shot():
    torch.manual_seed(0)
    br = ClipBranch(16)
    W = zero_shot_classifier(br.encode_text, br.tokenize, ['circle', 'square', 'star'], ['a {}.', 'a photo of a {}.'])
    assert W.shape == (3, 64) and torch.allclose(W.norm(dim=-1), torch.ones(3))
    y = torch.tensor([0, 1, 2, 2, 1])
    x = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    res = zero_shot_eval(lambda xb: W[y], W, x, y, batch_size=5)
    assert res == dict(top1=1.0, top5=1.0, n=5)
    wrong = zero_shot_eval(lambda xb: W[(y + 1) % 3], W, x, y)
    assert wrong['top1'] == 0.0 and wrong['top5'] == 1.0     # 3 classes: the top-5 holds every class
    with pytest.raises(ValueError, match='labels'): zero_shot_eval(lambda xb: W[y], W, x, y[:3])
    with pytest.raises(ValueError, match='placeholder'): zero_shot_classifier(br.encode_text, br.tokenize, ['a'], ['no slot'])


# ---- batch sampler
def test_sampler_sizes_ranges_and_determinism():
    s = BranchSampler(32, 12, 5, seed=3)
    for k in range(20):
        a, b = s(k)
        assert a.dtype == torch.long and len(a) == 12 and len(b) == 5
        assert len(a.unique()) == 12 and len(b.unique()) == 5
        assert a.min() >= 0 and a.max() < 32 and b.min() >= 0 and b.max() < 32
        assert torch.equal(a, a.sort().values)
    same = BranchSampler(32, 12, 5, seed=3)
    assert all(torch.equal(x, y) for k in range(5) for x, y in zip(s(k), same(k)))
    other = BranchSampler(32, 12, 5, seed=4)
    assert any(not torch.equal(s(k)[0], other(k)[0]) for k in range(5))
    # the internal counter walks the steps and resumes from a state dict
    c = BranchSampler(32, 12, 5, seed=3)
    first = [c() for _ in range(3)]
    assert all(torch.equal(first[k][0], s(k)[0]) for k in range(3))
    d = BranchSampler(32, 12, 5, seed=3); d.load_state_dict(c.state_dict())
    assert torch.equal(d()[0], s(3)[0])


def test_sampler_pick_distribution():
    "Each index is picked with probability B_sub / B (chi-square on the pick counts), overlap B_ssl*B_rec/B."
    B, bs, br, steps = 20, 5, 8, 4000
    s = BranchSampler(B, bs, br, seed=0)
    cs, cr, overlap = torch.zeros(B), torch.zeros(B), 0
    for k in range(steps):
        a, b = s(k); cs[a] += 1; cr[b] += 1; overlap += len(set(a.tolist()) & set(b.tolist()))
    for counts, n in ((cs, bs), (cr, br)):
        expected = steps * n / B
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 45, chi2                                # df = 19: P(chi2 > 45) < 0.001
    assert abs(overlap / steps - bs * br / B) < 0.1


def test_sampler_disjoint_and_full_batch():
    s = BranchSampler(16, 6, 10, disjoint=True, seed=1)
    counts = torch.zeros(16)
    for k in range(500):
        a, b = s(k)
        assert not set(a.tolist()) & set(b.tolist())
        counts[a] += 1
    assert ((counts / 500 - 6 / 16).abs() < 0.08).all()
    a, b = BranchSampler(8, 8, 8)(7)
    assert torch.equal(a, torch.arange(8)) and torch.equal(b, torch.arange(8))       # plain joint training
    a, b = BranchSampler(8, 0, 8)(0)
    assert len(a) == 0 and torch.equal(b, torch.arange(8))


def test_sampler_ddp_sizes():
    ranks = [BranchSampler(64, 16, 8, seed=0, rank=r, world_size=4) for r in range(4)]
    outs = [r(0) for r in ranks]
    assert [len(a) for a, _ in outs] == [4] * 4 and [len(b) for _, b in outs] == [2] * 4   # globals 16 and 8
    assert all(a.max() < 16 for a, _ in outs)                    # indices into the local batch of 64/4
    assert len({tuple(a.tolist()) for a, _ in outs}) > 1         # ranks draw independently
    assert ranks[0].local_batch == 16


@pytest.mark.parametrize('kwargs,match', [
    (dict(batch_size=8, batch_ssl=9, batch_rec=2), 'batch_ssl=9 > batch_size=8'),
    (dict(batch_size=8, batch_ssl=2, batch_rec=9), 'batch_rec=9 > batch_size=8'),
    (dict(batch_size=8, batch_ssl=5, batch_rec=4, disjoint=True), 'disjoint'),
    (dict(batch_size=8, batch_ssl=-1, batch_rec=2), 'non-negative'),
    (dict(batch_size=8, batch_ssl=2.0, batch_rec=2), 'non-negative int'),
    (dict(batch_size=0, batch_ssl=0, batch_rec=0), '>= 1'),
    (dict(batch_size=12, batch_ssl=6, batch_rec=3, world_size=2), 'batch_rec=3 is not divisible by world_size=2'),
    (dict(batch_size=10, batch_ssl=4, batch_rec=2, world_size=4), 'batch_size=10 is not divisible'),
    (dict(batch_size=8, batch_ssl=4, batch_rec=2, rank=2, world_size=2), 'rank=2'),
])
def test_sampler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match): BranchSampler(**kwargs)
