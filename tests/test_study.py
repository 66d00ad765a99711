"Tests for vtp_nb.study (the small-scale study runner) and bench/throughput.py: presets, an end-to-end tiny run, resume, CLI."
import os, json, subprocess, sys, time
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path
import pytest, torch
from vtp_nb.config import apply_overrides, ConfigError
from vtp_nb.study import (format_gan, STUDY_PRESETS, MAIN_VARIANTS, SCALING_VARIANTS, HEADLINE_LABELS, study_jobs, run_study,
                          tokenizer_config, format_table)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
# the tiny preset, shrunk further: 3 budgets, no lambda_rec sweep point, small evaluation sets
FAST = ['main_steps=2', 'budgets=1,2,3', 'extra=[]', 'eval.n_train=200', 'eval.n_val=50', 'eval.n_gen=20', 'dit.train.steps=3',
        'stage2_steps=2', 'data_sizes=40', "routing=[('vtp', 2)]", 'widths=32', "gan=['vtp@2']"]

def fast(): return apply_overrides(STUDY_PRESETS['tiny'](), FAST)


def test_cpu_preset_is_a_matched_compute_study():
    cpu, p = STUDY_PRESETS['cpu'](), STUDY_PRESETS['all']()       # `all` = `cpu` + lambda_rec, data and parameter scaling, routing
    assert not (cpu.extra or cpu.data_sizes or cpu.routing or cpu.widths)
    assert {j['name'] for j in study_jobs(cpu)} < {j['name'] for j in study_jobs(p)}
    assert (cpu.dit, cpu.eval.cfg_scales) == (p.dit, (1.0, cpu.dit.sample.cfg_scale))   # the DiT recipe, evaluated at its own scale
    jobs = {j['name']: j for j in study_jobs(p)}
    for v in MAIN_VARIANTS: assert f"{v}@{p.main_steps}" in jobs
    for v in SCALING_VARIANTS:
        assert len(p.budgets) >= 3 and all(f'{v}@{s}' in jobs for s in p.budgets)
    assert p.main_steps in p.budgets and max(p.budgets) / min(p.budgets) >= 9
    cfgs = [tokenizer_config(p, j['variant'], j['steps'], 'runs/x', j.get('lambda_rec'), j.get('max_images', 0), j.get('bottleneck_ae_only', True),
                             j.get('width'))
            for j in jobs.values()]
    # same encoder, batch and subsets for every variant: only the loss terms (and the sweep's lambda_rec) differ;
    # the routing ablation changes only which features the CLIP/SSL heads read, the width arm only the encoder's width
    assert len({json.dumps(c.model.__dict__, sort_keys=True) for c in cfgs}) == 2 + len(p.widths)
    assert {c.model.bottleneck_ae_only for c in cfgs} == {True, False}
    assert p.widths == (64, 192) and {c.model.width for c in cfgs} == {64, 128, 192}
    for v in SCALING_VARIANTS:
        for w in p.widths: assert jobs[f"{v}@{p.main_steps},w{w}"]['width'] == w
    assert [j['name'] for j in jobs.values() if j.get('bottleneck_ae_only') is False] == [f"vtp@{p.main_steps},route"]
    assert len({json.dumps({**c.model.__dict__, 'bottleneck_ae_only': True, 'width': 0, 'heads': 0}, sort_keys=True) for c in cfgs}) == 1
    assert {(c.train.batch_size, c.objective.batch_ssl, c.objective.batch_rec) for c in cfgs} == {(128, 32, 64)}
    assert {c.objective.variant for c in cfgs} == set(MAIN_VARIANTS)
    # data scaling: AE and VTP at the main budget on nested subsets, spanning >= 9x up to all 5,000 images
    sizes = sorted(p.data_sizes) + [5000]
    assert len(sizes) >= 3 and sizes[-1] / sizes[0] >= 9
    for v in SCALING_VARIANTS:
        for k in p.data_sizes: assert jobs[f"{v}@{p.main_steps},n{k}"]['max_images'] == k
    assert {c.data.max_images for c in cfgs} == {0} | set(p.data_sizes)


def test_gan_arm_must_name_a_job(tmp_path):
    with pytest.raises(ConfigError, match="gan: 'vtp@9' is not a job of this study: choose from"):
        run_study(apply_overrides(fast(), ["gan=['vtp@9']"]), tmp_path/'s', log=lambda s: None)
    assert not (tmp_path/'s').exists()                  # refused before anything was written


def test_bad_override_names_the_field():
    with pytest.raises(ConfigError, match="has no field 'dit_stepz'"): apply_overrides(STUDY_PRESETS['tiny'](), ['dit_stepz=3'])
    with pytest.raises(ConfigError, match="did you mean 'dit.train.steps'"): apply_overrides(STUDY_PRESETS['tiny'](), ['dit.train.stesp=3'])


def test_tiny_study_end_to_end_and_resume(tmp_path):
    t0 = time.time()
    res = run_study(fast(), tmp_path, log=lambda s: None)
    first = time.time() - t0
    on_disk = json.loads((tmp_path/'results.json').read_text())
    assert set(on_disk['main']) == {f'{v}@2' for v in MAIN_VARIANTS}
    assert {v: sorted(map(int, d)) for v, d in on_disk['scaling'].items()} == {'ae': [1, 2, 3], 'vtp': [1, 2, 3]}
    assert {v: sorted(map(int, d)) for v, d in on_disk['data_scaling'].items()} == {'ae': [40, 5000], 'vtp': [40, 5000]}
    assert json.loads((tmp_path/'jobs'/'vtp_2_n40'/'tok'/'config.json').read_text())['data']['max_images'] == 40
    assert 'data_scaling.png' in on_disk['meta']['figures'] and 'ae,n40' in format_table(on_disk, section='data_scaling')
    assert set(on_disk['routing_ablation']) == {'vtp@2,route', 'vtp@2'}
    w0 = json.loads((tmp_path/'jobs'/'vtp_2'/'tok'/'config.json').read_text())['model']['width']
    assert {v: sorted(map(int, d)) for v, d in on_disk['param_scaling'].items()} == {'ae': [32, w0], 'vtp': [32, w0]}
    assert json.loads((tmp_path/'jobs'/'ae_2_w32'/'tok'/'config.json').read_text())['model']['width'] == 32
    assert 'param_scaling.png' in on_disk['meta']['figures']
    assert json.loads((tmp_path/'jobs'/'vtp_2_route'/'tok'/'config.json').read_text())['model']['bottleneck_ae_only'] is False
    assert on_disk['meta']['fid_space'] == 'ref-cls' and on_disk['meta']['preset'] == 'tiny'
    for f in on_disk['meta']['figures']: assert (tmp_path/f).stat().st_size > 1000
    h = on_disk['main']['vtp@2']
    for k in ('probe latent-mean', 'probe pre-mean', 'probe pre-cls', 'PSNR stage1', 'PSNR stage2', 'rFID stage2',
              'gFID cfg1', 'gFID cfg2', 'gen class acc cfg2', 'gen latent probe cfg2', 'zero-shot top-1'):
        assert h[k] is not None and k in on_disk['labels'], k
    assert on_disk['main']['ae@2']['zero-shot top-1'] is None and on_disk['main']['ssl_ae@2']['zero-shot top-1'] is None
    assert on_disk['main']['clip_ae@2']['zero-shot top-1'] is not None
    # every FID-like number says which feature space it is in
    for run in on_disk['runs'].values():
        for m in run['report']['reconstruction'] + run['report']['generation']:
            if 'FID' in m['name']: assert m['space'] == 'ref-cls' and 'ref-cls' in m['label']
    assert {m['space'] for m in on_disk['floors']} == {'pixels', 'random-init latent-mean', 'random-init pre-mean', 'random-init pre-cls'}
    # the GAN arm: a second stage-2 decoder with the GAN term, and the job's DiT samples decoded by both
    g = on_disk['gan_arm']['vtp@2']
    assert set(g['decoders']) == {'L1', 'GAN'} and (tmp_path/'jobs'/'vtp_2'/'stage2_gan'/'ckpt.pt').exists()
    L1, G = g['decoders']['L1'], g['decoders']['GAN']
    for k in ('PSNR', 'rFID', 'gFID cfg1', 'gFID cfg2', 'gen class acc cfg2'):   # the same decoder on the same samples: the same numbers
        assert L1[k] == h[f'{k} stage2' if k in ('PSNR', 'rFID') else k], k
    assert G['PSNR'] != L1['PSNR'] and G['gFID cfg2'] != L1['gFID cfg2']        # the GAN term changed the decoder
    assert 'vtp@2 GAN' in format_gan(on_disk)
    # resume: a second call finds every stage's outputs and only re-assembles
    t0 = time.time()
    with pytest.raises(ConfigError, match='already holds a study: pass --resume'): run_study(fast(), tmp_path, log=lambda s: None)
    res2 = run_study(fast(), tmp_path, resume=True, log=lambda s: None)
    assert time.time() - t0 < first / 2
    assert res2['main'] == json.loads(json.dumps(res['main']))
    inv = res2['meta']['invocations']                     # the first run's wall time is kept, the resume's added
    assert len(inv) == 2 and inv[0]['seconds'] == on_disk['meta']['seconds'] and inv[1]['seconds'] == res2['meta']['seconds']
    assert 'vtp@2' in format_table(res2)


def test_cli_rejects_unknown_preset():
    r = subprocess.run([sys.executable, '-m', 'vtp_nb.study', '--preset', 'huge'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--preset 'huge' is unknown: choose one of tiny, quick, cpu" in r.stderr and 'Traceback' not in r.stderr


def test_bench_smoke(tmp_path):
    out = tmp_path/'bench.json'
    r = subprocess.run([sys.executable, 'bench/throughput.py', '--config', 'demo', '--smoke', '--iters', '1', '--warmup', '0',
                        '--variants', 'ae,vtp', '--threads', '1', '--profile', '--width', '48', '--json', str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    names = [row['name'] for row in res['rows']]
    assert any(n.startswith('vtp full step') for n in names) and any('teacher' in n for n in names)
    assert all(row['flops'] > 0 and 0 < row['ratio'] for row in res['rows'] if 'difference' not in row['name'])
    assert 'of peak' in r.stdout and res['peak'] > 0
    # --profile: per-category time shares add up to the step; matmuls and attention both carry counted FLOPs
    bd = res['breakdown']
    assert abs(sum(bd['seconds'].values()) - bd['total_seconds']) < 1e-9 and bd['flops']['matmul'] > 0
    assert bd['flops']['attention (SDPA)'] > 0 and 'matmul' in bd['seconds']
