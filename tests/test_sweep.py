"Tests for vtp_nb.sweep (the DiT recipe sweep): the tiny preset end to end through the command line, its report, a re-run that reuses every job."
import os, json
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path
import torch
from vtp_nb.sweep import SWEEP_PRESETS, main, arm_summary, export_course_assets

torch.set_num_threads(1)


def test_cpu_preset_sweeps_what_matters():
    p = SWEEP_PRESETS['cpu']()
    sets = ' '.join(x for _, a in p.arms for x in a)
    for knob in ('optim.lr', 'optim.schedule', 'train.batch_size', 'model.hidden_size', 'flow.t_mu', 'flow.ema_decay'): assert knob in sets, knob
    samp = {k for _, s in p.sampling for k in s}
    assert {'sample_steps', 'sample_method', 'sample_shift', 'cfg_interval', 'cfg_scales'} <= samp
    assert p.recipe in [a for a, _ in p.arms] and set(p.detail) <= {a for a, _ in p.arms}
    assert [t for t, _ in p.tokenizers] == ['ae', 'vtp'] and len({s for _, s in p.tokenizers}) == 1   # one AE, one VTP, same budget


def test_tiny_sweep_end_to_end_and_rerun(tmp_path, capsys):
    out = tmp_path/'sweep'
    assert main(['--preset', 'tiny', '--out', str(out)]) == 0
    res = json.loads((out/'sweep.json').read_text())
    arms = {(r['tokenizer'], r['arm'], r['step']) for r in res['rows']}
    for t in ('ae@2', 'vtp@2'):
        assert {(t, 'base', 2), (t, 'base', 4), (t, 'lr 2e-3', 4), (t, 'base, Euler 5', 4)} <= arms   # along training, arms, sampling
    for r in res['rows']:
        assert 0 <= r['gen class acc cfg2'] <= 1 and r['gFID cfg2'] > 0 and 0 < r['ceiling'] <= 1
    for f in ('sweep.txt', 'sweep.png', 'convergence_base.png', 'samples.png'): assert (out/f).stat().st_size > 0, f
    assert {s['arm'] for s in arm_summary(res)} == {'base', 'lr 2e-3', 'base, Euler 5'}
    mtimes = {f: f.stat().st_mtime for f in out.rglob('ckpt.pt')}
    assert main(['--preset', 'tiny', '--out', str(out)]) == 0                     # every job is found done: nothing retrains
    assert {f: f.stat().st_mtime for f in out.rglob('ckpt.pt')} == mtimes
    assert 'mean % ceiling' in capsys.readouterr().out

    # the course weights: fp16 files that load, pass the DiT's encoder check and match the manifest
    from vtp_nb.core import file_sha256
    from vtp_nb.vit import load_tokenizer
    from vtp_nb.dit import load_dit, check_tokenizer
    man = export_course_assets(SWEEP_PRESETS['tiny'](), out, dest=tmp_path/'assets')
    tok, (dit, ck) = load_tokenizer(tmp_path/'assets'/'vtp_small.pt'), load_dit(tmp_path/'assets'/'dit_small.pt')
    check_tokenizer(ck, tok)
    assert str(tmp_path) not in json.dumps({k: ck[k] for k in ('config', 'links')}, default=str)   # no folder of this machine
    assert ck['links']['encoder'] != ck['links']['encoder_fp32']           # rounded weights, recorded as such
    for k, v in man.items(): assert file_sha256(tmp_path/'assets'/k) == v['sha256']
    assert json.loads((tmp_path/'assets'/'MANIFEST.json').read_text()).keys() == {'vtp_small.pt', 'dit_small.pt'}
