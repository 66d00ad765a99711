"CLI, distributed, resume, bad-config, checkpoint-crash and NaN-guard tests of vtp_nb.train (tiny configs, seconds each)."
import os, sys, json, subprocess, shutil
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path
import pytest, torch
from vtp_nb import train as T, loaders as L

TINY = ['model.width=32', 'model.depth=1', 'model.heads=2', 'model.dec_width=32', 'model.dec_depth=1', 'model.dec_heads=2',
        'train.batch_size=16', 'objective.batch_ssl=4', 'objective.batch_rec=8', 'ssl.out_dim=64', 'ssl.hidden_dim=32',
        'ssl.bottleneck_dim=16', 'clip.text.width=32', 'clip.text.layers=1', 'clip.text.heads=2', 'ssl.crops.n_local=1',
        'train.progress=false', 'train.threads=1']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}

@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    "A 64-image data_small made with the project's generator (fast, independent of the shipped copy)."
    from vtp_nb.data import write_data_small
    root = tmp_path_factory.mktemp('data')/'data_small'
    write_data_small(root, n_train=64, n_val=16)
    return root

def tiny_cfg(tmp, data_root, *extra, scale='small'):
    cfg = T.make_config(scale)
    return T.apply_overrides(cfg, TINY + [f'data.path={data_root}', f'train.out_dir={tmp}'] + list(extra))

def stop_after(n):
    "An engine callback that stops the run after n steps (as a signal would)."
    return lambda state: state.stop() if state.step + 1 == n else None

def cli(*args, nproc=0, timeout=120):
    cmd = ([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}'] if nproc else [sys.executable])
    cmd += ['-m', 'vtp_nb.train', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)

def test_cli_small_runs_and_writes_run_folder(tmp_path, data_root):
    r = cli('--scale', 'small', '--steps', '3', '--out', str(tmp_path), '--set', *TINY, f'data.path={data_root}', 'train.ckpt_every=2')
    assert r.returncode == 0, r.stderr
    assert {'ckpt.pt', 'config.json', 'metrics.jsonl', 'loss.png'} <= {p.name for p in tmp_path.iterdir()}
    rows = [json.loads(l) for l in (tmp_path/'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [0, 1, 2] and all(k in rows[0] for k in ('rec', 'ssl', 'clip', 'samples_per_s', 'flops_per_s'))
    assert json.loads((tmp_path/'config.json').read_text())['model']['width'] == 32
    tok = T.load_tokenizer(tmp_path)
    assert tok.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 32 // 4 if False else tok.cfg.bottleneck_dim, 4, 4)

def test_resume_is_exact(tmp_path, data_root):
    a = T.train(tiny_cfg(tmp_path/'a', data_root, 'train.steps=4', 'train.ckpt_every=2'), log=lambda *_: None)
    T.train(tiny_cfg(tmp_path/'b', data_root, 'train.steps=4', 'train.ckpt_every=2'), log=lambda *_: None, callbacks=[stop_after(2)])
    assert T.load_checkpoint(tmp_path/'b')['step'] == 2
    b = T.train(tiny_cfg(tmp_path/'b', data_root, 'train.steps=4', 'train.ckpt_every=2'), resume=True, log=lambda *_: None)
    la = [r['loss'] for r in a['rows']]; lb = [r['loss'] for r in b['rows']]
    assert len(la) == len(lb) == 4
    assert torch.allclose(torch.tensor(la), torch.tensor(lb), rtol=1e-5, atol=1e-6), (la, lb)
    ka, kb = T.load_checkpoint(tmp_path/'a'), T.load_checkpoint(tmp_path/'b')
    for sec in ('model', 'teacher', 'clip', 'ssl'):
        for k in ka[sec]: assert torch.allclose(ka[sec][k].float(), kb[sec][k].float(), atol=1e-6), (sec, k)

def test_checkpoint_sections_line_up_with_official_names(tmp_path, data_root):
    "Sections hold the unified modules' names; the flat view maps onto the official training-time table and back."
    from vtp_nb.official import ours_to_official_state_dict, official_state_dict_to_ours
    T.train(tiny_cfg(tmp_path, data_root, 'train.steps=1'), log=lambda *_: None)
    ck = T.load_checkpoint(tmp_path)
    assert ck['format'] == 'vtp_nb.ckpt/3' and ck['kind'] == 'tokenizer' and ck['clip']['logit_scale'].shape == (1,)
    assert 'image_head.proj.weight' in ck['clip'] and any(k.startswith('text.transformer.') for k in ck['clip'])
    assert {k.split('.')[0] for k in ck['teacher']} == {'tokenizer', 'dino_head'}
    assert not any(k.startswith('tokenizer.decoder.') for k in ck['teacher'])          # the teacher has no pixel decoder
    assert {'dino_loss.center', 'ibot_loss.center'} <= set(ck['ssl'])
    flat = T.checkpoint_flat_state(ck)
    cfg = T.run_config_from_dict(ck['config'])
    off = ours_to_official_state_dict(flat, cfg.model, layout='legacy')
    assert 'teacher_trunk.cls_token' in off and 'dino_head.last_layer.weight_g' in off and 'proj.weight' in off
    back = official_state_dict_to_ours(off, layout='legacy')
    assert set(back) == set(flat) and back['clip.logit_scale'].shape == ()

@pytest.mark.parametrize('sets,msg', [
    (['train.batch_size=-8'], 'train.batch_size=-8 must be a positive integer'),
    (['objective.batch_rec=64', 'train.batch_size=32'], 'objective.batch_rec=64 exceeds train.batch_size=32'),
    (['objective.variant=ae', 'objective.lambda_rec=0'], 'all active loss weights are zero'),
    (['data.path=/no/such/folder'], "data.path='/no/such/folder' does not exist"),
    (['objective.variant=dino'], "objective.variant='dino' is unknown"),
])
def test_bad_configs_name_the_field(sets, msg):
    with pytest.raises(T.ConfigError, match=msg.replace('(', r'\(').replace(')', r'\)')):
        T.validate(T.apply_overrides(T.make_config('small'), sets))

def test_cli_bad_input_exit_codes(capsys):
    assert T.main(['--scale', 'huge', '--plan']) == 2 and "'huge' is unknown" in capsys.readouterr().err
    assert T.main(['--scale', 'demo', '--steps', '1']) == 2 and 'data.path is empty' in capsys.readouterr().err
    assert T.main(['--scale', 'small', '--set', 'model.depht=3']) == 2
    assert "model has no field 'depht' (did you mean 'model.depth'?)" in capsys.readouterr().err

def test_crash_while_writing_checkpoint_keeps_previous(tmp_path, data_root, monkeypatch):
    T.train(tiny_cfg(tmp_path, data_root, 'train.steps=2', 'train.ckpt_every=2'), log=lambda *_: None)
    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b'half a checkpoint'); raise KeyboardInterrupt('killed while writing')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny_cfg(tmp_path, data_root, 'train.steps=4', 'train.ckpt_every=2'), resume=True, log=lambda *_: None)
    monkeypatch.undo()
    assert T.load_checkpoint(tmp_path)['step'] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]

def nan_at(monkeypatch, steps):
    "Make the VTP loss NaN at these steps (a fault injected from the test, not through the config)."
    orig = T.VTPTask.loss
    def loss(self, runner, batch, step, micro, sched):
        out = orig(self, runner, batch, step, micro, sched)
        return dict(out, loss=out['loss'] * float('nan')) if step in steps else out
    monkeypatch.setattr(T.VTPTask, 'loss', loss)

def test_nan_guard_skips_then_aborts(tmp_path, data_root, monkeypatch):
    nan_at(monkeypatch, {1})
    logs = []
    res = T.train(tiny_cfg(tmp_path, data_root, 'train.steps=4'), log=logs.append)
    assert [r['skipped'] for r in res['rows']] == [0, 1, 0, 0] and any('update skipped' in l for l in logs)
    ck = T.load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ck['model'].values())          # the NaN never reached the weights
    nan_at(monkeypatch, {1, 2, 3})
    with pytest.raises(T.NonFiniteLoss, match='2 non-finite steps in a row'):
        T.train(tiny_cfg(tmp_path/'x', data_root, 'train.steps=6', 'train.max_nonfinite=2'), log=lambda *_: None)

def test_plan_full_without_gpu(capsys):
    assert T.main(['--scale', 'full']) == 0
    out = capsys.readouterr().out
    assert 'needs GPUs and torchrun' in out and 'GPU-hours' in out and 'GFLOP/sample' in out
    p = T.plan(T.make_config('full'))
    assert 290e6 < p['params']['encoder_trunk'] < 320e6 and p['gpu_hours'] > 0
    # the full scale does not fit as it is (329 GB of fp32 activations per GPU at 128 GPUs); the planner splits it
    assert p['act_gb_per_gpu'] > 300 and 'fits a 80 GB GPU' in out and 'fits a 141 GB GPU' in out
    f80, f141 = p['fits']['80'], p['fits']['141']
    assert f80['fits'] and f141['fits'] and f80['grad_accum'] > f141['grad_accum'] >= 1 and f80['total_gb'] <= 0.85 * 80
    from vtp_nb.scales import fit_memory
    acc = fit_memory(p['branches'], 128, 0.1, 20.)                       # 20 GB: accumulation down to 1 rec sample per micro-batch
    assert acc['fits'] and not acc['activation_checkpointing'] and acc['grad_accum'] == 16 and acc['micro']['rec'] == 1
    tight = fit_memory(p['branches'], 128, 0.1, 10.)                     # 10 GB: accumulation alone is not enough
    assert tight['fits'] and tight['activation_checkpointing'] and tight['total_gb'] <= 8.5
    assert not fit_memory(p['branches'], 128, 0.1, 0.1)['fits']

def test_torchrun_two_cpu_processes_ddp(tmp_path, data_root):
    r = cli('--scale', 'small', '--steps', '2', '--out', str(tmp_path), '--set', *TINY, f'data.path={data_root}', nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'world=2 strategy=ddp' in r.stdout
    assert T.load_checkpoint(tmp_path)['step'] == 2

def test_demo_imagefolder_runs(tmp_path):
    from PIL import Image
    for c in ('cat', 'dog'):
        (tmp_path/'imgs'/c).mkdir(parents=True)
        for i in range(8): Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(tmp_path/'imgs'/c/f'{i}.png')
    cfg = T.apply_overrides(T.make_config('demo'), TINY + [f'data.path={tmp_path/"imgs"}', 'data.image_size=32', 'data.num_workers=0',
        'model.patch_size=8', 'model.img_size=32', 'ssl.crops.global_size=32', 'ssl.crops.local_size=16', 'rec.perceptual=none',
        'clip.text.context_length=16', 'train.steps=2', f'train.out_dir={tmp_path/"run"}'])
    res = T.train(cfg, log=lambda *_: None)
    assert res['step'] == 2 and torch.isfinite(torch.tensor(res['metrics']['loss']))

def test_torchrun_full_scale_fsdp2_shrunken(tmp_path, data_root):
    r = cli('--scale', 'full', '--allow-cpu', '--steps', '2', '--out', str(tmp_path), '--set', *TINY, 'data.kind=small',
            f'data.path={data_root}', 'data.image_size=32', 'model.patch_size=8', 'model.img_size=32', 'ssl.crops.global_size=32',
            'ssl.crops.local_size=16', 'rec.perceptual=none', 'clip.text.context_length=16', 'data.num_workers=0', nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'world=2 strategy=fsdp' in r.stdout
    assert T.load_tokenizer(tmp_path).cfg.width == 32

def test_imagefolder_workers_give_the_same_batches(tmp_path):
    "data.num_workers decodes ahead in worker processes; the batches (and a jump, as on resume) equal the serial ones."
    from PIL import Image
    for c in ('cat', 'dog'):
        (tmp_path/'imgs'/c).mkdir(parents=True)
        for i in range(8): Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(tmp_path/'imgs'/c/f'{i}.png')
    ds, _ = L.open_images('imagefolder', str(tmp_path/'imgs'), 32)
    def data(workers): return L.StepBatches(ds, L.StepSampler(len(ds), 4, seed=0), num_workers=workers)
    serial, par = data(0), data(2)
    torch.manual_seed(0); ref = torch.rand(3)
    torch.manual_seed(0); par.batch(0); after = torch.rand(3)
    assert torch.equal(ref, after)           # starting the loader does not draw from the global RNG (a resume stays exact)
    for step in (0, 1, 2, 7, 8):
        a, b = serial.batch(step), par.batch(step)
        assert torch.equal(a['image'], b['image']) and a['caption'] == b['caption'] and a['image'].shape == (4, 3, 32, 32)

def test_max_images_trains_on_a_fixed_nested_subset(data_root):
    "data.max_images: the same images whatever train.seed, nested as it grows, captions still aligned with their images."
    a, b = L.subset_indices(5000, 300), L.subset_indices(5000, 1000)
    assert len(a) == 300 and set(a.tolist()) <= set(b.tolist()) and L.subset_indices(5000, 0) is None
    full = L.load_data_small('train', root=data_root)
    ds, desc = L.open_images('small', str(data_root), 32, max_images=20)
    keep = L.subset_indices(len(full), 20)
    assert len(ds) == 20 and 'subset of 20' in desc
    d = L.StepBatches(ds, L.StepSampler(20, 8, seed=3))
    seen = set()
    for step in range(10):
        b = d.batch(step)
        rows = keep[b['index']]
        torch.testing.assert_close(b['image'], full.to_float(rows))
        assert b['caption'] == [full.captions[i] for i in rows.tolist()]
        seen |= set(rows.tolist())
    assert seen <= set(keep.tolist())
    with pytest.raises(T.ConfigError, match='data.max_images'):
        T.validate(T.apply_overrides(T.make_config('small'), ['data.max_images=-1']))

# ---------- starting a new run from official-layout weights (train.init_from / --init-official) ----------

INIT = ['model.width=64', 'model.patch_size=16', 'clip.text.embed_dim=32']  # TINY + these: a shape the official layout can express

def official_folder(root, seed=1):
    "A tiny run-shaped model, perturbed away from its init, exported in the official VTPModel layout."
    from vtp_nb.official import export_official
    cfg = T.apply_overrides(T.make_config('small'), TINY + INIT)
    torch.manual_seed(seed)
    m = T.build_vtp(cfg)
    with torch.no_grad():
        for p in [*m.tokenizer.parameters(), *m.clip.parameters()]: p.add_(torch.randn_like(p) * 0.05)
    return export_official(Path(root)/'official', m.tokenizer, m.clip), m

def test_cli_init_official_starts_from_the_exported_weights(tmp_path, data_root):
    "One step at lr 1e-12: the checkpoint holds the exported tokenizer and CLIP weights, and the teacher equals the student."
    folder, src = official_folder(tmp_path)
    out = tmp_path/'run'
    r = cli('--scale', 'small', '--steps', '1', '--out', str(out), '--init-official', str(folder), '--set', *TINY, *INIT,
            f'data.path={data_root}', 'optim.lr=1e-12', 'optim.min_lr=1e-12')
    assert r.returncode == 0, r.stderr
    assert 'official VTPModel): loaded tokenizer' in r.stdout and 'EMA teacher (re-synchronised' in r.stdout, r.stdout
    ck = T.load_checkpoint(out)
    assert ck['config']['train']['init_from'] == str(folder)
    for k, v in src.tokenizer.state_dict().items(): torch.testing.assert_close(ck['model'][k], v, atol=1e-5, rtol=1e-5)
    for k, v in src.clip.state_dict().items(): torch.testing.assert_close(ck['clip'][k], v, atol=1e-5, rtol=1e-5)
    for k, v in ck['teacher'].items():
        if k.startswith('tokenizer.'): torch.testing.assert_close(v, ck['model'][k[len('tokenizer.'):]], atol=1e-5, rtol=1e-5)
    fresh = T.build_vtp(T.apply_overrides(T.make_config('small'), TINY + INIT)).tokenizer.state_dict()   # without init: far off
    assert not torch.allclose(ck['model']['blocks.0.attn.qkv.weight'], fresh['blocks.0.attn.qkv.weight'], atol=1e-3)

def test_init_official_mismatch_names_the_fields(tmp_path, data_root):
    folder, _ = official_folder(tmp_path)
    r = cli('--scale', 'small', '--steps', '1', '--out', str(tmp_path/'run'), '--init-official', str(folder), '--set', *TINY,
            'model.patch_size=16', 'clip.text.embed_dim=32', f'data.path={data_root}')   # width 32 instead of 64
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert 'model.width: checkpoint 64, this run 32' in r.stderr and '--set model.width=64' in r.stderr, r.stderr
    assert T.init_overrides(folder, T.apply_overrides(T.make_config('small'), TINY + INIT)) == []
    assert 'model.width=64' in T.init_overrides(folder)

def test_init_from_missing_tensor_or_path_is_an_error(tmp_path, data_root):
    from safetensors.torch import load_file, save_file
    folder, _ = official_folder(tmp_path)
    cfg = tiny_cfg(tmp_path/'run', data_root, *INIT, f'train.init_from={folder}', 'train.steps=1')
    sd = load_file(str(folder/'model.safetensors')); del sd['trunk.blocks.0.attn.proj.bias']
    save_file(sd, str(folder/'model.safetensors'))
    with pytest.raises(T.ConfigError, match=r"tokenizer: .*missing \['blocks.0.attn.proj.bias'\]"):
        T.train(cfg, log=lambda *_: None)
    cfg.train.init_from = str(tmp_path/'nowhere')
    with pytest.raises(T.ConfigError, match='does not exist'): T.train(cfg, log=lambda *_: None)

def test_resume_ignores_init_from(tmp_path, data_root):
    "Resume restores everything from our checkpoint: init_from is not read again (here it no longer exists)."
    folder, _ = official_folder(tmp_path)
    cfg = lambda: tiny_cfg(tmp_path/'run', data_root, *INIT, f'train.init_from={folder}', 'train.steps=2')
    logs = []
    T.train(cfg(), log=logs.append, callbacks=[stop_after(1)])
    assert any('loaded tokenizer' in l for l in logs)
    shutil.rmtree(folder)
    logs.clear()
    res = T.train(cfg(), resume=True, log=logs.append)
    assert res['step'] == 2 and T.load_checkpoint(tmp_path/'run')['step'] == 2
    assert any('ignored: resuming' in l for l in logs) and not any('loaded tokenizer' in l for l in logs)

# ---------- the full scale's data path: webdataset image-text shards (loaders.StreamBatches) ----------

WDS = ['data.kind=webdataset', 'data.image_size=32', 'model.patch_size=8', 'model.img_size=32', 'ssl.crops.global_size=32',
       'ssl.crops.local_size=16', 'rec.perceptual=none', 'clip.text.context_length=16', 'data.num_workers=0']

def wds_shards(root, n_shards=2, n=16, broken=(), nocap=()):
    "`n_shards` tar shards of `n` 40x48 PNGs with unique captions 's{k} i{i}'; (k, i) in `broken` get a cut-off PNG, in `nocap` no caption."
    import io, webdataset as wds
    from PIL import Image
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for k in range(n_shards):
        with wds.TarWriter(str(root/f'{k:05d}.tar')) as w:
            for i in range(n):
                buf = io.BytesIO(); Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()).save(buf, 'png')
                s = {'__key__': f'{k:02d}{i:04d}', 'png': buf.getvalue()[:80] if (k, i) in broken else buf.getvalue()}
                if (k, i) not in nocap: s['txt'] = f's{k} i{i}'
                w.write(s)
    return str(root/f'{{00000..{n_shards - 1:05d}}}.tar'), [f's{k} i{i}' for k in range(n_shards) for i in range(n)]

def wds_cfg(tmp, pattern, *extra, scale='small'):
    return T.apply_overrides(T.make_config(scale), TINY + WDS + [f'data.path={pattern}', f'train.out_dir={tmp}'] + list(extra))

def test_webdataset_trains_and_captions_reach_clip(tmp_path, monkeypatch):
    "data.kind=webdataset: a few steps, a checkpoint, finite losses; batches are (b, 3, 32, 32) and their tokens are the shards' captions."
    pattern, caps = wds_shards(tmp_path/'shards')
    seen, orig, tokens = [], L.StreamBatches.batch, []
    def spy(self, step, micro=0):
        b = orig(self, step, micro); seen.append((b['image'].shape, b['caption'])); return b
    monkeypatch.setattr(L.StreamBatches, 'batch', spy)
    real = T.VTP.make_batch
    monkeypatch.setattr(T.VTP, 'make_batch', lambda self, x, t, *a: (tokens.append(t), real(self, x, t, *a))[1])
    res = T.train(wds_cfg(tmp_path/'run', pattern, 'train.steps=3'), log=lambda *_: None)
    assert res['step'] == 3 and T.load_checkpoint(tmp_path/'run')['step'] == 3
    assert all(torch.isfinite(torch.tensor([r['loss'], r['clip'], r['rec'], r['ssl']])).all() for r in res['rows'])
    assert len(seen) == 3 and all(s == (16, 3, 32, 32) for s, _ in seen)
    assert all(c in caps for _, cs in seen for c in cs)
    tok = T.get_tokenizer(16)
    assert all(torch.equal(t, tok(cs)) for t, (_, cs) in zip(tokens, seen))          # the captions reach the text tower
    ex = T.load_checkpoint(tmp_path/'run')['extra']
    assert ex['samples_seen'] == 48 and ex['data']['kind'] == 'webdataset' and ex['data']['samples'] == 48 and ex['data']['skipped'] == 0

def test_webdataset_workers_and_ranks_read_different_samples(tmp_path):
    "Each rank (and each DataLoader worker) draws its own resampled, seeded stream: reproducible, different per rank; images in [-1, 1]."
    pattern, caps = wds_shards(tmp_path/'shards', n_shards=4, n=8)
    def captions(rank, workers=0, steps=4):
        d = L.StreamBatches(pattern, 32, 4, rank=rank, num_workers=workers)
        out = []
        for s in range(steps):
            b = d.batch(s)
            assert b['image'].shape == (4, 3, 32, 32) and -1 <= b['image'].min() and b['image'].max() <= 1
            out += b['caption']
        return out, d
    (a, _), (a2, _), (b, _) = captions(0), captions(0), captions(1)
    assert a == a2 and a != b
    w, d = captions(0, workers=2)
    assert len(w) == 16 and d.state()['samples'] == 16

def test_torchrun_full_scale_webdataset(tmp_path):
    "The full scale's own data path under torchrun (2 CPU processes, FSDP2, shrunken): 2 steps, exit 0, the stream is described."
    pattern, _ = wds_shards(tmp_path/'shards', n_shards=2, n=8)
    r = cli('--scale', 'full', '--allow-cpu', '--steps', '2', '--out', str(tmp_path/'run'), '--set', *TINY, *WDS,
            f'data.path={pattern}', nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'world=2 strategy=fsdp' in r.stdout and 'webdataset' in r.stdout and '2 shards' in r.stdout, r.stdout
    ck = T.load_checkpoint(tmp_path/'run')
    assert ck['step'] == 2 and ck['extra']['samples_seen'] == 32 and ck['extra']['data']['samples'] == 16   # rank 0 read half of each global batch

def test_webdataset_resume_continues(tmp_path):
    """Resume with webdataset is NOT sample-exact (the stream is reseeded from the start step). What is guaranteed: it
    runs, the step counter and metrics rows continue (no step repeated or lost), samples_seen = step x batch and the
    checkpoint records the stream's start step; the resumed stream differs from the first one (not a replay)."""
    pattern, _ = wds_shards(tmp_path/'shards')
    cfg = lambda *x: wds_cfg(tmp_path/'run', pattern, 'train.steps=4', 'train.ckpt_every=2', *x)
    T.train(cfg(), log=lambda *_: None, callbacks=[stop_after(2)])
    ck = T.load_checkpoint(tmp_path/'run')
    assert ck['step'] == 2 and ck['extra']['samples_seen'] == 32 and ck['extra']['data']['start_step'] == 0
    res = T.train(cfg(), resume=True, log=lambda *_: None)
    assert res['step'] == 4 and [r['step'] for r in res['rows']] == [0, 1, 2, 3]
    ex = T.load_checkpoint(tmp_path/'run')['extra']
    assert T.load_checkpoint(tmp_path/'run')['step'] == 4 and ex['samples_seen'] == 64 and ex['data']['start_step'] == 2 and ex['data']['samples'] == 32
    a, b = L.StreamBatches(pattern, 32, 16, start_step=0), L.StreamBatches(pattern, 32, 16, start_step=2)
    assert a.batch(0)['caption'] != b.batch(2)['caption']

def test_webdataset_bad_samples_are_skipped_and_counted(tmp_path):
    "A corrupt image and a sample without caption are skipped and counted (also from DataLoader workers), not fatal."
    import contextlib
    pattern, _ = wds_shards(tmp_path/'shards', n_shards=1, n=8, broken={(0, 2)}, nocap={(0, 5)})
    for workers in (0, 1):
        d = L.StreamBatches(pattern, 32, 6, num_workers=workers)
        with pytest.warns(UserWarning, match='skipped') if workers == 0 else contextlib.nullcontext():  # a worker warns in its process
            for s in range(4): x = d.batch(s)['image']
        assert x.shape == (6, 3, 32, 32) and d.samples == 24
        assert d.skipped >= 2 and d.state()['skipped'] == d.skipped        # 24 good samples: > 3 passes over the shard (seeded)
    bad = [(0, i) for i in range(4)]
    pattern, _ = wds_shards(tmp_path/'allbad', n_shards=1, n=4, broken=bad)
    d = L.StreamBatches(pattern, 32, 2)
    d.src.max_bad_in_row = 20
    with pytest.warns(UserWarning), pytest.raises(T.ConfigError, match=r'allbad.*20 bad samples in a row'): d.batch(0)

def test_webdataset_missing_shards_name_data_path(tmp_path):
    pattern, _ = wds_shards(tmp_path/'shards', n_shards=2, n=2)
    nowhere = str(tmp_path/'none'/'{00000..00003}.tar')
    with pytest.raises(T.ConfigError, match=r"data.path='.*none/\{00000\.\.00003\}\.tar' matches no shard file"):
        T.train(wds_cfg(tmp_path/'run', nowhere, 'train.steps=1'), log=lambda *_: None)
    with pytest.raises(T.ConfigError, match='has 1 of 3 shards missing'): L.shard_urls(pattern.replace('00001', '00002'))
    assert len(L.shard_urls(pattern)) == 2
    r = cli('--scale', 'small', '--steps', '1', '--out', str(tmp_path/'cli'), '--set', *TINY, *WDS, f'data.path={nowhere}')
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'matches no shard file' in r.stderr, r.stderr

# ---------- gradient accumulation: every branch, and the contrastive feature cache ----------

def _split(big:dict, A:int) -> list:
    "Split a `make_batch` dict of B images into A micro-batch dicts of B/A images (views and crops kept together)."
    B = len(big['image']); b = B // A
    s, n_l = big['ssl'], len(big['ssl']['local_crops']) // B
    out = []
    for a in range(A):
        r = slice(a * b, (a + 1) * b)
        v = lambda t, k: torch.cat([t[i * B:(i + 1) * B][r] for i in range(k)])     # rows of these images in every view
        m = v(s['masks'], 2)
        w = (1 / m.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(m)[m]
        out.append(dict(image=big['image'][r], tokens=big['tokens'][r], rec_image=big['rec_image'][r],
                        ssl=dict(global_crops=v(s['global_crops'], 2), local_crops=v(s['local_crops'], n_l), masks=m, weights=w)))
    return out

def test_accumulated_step_equals_the_big_step_for_all_three_branches():
    "A step split into 2 micro-batches (CLIP through the feature cache, DINO/iBOT/rec plainly, centres once per step) "
    "gives the gradients and centres of one big batch. KoLeo is off: like DINOv2's (per GPU), it is per micro-batch."
    cfg = T.apply_overrides(T.make_config('small'), TINY + ['ssl.koleo_weight=0', 'objective.batch_ssl=16', 'objective.batch_rec=16'])
    torch.manual_seed(0)
    m1 = T.build_vtp(cfg); m2 = T.build_vtp(cfg); m2.load_state_dict(m1.state_dict())
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    tok = T.get_tokenizer(cfg.clip.text.context_length)([f'a drawing of shape {i}' for i in range(16)])
    torch.manual_seed(1)
    big = m1.make_batch(x, tok, torch.arange(16), torch.arange(16))
    assert big['ssl']['masks'].any()
    m1(big, teacher_temp=0.04)['loss'].backward()
    micro = _split(big, 2)
    cache = [m2.clip_features(mb['image'], mb['tokens']) for mb in micro]
    cache = dict(image=[u for u, _ in cache], text=[v for _, v in cache])
    for a, mb in enumerate(micro): (m2(mb, teacher_temp=0.04, clip_cache=dict(cache, index=a))['backward'] / 2).backward()
    g1, g2 = ({n: p.grad for n, p in m.student_params() if p.grad is not None} for m in (m1, m2))
    assert set(g1) == set(g2) and any(n.startswith('clip.') for n in g1) and any(n.startswith('ssl.dino_head') for n in g1)
    for n in g1: torch.testing.assert_close(g2[n], g1[n], atol=2e-6, rtol=1e-4, msg=n)
    m1.update_teacher(0.99); m2.update_teacher(0.99)
    for c in ('dino_loss', 'ibot_loss'):
        torch.testing.assert_close(getattr(m2.ssl, c).center, getattr(m1.ssl, c).center, atol=1e-6, rtol=1e-5)

def test_engine_accumulation_matches_and_clip_needs_the_cache(tmp_path, data_root, monkeypatch):
    "Through the engine (CLIP + rec, every image in both branches): 2 x 8 accumulated = 1 x 16; without the cache it differs."
    run = lambda out, *x: T.train(tiny_cfg(tmp_path/out, data_root, 'objective.variant=clip_ae', 'objective.batch_rec=16',
                                           'train.steps=2', *x), log=lambda *_: None)
    ra, rb = run('big'), run('acc', 'train.grad_accum=2')
    torch.testing.assert_close(torch.tensor([r['loss'] for r in rb['rows']]), torch.tensor([r['loss'] for r in ra['rows']]), atol=1e-5, rtol=1e-5)
    a, b = T.load_checkpoint(tmp_path/'big'), T.load_checkpoint(tmp_path/'acc')
    for sec in ('model', 'clip'):
        for k, v in a[sec].items():
            if k.endswith('in_proj_bias'): continue   # its key third has zero true gradient (softmax ignores it): AdamW turns rounding noise there into full steps
            torch.testing.assert_close(b[sec][k], v, atol=1e-5, rtol=1e-4, msg=f'{sec}.{k}')
    monkeypatch.setattr(T.VTPTask, 'begin_step', lambda *a, **k: setattr(a[0], 'cache', None))   # plain accumulation
    run('plain', 'train.grad_accum=2')
    c = T.load_checkpoint(tmp_path/'plain')
    assert not torch.allclose(c['clip']['image_head.proj.weight'], a['clip']['image_head.proj.weight'], atol=1e-5)

def test_activation_checkpointing_gives_the_same_step(tmp_path, data_root):
    "Recomputing the blocks in the backward changes memory, not the result; the checkpoint's names are unchanged."
    run = lambda out, *x: T.train(tiny_cfg(tmp_path/out, data_root, 'train.steps=2', *x), log=lambda *_: None)
    run('plain'); run('ac', 'train.activation_checkpointing=true')
    a, b = T.load_checkpoint(tmp_path/'plain'), T.load_checkpoint(tmp_path/'ac')
    for sec in ('model', 'clip', 'ssl', 'teacher'):
        assert set(a[sec]) == set(b[sec])
        for k, v in a[sec].items(): torch.testing.assert_close(b[sec][k], v, atol=1e-5, rtol=1e-4, msg=f'{sec}.{k}')
