"Tests for vtp_nb.lightningdit, flow, latents and dit: adaLN-Zero init, CFG null class, exact transport, latent stats, determinism, the engine's guarantees on the DiT, CLI."
import os, sys, json, subprocess
os.environ['HF_HUB_OFFLINE'] = '1'
from dataclasses import asdict
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from vtp_nb.core import set_seed, data_small_path
from vtp_nb.config import apply_overrides, ConfigError
from vtp_nb.checkpoint import load_checkpoint
from vtp_nb.vit import load_tokenizer, save_tokenizer
from vtp_nb.lightningdit import DiTConfig, DIT_SIZES, LightningDiT, DiTBlock
from vtp_nb.flow import GaussianMixture2D, ode_solve, sample_dit, shift_time, flow_loss
from vtp_nb.latents import extract_latents, load_latents, normalize_latents, denormalize_latents, LatentShards
from vtp_nb.loaders import StepSampler
from vtp_nb.dit import train_dit, main, plan_batch, dit_config, load_dit, DIT_PRESETS

torch.set_num_threads(1)
SMALL = dict(in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3)


def test_block_identity_and_zero_output():
    set_seed(0)
    cfg = DiTConfig(**SMALL)
    x, c = torch.randn(2, 9, 32), torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(DiTBlock(cfg)(x, c), x)
        m = LightningDiT(cfg)
        v = m(torch.randn(2, 4, 3, 3), torch.rand(2), torch.tensor([0, 3]))
    assert v.shape == (2, 4, 3, 3) and torch.count_nonzero(v) == 0


def test_cfg_null_class_and_label_dropout():
    set_seed(0)
    m = LightningDiT(DiTConfig(**SMALL)).eval()
    for p in m.parameters():
        if p.ndim > 1: torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(3, 4, 2, 2)
    with torch.no_grad():
        null = m(x, 0.5, torch.full((3,), m.null_class))
        forced = m(x, 0.5, torch.tensor([0, 1, 2]), force_drop=torch.ones(3, dtype=torch.bool))
        cond = m(x, 0.5, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(null, forced)
    assert not torch.allclose(null, cond)
    m.train(); set_seed(0)
    y = m.y_embedder.drop(torch.zeros(10_000, dtype=torch.long))
    assert abs((y == 3).float().mean().item() - 0.1) < 0.02  # default class dropout 0.1


def test_sizes_by_name():
    for name, (D, depth, heads) in {'tiny': (128, 4, 4), 'B': (768, 12, 12), 'XL': (1152, 28, 16)}.items():
        cfg = DIT_SIZES[name]()
        assert (cfg.hidden_size, cfg.depth, cfg.num_heads) == (D, depth, heads)


@pytest.mark.parametrize('method,steps', [('euler', 100), ('heun', 20)])
def test_exact_velocity_transports_gaussian_mixture(method, steps):
    gm = GaussianMixture2D.default()
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    xs = ode_solve(gm.velocity, x0, steps, method)
    torch.testing.assert_close(xs.mean(0), gm.mean.float(), atol=0.05, rtol=0)
    torch.testing.assert_close(xs.T.cov(), gm.cov.float(), atol=0.08, rtol=0)
    # a wrong field (no posterior weighting: a single Gaussian fit) must NOT reproduce the covariance structure
    one = GaussianMixture2D(gm.means.mean(0, keepdim=True).float(), torch.eye(2)[None])
    assert (ode_solve(one.velocity, x0, steps, method).T.cov() - gm.cov.float()).abs().max() > 0.3


def test_time_shift_endpoints():
    t = torch.linspace(0, 1, 11)
    for a in (0.3, 1., 3.):
        s = shift_time(t, a)
        assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all()


class _Tok(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = torch.nn.Conv2d(3, 6, 8, 8), torch.nn.ConvTranspose2d(6, 3, 8, 8)
        with torch.no_grad(): self.enc.bias.copy_(torch.linspace(-5, 5, 6))
    def encode(self, x): return self.enc(x) * 3
    def decode(self, z): return self.dec(z)


def test_latent_stats_normalise(tmp_path):
    set_seed(0)
    imgs, labs = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 4, (50,))
    stats = extract_latents(_Tok(), (imgs, labs), tmp_path, flip=True, batch_size=7, shard_size=40, pbar=False)
    assert len(list(tmp_path.glob('shard_*.safetensors'))) == 3 and (tmp_path / 'latent_stats.json').exists()
    z, y, st = load_latents(tmp_path)
    assert z.shape == (100, 6, 2, 2) and st['num_classes'] == 4 and st['flip'] is True
    assert max(abs(m) for m in st['mean']) > 1  # raw latents are far from standard
    zn = normalize_latents(z, st)
    torch.testing.assert_close(zn.mean((0, 2, 3)), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(zn.std((0, 2, 3), unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    torch.testing.assert_close(denormalize_latents(zn, st), z, atol=1e-4, rtol=1e-5)


def test_missing_latents_dir_message(tmp_path):
    with pytest.raises(FileNotFoundError, match='extract'): load_latents(tmp_path)


def small_run(out, *sets, steps=5, batch=8):
    "A DiT run config with the SMALL model, writing to `out`."
    return apply_overrides(dit_config('cpu'), ['model.hidden_size=32', 'model.depth=2', 'model.num_heads=2', f'train.steps={steps}',
                                               f'train.batch_size={batch}', 'train.progress=false', 'train.threads=1',
                                               f'train.out_dir={out}', *sets])

def quiet(*_): pass

def test_sampler_and_training_deterministic(tmp_path):
    set_seed(0)
    z, y = torch.randn(32, 4, 2, 2), torch.randint(0, 3, (32,))
    train_dit(small_run(tmp_path/'1'), (z, y), log=quiet); train_dit(small_run(tmp_path/'2'), (z, y), log=quiet)
    k1, k2 = load_checkpoint(tmp_path/'1'), load_checkpoint(tmp_path/'2')
    assert all(torch.equal(v, k2['model'][k]) for k, v in k1['model'].items())
    ema, _ = load_dit(tmp_path/'1')
    lab = torch.tensor([0, 1, 2])
    a = sample_dit(ema, lab, (4, 2, 2), steps=4, method='heun', cfg_scale=2., seed=7)
    b = sample_dit(ema, lab, (4, 2, 2), steps=4, method='heun', cfg_scale=2., seed=7)
    c = sample_dit(ema, lab, (4, 2, 2), steps=4, method='heun', cfg_scale=2., seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    parts = torch.cat([sample_dit(ema, lab[:1], (4, 2, 2), steps=4, seed=7), sample_dit(ema, lab[1:], (4, 2, 2), steps=4, seed=7, first=1)])
    assert torch.equal(parts, sample_dit(ema, lab, (4, 2, 2), steps=4, seed=7))   # the batch size never changes the samples


def test_flow_loss_at_init_is_three():
    set_seed(0)
    parts = flow_loss(LightningDiT(DiTConfig(**SMALL)), torch.randn(256, 4, 2, 2), torch.zeros(256, dtype=torch.long))
    assert abs(parts['mse'] - 2) < 0.1 and parts['cos'] == 0 and parts['loss'].requires_grad


def _tiny_tokenizer_ckpt(path):
    vit = pytest.importorskip('vtp_nb.vit')
    set_seed(0)
    tok = vit.VisualTokenizer(vit.VIT_SIZES['tiny']())
    save_tokenizer(tok, path)
    return tok


def test_load_tokenizer_roundtrip_and_errors(tmp_path):
    tok = _tiny_tokenizer_ckpt(tmp_path / 'tok.pt')
    tok2 = load_tokenizer(tmp_path / 'tok.pt')
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad(): torch.testing.assert_close(tok.eval().encode(x), tok2.encode(x))
    torch.save({'weights': {}}, tmp_path / 'bad.pt')
    with pytest.raises(ConfigError, match="is not a vtp_nb.ckpt/3 checkpoint"): load_tokenizer(tmp_path / 'bad.pt')


def test_cli_train_sample_end_to_end(tmp_path):
    "train + sample through the CLI on tiny random latents from a (random) tokenizer; sample decodes to PNG."
    tok = _tiny_tokenizer_ckpt(tmp_path / 'tok.pt')
    imgs, labs = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8), torch.arange(3).repeat(8)
    extract_latents(tok, (imgs, labs), tmp_path / 'lat', batch_size=16, tokenizer_path=str(tmp_path / 'tok.pt'), pbar=False)
    main(['train', '--latents', str(tmp_path / 'lat'), '--size', 'tiny', '--steps', '3', '--batch-size', '8',
          '--out', str(tmp_path / 'run'), '--no-progress'])
    ck = load_checkpoint(tmp_path / 'run', kind='dit')
    assert ck['step'] == 3 and ck['config']['model']['in_channels'] == 16 and ck['extra']['stats']['num_classes'] == 3
    main(['train', '--latents', str(tmp_path / 'lat'), '--steps', '5', '--out', str(tmp_path / 'run'), '--no-progress', '--resume'])
    assert load_checkpoint(tmp_path / 'run')['step'] == 5
    main(['sample', '--ckpt', str(tmp_path / 'run'), '--n-per-class', '2', '--cfg', '2.0', '--steps', '3', '--out', str(tmp_path / 's')])
    out = load_file(str(tmp_path / 's' / 'samples.safetensors'))
    assert out['latents'].shape == (6, 16, 4, 4) and out['images'].shape == (6, 3, 32, 32) and out['images'].dtype == torch.uint8
    assert (tmp_path / 's' / 'samples.png').stat().st_size > 1000


@pytest.mark.skipif(not data_small_path().exists(), reason='data_small not present')
def test_cli_extract_data_small(tmp_path):
    _tiny_tokenizer_ckpt(tmp_path / 'tok.pt')
    pytest.importorskip('vtp_nb.data')
    main(['extract', '--tokenizer', str(tmp_path / 'tok.pt'), '--data', 'data_small', '--split', 'val', '--out', str(tmp_path / 'lat')])
    st = json.loads((tmp_path / 'lat' / 'latent_stats.json').read_text())
    assert st['num_latents'] == 2000 and st['latent_shape'] == [16, 4, 4] and st['num_classes'] == 10


def test_paper_presets_are_lightningdit():
    p, x = dit_config('paper'), dit_config('paper_xl')
    assert (p.model.hidden_size, p.model.depth, x.model.hidden_size, x.model.depth) == (768, 12, 1152, 28)
    assert (p.optim.lr, p.optim.betas, p.optim.weight_decay, p.optim.grad_clip, p.train.batch_size) == (2e-4, (0.9, 0.95), 0., 0., 1024)
    assert (p.flow.t_mu, p.flow.t_sigma, p.flow.ema_decay, p.flow.ema_warmup, p.sample.steps) == (-0.75, 1.0, 0.9999, False, 250)
    assert abs(x.sample.shift - 1 / 0.075) < 1e-9 and set(DIT_PRESETS) == {'cpu', 'paper', 'paper_xl'}


def test_extract_from_image_folder_dataset(tmp_path):
    "A dict-yielding Dataset (vtp_nb.data.ImageFolderCaptions) streams through a DataLoader."
    data = pytest.importorskip('vtp_nb.loaders')
    from PIL import Image
    for c in ('cat', 'dog'):
        (tmp_path / 'imgs' / c).mkdir(parents=True)
        for i in range(3): Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()).save(tmp_path / 'imgs' / c / f'{i}.png')
    ds = data.ImageFolderCaptions(tmp_path / 'imgs', transform=data.encoder_transform(16))
    st = extract_latents(_Tok(), ds, tmp_path / 'lat', batch_size=4, pbar=False)
    z, y, _ = load_latents(tmp_path / 'lat')
    assert z.shape == (12, 6, 2, 2) and st['num_classes'] == 2 and y.tolist() == [0, 0, 0, 1, 1, 1] * 2


def _latent_dir(path, n=64, shard_size=24):
    "A latent folder from the random test tokenizer: n images (+ flips) in several shards."
    set_seed(0)
    imgs, labs = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8), torch.arange(n) % 3
    extract_latents(_Tok(), (imgs, labs), path, flip=True, batch_size=16, shard_size=shard_size, pbar=False)
    return path


def test_latent_shards_are_memory_mapped_and_match_load_latents(tmp_path):
    ds = LatentShards(_latent_dir(tmp_path))
    z, y, st = load_latents(tmp_path)
    assert len(ds) == 128 and len(ds.paths) == 4 and ds.latent_shape == (6, 2, 2) and ds.nbytes == z.numel() * 4
    import numpy as np
    assert all(isinstance(m, np.memmap) for m in ds.latents)
    idx = torch.tensor([127, 0, 50, 50, 3, 96])
    zb, yb = ds.batch(idx)
    assert torch.equal(zb, normalize_latents(z, st)[idx]) and torch.equal(yb, y[idx])
    with pytest.raises(FileNotFoundError, match='extract'): LatentShards(tmp_path / 'nope')


def test_step_sampler_epochs_and_ranks():
    s = StepSampler(20, 12, world=2, grad_accum=2, seed=1)
    assert s.steps_per_epoch == 1 and s.micro == 3  # 12 per step, ragged 8 dropped
    parts = [s.indices(0, a, r) for a in range(2) for r in range(2)]
    flat = torch.cat(parts)
    assert len(set(flat.tolist())) == 12 and torch.equal(flat, s.perm(0)[:12])  # disjoint slices of one permutation
    assert not torch.equal(s.indices(1, 0, 0), s.indices(0, 0, 0))  # next epoch: a new permutation
    assert torch.equal(StepSampler(20, 12, 2, 2, seed=1).indices(1, 1, 1), s.indices(1, 1, 1))  # a pure function of the step
    with pytest.raises(ValueError, match='exceeds'): StepSampler(10, 12, 2, 2)


def test_grad_accum_equals_one_big_batch(tmp_path):
    set_seed(0)
    z, y = torch.randn(64, 4, 2, 2), torch.randint(0, 3, (64,))
    run = lambda name, accum, batch=32: train_dit(small_run(tmp_path/name, 'model.class_dropout=0', 'optim.lr=1e-3',
                                                            f'train.grad_accum={accum}', steps=4, batch=batch), (z, y), log=quiet)
    a, b, c = run('a', 4), run('b', 1), run('c', 1, batch=8)
    wa, wb, wc = (load_checkpoint(tmp_path/n)['model'] for n in 'abc')
    for k, v in wa.items(): torch.testing.assert_close(v, wb[k], atol=1e-5, rtol=1e-4)
    assert abs(a['metrics']['loss'] - b['metrics']['loss']) < 1e-5
    assert not torch.allclose(wc['final_layer.linear.weight'], wb['final_layer.linear.weight'], atol=1e-5)  # a smaller batch really differs


def test_resume_continues_the_same_run(tmp_path):
    "2N steps in one go equal N steps + resume + N steps exactly (data order, noise, label dropout and EMA all continue)."
    lat = _latent_dir(tmp_path / 'lat')
    args = ['train', '--latents', str(lat), '--size', 'tiny', '--batch-size', '32', '--grad-accum', '2', '--no-progress']
    main(args + ['--steps', '6', '--out', str(tmp_path / 'a')])
    main(args + ['--steps', '3', '--out', str(tmp_path / 'b')])
    main(['train', '--steps', '6', '--out', str(tmp_path / 'b'), '--resume', '--no-progress'])
    ka, kb = (load_checkpoint(tmp_path / r) for r in 'ab')
    assert ka['step'] == kb['step'] == 6 and ka['config']['train']['grad_accum'] == 2
    for sec in ('model', 'ema'):
        for k, v in ka[sec].items(): assert torch.equal(v, kb[sec][k]), (sec, k)


def test_nan_guard_on_the_dit(tmp_path, monkeypatch):
    "The engine's NaN guard protects the DiT too: a NaN step is skipped, the weights stay finite; too many in a row abort."
    from vtp_nb import dit as D
    from vtp_nb.engine import NonFiniteLoss
    orig = D.DiTTask.loss
    def loss(self, runner, batch, step, micro, sched):
        out = orig(self, runner, batch, step, micro, sched)
        return dict(out, loss=out['loss'] * float('nan')) if step in bad else out
    monkeypatch.setattr(D.DiTTask, 'loss', loss)
    z, y = torch.randn(32, 4, 2, 2), torch.randint(0, 3, (32,))
    bad = {1}
    res = train_dit(small_run(tmp_path/'a', 'train.log_every=1', steps=4), (z, y), log=quiet)
    assert [r['skipped'] for r in res['rows']] == [0, 1, 0, 0]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path/'a')['model'].values())
    bad = {1, 2, 3}
    with pytest.raises(NonFiniteLoss, match='3 non-finite steps in a row'):
        train_dit(small_run(tmp_path/'b', 'train.max_nonfinite=3', steps=6), (z, y), log=quiet)


def test_plan_batch_splits_the_global_batch():
    assert plan_batch(1024, 1, 256) == (256, 4)
    assert plan_batch(1024, 8, 256) == (128, 1)
    assert plan_batch(1024, 2, 256) == (256, 2)
    assert plan_batch(1024, 8, 64) == (64, 2)
    with pytest.raises(ConfigError, match='divisible'): plan_batch(1024, 3)


def test_cli_paper_plan(tmp_path, capsys):
    lat = _latent_dir(tmp_path / 'lat', n=600, shard_size=500)
    plan = main(['train', '--latents', str(lat), '--out', str(tmp_path / 'run'), '--preset', 'paper', '--batch-size', '512', '--plan'])
    assert (plan['batch_size'], plan['grad_accum'], plan['global_batch']) == (256, 2, 512)
    assert (plan['lr'], plan['betas'], plan['ema_decay'], plan['bf16']) == (2e-4, [0.9, 0.95], 0.9999, False)
    assert '768x12 (paper)' in plan['model'] and not (tmp_path / 'run').exists()


def test_torchrun_two_cpu_processes_ddp_equals_one_process(tmp_path):
    "2 ranks x 2 micro-batches of 8 take the same steps as one process with one batch of 32 (label dropout off)."
    lat = _latent_dir(tmp_path / 'lat')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    args = ['train', '--latents', str(lat), '--size', 'tiny', '--steps', '2', '--batch-size', '32', '--no-progress',
            '--set', 'model.class_dropout=0', 'optim.lr=1e-3']
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'vtp_nb.dit',
                        *args, '--grad-accum', '2', '--out', str(tmp_path / 'run')], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'global batch 32 = 2 rank(s) x 2 micro-batch(es) x 8' in r.stdout and 'strategy=ddp' in r.stdout
    main(args + ['--out', str(tmp_path / 'one')])
    a, b = load_checkpoint(tmp_path / 'run'), load_checkpoint(tmp_path / 'one')
    assert a['step'] == b['step'] == 2
    for k, v in a['model'].items(): torch.testing.assert_close(v, b['model'][k], atol=1e-5, rtol=1e-4)
