"Tests for vtp_nb.ssl and vtp_nb.ssl_branch: masks over many seeds, the VisualTokenizer contract, distributed code paths."
import os, math, random, socket
os.environ['HF_HUB_OFFLINE'] = '1'
import pytest
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as dist
import torch.multiprocessing as mp
from vtp_nb.ssl import (MultiCropConfig, multicrop, photometric, block_mask, ibot_masks, DINOHead, DINOLoss,
                        iBOTPatchLoss, KoLeoLoss, sinkhorn_knopp, collapse_stats)
from vtp_nb.ssl_branch import EMATeacher, SSLBranch, SSLConfig, unwrap
from vtp_nb.core import warmup_cosine

torch.set_num_threads(1)


class TinyTrunk(nn.Module):
    "Minimal encoder with the VisualTokenizer feature contract."
    def __init__(self, dim=16, patch=8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch); self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim)); self.semantic_dim, self.patch_size = dim, patch
    def forward_features(self, x, masks=None, branch=None):
        t = self.patch(x).flatten(2).transpose(1, 2)
        if masks is not None: t = torch.where(masks[..., None], self.mask_token, t)
        t = torch.cat([self.cls.expand(len(t), -1, -1) + t.mean(1, keepdim=True), t], 1)
        return dict(cls=t[:, 0], patch=t[:, 1:], z_cls=t[:, 0], z_patch=t[:, 1:])
    def semantic_features(self, f): return f['cls'], f['patch']


def test_block_masks_many_seeds():
    for seed in range(200):
        rng = random.Random(seed)
        grid = rng.choice([(4, 4), (8, 8), (14, 14)])
        target = rng.randint(1, grid[0] * grid[1] // 2)
        m, blocks = block_mask(grid, target, rng=rng, return_blocks=True)
        assert int(m.sum()) <= target
        u = torch.zeros_like(m)
        for t, l, h, w in blocks:
            assert 0 <= t and t + h <= grid[0] and 0 <= l and l + w <= grid[1]
            u[t:t + h, l:l + w] = True
        assert torch.equal(u, m)


def test_ibot_masks_bounds_and_seed():
    a = ibot_masks(128, (14, 14), rng=random.Random(3))
    b = ibot_masks(128, (14, 14), rng=random.Random(3))
    assert torch.equal(a['masks'], b['masks'])
    r = a['masks'].float().mean(1)
    assert int((r > 0).sum()) == 64 and float(r.max()) <= 0.5
    assert float(r[r > 0].mean()) > 0.25                    # stratified over [0.1, 0.5]: mean ratio near 0.3
    assert a['indices'].numel() == a['n_masked'] == a['weights'].numel()
    assert ibot_masks(128, (14, 14), rng=random.Random(4))['masks'].ne(a['masks']).any()


class _RefMasker:
    """Reference for the iBOT block masks, written from the definition of DINOv2's MaskingGenerator
    (dinov2/data/masking.py) and collate_data_and_cast (dinov2/data/collate.py); independent of vtp_nb.ssl."""
    def __init__(self, img_size, patch_size, min_area=4, min_aspect=0.3):
        self.side = img_size // patch_size
        self.cap = 0.5 * img_size // patch_size * img_size // patch_size     # DINOv2 train.py's expression, left to right
        self.min_area, self.log_r = min_area, (math.log(min_aspect), math.log(1 / min_aspect))

    def _try_block(self, m, rnd, allowed):
        for attempt in range(10):
            area = rnd.uniform(self.min_area, allowed)
            ratio = math.exp(rnd.uniform(*self.log_r))
            bh = int(round(math.sqrt(area * ratio))); bw = int(round(math.sqrt(area / ratio)))
            if bh >= self.side or bw >= self.side: continue
            y = rnd.randint(0, self.side - bh); x = rnd.randint(0, self.side - bw)
            fresh = bh * bw - int(m[y:y + bh, x:x + bw].sum())
            if fresh > 0 and fresh <= allowed:
                m[y:y + bh, x:x + bw] = True
                return fresh
        return 0

    def mask(self, target, rnd):
        m = np.zeros((self.side, self.side), dtype=bool); have = 0
        while have < target:
            got = self._try_block(m, rnd, min(target - have, self.cap))
            if not got: break
            have += got
        return m

    def collate(self, n_crops, rnd, lo=0.1, hi=0.5, p=0.5):
        N = self.side ** 2
        k = int(n_crops * p)
        cuts = torch.linspace(lo, hi, k + 1)                               # float32, like DINOv2's
        out = [torch.from_numpy(self.mask(int(N * rnd.uniform(cuts[j], cuts[j + 1])), rnd)) for j in range(k)]
        out += [torch.zeros(self.side, self.side, dtype=torch.bool) for _ in range(n_crops - k)]
        rnd.shuffle(out)
        masks = torch.stack(out).flatten(1)
        w = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
        return masks, w


@pytest.mark.parametrize('side,patch', [(4, 8), (7, 16), (14, 16), (16, 14)])
def test_block_mask_equals_dinov2_reference(side, patch):
    ref = _RefMasker(side * patch, patch)
    assert ref.cap == (side // 2) * side                                   # our default max_block is DINOv2's cap
    N = side * side
    for seed in range(1500):
        rnd = random.Random(10_000 + seed)
        target = rnd.randint(0, 5) if seed % 4 == 0 else int(N * rnd.uniform(0.1, 0.5))
        r1, r2 = random.Random(seed), random.Random(seed)
        ours, blocks = block_mask((side, side), target, rng=r1, return_blocks=True)
        assert np.array_equal(ours.numpy(), ref.mask(target, r2)), (side, seed, target)
        assert r1.getstate() == r2.getstate()                             # same random calls, same order
        assert int(ours.sum()) <= target
        assert all(h < side and w < side for _, _, h, w in blocks)       # never a full side


@pytest.mark.parametrize('side', [4, 14, 16])
def test_ibot_masks_equal_dinov2_reference_collate(side):
    ref = _RefMasker(side * 16, 16)
    for seed in range(150):
        n = [1, 2, 3, 8, 16, 64][seed % 6]
        r1, r2 = random.Random(seed), random.Random(seed)
        out = ibot_masks(n, (side, side), rng=r1)
        masks, w = ref.collate(n, r2)
        assert torch.equal(out['masks'], masks) and torch.equal(out['weights'], w), (side, seed)
        assert torch.equal(out['indices'], masks.flatten().nonzero().flatten())
        assert r1.getstate() == r2.getstate()


class _FirstDraw(random.Random):
    "A seeded random.Random whose first random() call returns a chosen value."
    def __init__(self, first, seed=0): super().__init__(seed); self.first = first
    def random(self):
        if self.first is None: return super().random()
        u, self.first = self.first, None
        return u


def test_ibot_masks_target_computed_in_float32():
    # 196 * U(0.1, 0.5) at this draw is 68.0000x in float32 (DINOv2's linspace tensors) but 67.9999x in float64
    u = 0.6173469298612294
    edges = torch.linspace(0.1, 0.5, 2)
    assert int(196 * (edges[0] + (edges[1] - edges[0]) * u)) == 68 and int(196 * (0.1 + 0.4 * u)) == 67
    out = ibot_masks(2, (14, 14), rng=_FirstDraw(u))
    masks, _ = _RefMasker(224, 16).collate(2, _FirstDraw(u))
    assert torch.equal(out['masks'], masks)


def test_block_mask_distribution():
    # below min_block (4) a request can come back empty; on 4x4 a target of 1 does so about 27% of the time
    empty = sum(int(block_mask((4, 4), 1, rng=random.Random(s)).sum()) == 0 for s in range(2000)) / 2000
    assert 0.2 < empty < 0.35
    # 4x4, 100 batches of 64 crops, 32 picked for masking: about 1.7% of the picked crops come back empty
    nonempty = sum(int(ibot_masks(64, (4, 4), rng=random.Random(s))['masks'].any(1).sum()) for s in range(100))
    assert 3050 < nonempty < 3200


def test_blur_invert_matches_dinov2_code_behaviour():
    x = torch.rand(16, 3, 32, 32)
    off = dict(jitter_p=0.0, grayscale_p=0.0)
    # DINOv2's code applies blur with 1 - p: p = 1.0 on view 1 means never blurred
    y = photometric(x, MultiCropConfig(blur_invert=True, **off), blur_p=1.0, solarize_p=0.0)
    assert torch.allclose(y, x, atol=1e-6)
    z = photometric(x, MultiCropConfig(blur_invert=False, **off), blur_p=1.0, solarize_p=0.0)
    assert not torch.allclose(z, x)


def test_strong_colour_changes_hue_between_views():
    x = torch.zeros(64, 3, 32, 32); x[:, 0] = 0.8; x[:, 1] = -0.8; x[:, 2] = -0.8     # all red
    cfg = MultiCropConfig(strong_colour=True, grayscale_p=0.0, n_local=0)
    g = multicrop(x, cfg, torch.Generator().manual_seed(0))['global_crops']
    m1, m2 = [v.mean((2, 3)) for v in g.chunk(2)]
    assert (m1 - m2).abs().max(1).values.median() > 0.3                               # views disagree on colour


def test_koleo_all_duplicates_finite():
    x = torch.ones(8, 4, requires_grad=True)
    v = KoLeoLoss()(x); v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()


def test_teacher_rejects_mismatched_student():
    t = EMATeacher(nn.Linear(3, 4))
    with pytest.raises(KeyError, match='teacher and student differ'):
        t.update(nn.Sequential(nn.Linear(3, 4)), 0.5)


def test_ssl_branch_step_moves_only_student_then_ema():
    torch.manual_seed(0)
    trunk = TinyTrunk()
    br = SSLBranch(trunk, SSLConfig(out_dim=32, hidden_dim=16, bottleneck_dim=8, crops=MultiCropConfig(n_local=2)))
    opt = torch.optim.SGD([p for p in list(trunk.parameters()) + list(br.parameters()) if p.requires_grad], lr=0.5)
    inp = br.make_inputs(torch.rand(8, 3, 32, 32) * 2 - 1, 8, torch.Generator().manual_seed(0), random.Random(0))
    t_before = {k: v.clone() for k, v in br.teacher.state_dict().items()}
    out = br(trunk, inp['global_crops'], inp['local_crops'], inp['masks'], 0.04)
    assert torch.isfinite(out['loss'])
    opt.zero_grad(); out['loss'].backward(); opt.step()
    assert all(torch.equal(v, t_before[k]) for k, v in br.teacher.state_dict().items())   # optimiser never moves it
    br.update_teacher(nn.DataParallel(trunk), 0.0)                                        # wrapper removed
    assert torch.equal(br.teacher.module['tokenizer'].patch.weight, trunk.patch.weight)
    assert torch.equal(br.teacher.module['dino_head'].mlp[0].weight, br.dino_head.mlp[0].weight)
    assert not torch.equal(br.dino_loss.center, torch.zeros_like(br.dino_loss.center))   # centre updated


def test_ssl_branch_with_visual_tokenizer():
    vit = pytest.importorskip('vtp_nb.vit')
    torch.manual_seed(0)
    trunk = vit.VisualTokenizer(vit.VIT_SIZES['small_f8d32']())
    br = SSLBranch(trunk, SSLConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, crops=MultiCropConfig(n_local=2)))
    inp = br.make_inputs(torch.rand(4, 3, 32, 32) * 2 - 1, trunk.patch_size, torch.Generator().manual_seed(0), random.Random(0))
    out = br(trunk, inp['global_crops'], inp['local_crops'], inp['masks'], br.teacher_temp(0, 10))
    out['loss'].backward()
    assert torch.isfinite(out['loss']) and trunk.mask_token.grad is not None
    assert not any(p.requires_grad for p in br.teacher.parameters())


def test_schedule_endpoints():
    assert warmup_cosine(0, 50, 0.992, 1.0) == pytest.approx(0.992)
    assert warmup_cosine(49, 50, 0.992, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(500, 50, 0.992, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(5, 50, 1e-3, 0, warmup_steps=10) == pytest.approx(5e-4)


def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _worker(rank, world, port, logits, q):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        part = logits.chunk(world)[rank]
        sk = sinkhorn_knopp(part, 0.1)
        loss = DINOLoss(logits.shape[1]); loss.update_center(part)
        q.put((rank, sk, loss.center.clone()))
        dist.barrier()                                          # tear down together (gloo can abort otherwise)
    finally:
        dist.destroy_process_group()


def test_distributed_sinkhorn_and_center_match_single_process():
    logits = torch.randn(16, 8)
    ctx = mp.get_context('spawn'); q = ctx.Queue(); port = _free_port()
    ps = [ctx.Process(target=_worker, args=(r, 2, port, logits, q)) for r in range(2)]
    for p in ps: p.start()
    res = dict((r, (sk, c)) for r, sk, c in (q.get(timeout=180) for _ in ps))
    for p in ps: p.join(timeout=60)
    full = sinkhorn_knopp(logits, 0.1)
    assert torch.allclose(torch.cat([res[0][0], res[1][0]]), full, atol=1e-5)
    ref = DINOLoss(8); ref.update_center(logits)
    assert torch.allclose(res[0][1], ref.center, atol=1e-6) and torch.allclose(res[1][1], ref.center, atol=1e-6)
