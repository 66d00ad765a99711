"""Every command line fails safely: one `error:` line naming the problem, exit 2 for usage errors, no traceback, no
existing file changed; checkpoints open without running code; SIGTERM stops a run cleanly and --resume continues it
exactly (one process and two under torchrun)."""
import contextlib, hashlib, io, os, signal, subprocess, sys, time
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path
import pytest, torch
from vtp_nb import train as T, dit as D, evaluate as E, study as S, stage2 as S2
from vtp_nb.config import apply_overrides
from vtp_nb.checkpoint import load_checkpoint, CKPT_FORMAT, CheckpointError
from vtp_nb.latents import extract_latents
from vtp_nb.data import write_data_small, load_data_small
import importlib.util
_spec = importlib.util.spec_from_file_location('throughput', Path(__file__).resolve().parent.parent/'bench'/'throughput.py')
B = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(B)   # bench/throughput.py (not a package module)

torch.set_num_threads(1)
TINY = ['model.width=32', 'model.depth=1', 'model.heads=2', 'model.dec_width=32', 'model.dec_depth=1', 'model.dec_heads=2',
        'train.batch_size=16', 'objective.batch_ssl=4', 'objective.batch_rec=8', 'ssl.out_dim=64', 'ssl.hidden_dim=32',
        'ssl.bottleneck_dim=16', 'clip.text.width=32', 'clip.text.layers=1', 'clip.text.heads=2', 'ssl.crops.n_local=1',
        'train.progress=false', 'train.threads=1']
DIT = ['--size', 'tiny', '--batch-size', '16', '--no-progress', '--set', 'model.hidden_size=32', 'model.depth=1', 'model.num_heads=2']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
quiet = lambda *_: None


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A tiny data_small, two tokenizer runs (different seeds: different encoders), latents of the first, a DiT on them."
    r = tmp_path_factory.mktemp('runs')
    write_data_small(r/'data', n_train=64, n_val=16)
    for name, seed in (('tok', 0), ('tok2', 1)):
        T.train(apply_overrides(T.make_config('small'), TINY + [f'data.path={r/"data"}', f'train.out_dir={r/name}', 'train.steps=2',
                                                                f'train.seed={seed}']), log=quiet)
    extract_latents(T.load_tokenizer(r/'tok'), load_data_small('train', root=r/'data'), r/'lat', pbar=False, tokenizer_path=str(r/'tok'))
    assert D.main(['train', '--latents', str(r/'lat'), '--out', str(r/'dit'), '--steps', '2', *DIT]) == 0 or True
    raw = (r/'tok'/'ckpt.pt').read_bytes()
    (r/'cut').mkdir(); (r/'cut'/'ckpt.pt').write_bytes(raw[:len(raw) // 3])
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {r/"pwned"}',))
    (r/'evil').mkdir(); torch.save({'format': CKPT_FORMAT, 'kind': 'tokenizer', 'model': Payload()}, r/'evil'/'ckpt.pt')
    return r


def tree_hash(root:Path) -> dict:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def run_main(main, argv):
    "Run a CLI's main in-process: (exit status, stderr)."
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return (code if isinstance(code, int) else 0), err.getvalue()


# (cli, argv with {r} for the fixture folder, text the error line must contain)
BAD = [
    (T.main, ['--scale', 'huge'], "--scale 'huge' is unknown: choose one of small, demo, full"),
    (T.main, ['--set', 'model.depht=3'], "did you mean 'model.depth'?"),
    (T.main, ['--set', 'objective.lambda_rec=abc'], "objective.lambda_rec='abc': expected a float"),
    (T.main, ['--set', 'train.steps'], 'expected field=value'),
    (T.main, ['--steps', 'many'], "argument --steps: invalid int value: 'many'"),
    (T.main, ['--set', 'train.batch_size=-8', 'train.progress=false'], 'train.batch_size=-8 must be a positive integer'),
    (T.main, ['--scale', 'demo', '--steps', '1'], 'data.path is empty'),
    (T.main, ['--set', 'data.path={r}/nowhere'], "does not exist"),
    (T.main, ['--out', '{r}/tok', '--set', *TINY, 'data.path={r}/data'], 'already holds a run (ckpt.pt): pass --resume to continue it or --overwrite'),
    (T.main, ['--resume', '{r}/empty_folder'], 'no checkpoint at'),
    (T.main, ['--resume', '{r}/dit'], 'is a dit checkpoint, but a tokenizer checkpoint is needed'),
    (T.main, ['--resume', '{r}/cut'], 'is truncated or corrupted'),
    (T.main, ['--resume', '{r}/evil'], 'refused, since unpickling them could run code'),
    (T.main, ['--init-official', '{r}/nowhere', '--out', '{r}/new', '--set', *TINY, 'data.path={r}/data'], "train.init_from='{r}/nowhere' does not exist"),
    (T.main, ['--scale', 'demo', '--out', '{r}/vgg', '--set', *TINY, 'data.kind=small', 'data.path={r}/data', 'data.image_size=32',
              'model.patch_size=8', 'ssl.crops.global_size=32', 'ssl.crops.local_size=16', 'clip.text.context_length=16'], '--set rec.perceptual=random'),
    (D.main, ['train', '--latents', '{r}/nowhere', '--out', '{r}/d2'], 'no latent_stats.json in'),
    (D.main, ['train', '--out', '{r}/d2'], 'latents is empty: pass --latents FOLDER'),
    (D.main, ['train', '--latents', '{r}/lat', '--out', '{r}/dit', *DIT], 'already holds a run'),
    (D.main, ['train', '--latents', '{r}/lat', '--out', '{r}/d2', '--preset', 'papr'], "did you mean 'paper'?"),
    (D.main, ['train', '--latents', '{r}/lat', '--out', '{r}/d2', '--set', 'flow.t_sigma=0'], 'flow.t_sigma=0.0 must be > 0'),
    (D.main, ['train', '--latents', '{r}/lat', '--out', '{r}/d2', '--batch-size', '100000'], 'exceeds the 128 latents'),
    (D.main, ['sample', '--ckpt', '{r}/tok', '--out', '{r}/s'], 'is a tokenizer checkpoint, but a dit checkpoint is needed'),
    (D.main, ['sample', '--ckpt', '{r}/dit', '--tokenizer', '{r}/tok2', '--out', '{r}/s'], 'pass --allow-other-tokenizer'),
    (D.main, ['extract', '--tokenizer', '{r}/dit', '--out', '{r}/l2'], 'is a dit checkpoint, but a tokenizer or stage2 checkpoint'),
    (D.main, ['extract', '--tokenizer', '{r}/tok', '--data', '{r}/nowhere', '--out', '{r}/l2'], 'is not a folder of class sub-folders'),
    (E.main, ['--ckpt', '{r}/dit', '--out', '{r}/e'], 'is a dit checkpoint, but a tokenizer or stage2 checkpoint'),
    (E.main, ['--ckpt', '{r}/nothing.pt', '--out', '{r}/e'], 'no checkpoint at'),
    (E.main, ['--ckpt', '{r}/tok', '--dit', '{r}/tok', '--out', '{r}/e'], 'is a tokenizer checkpoint, but a dit checkpoint'),
    (E.main, ['--ckpt', '{r}/tok2', '--dit', '{r}/dit', '--out', '{r}/e', '--n-train', '64', '--n-val', '16', '--no-floors'], '--allow-other-tokenizer'),
    (E.main, ['--ckpt', '{r}/tok', '--out', '{r}/e', '--set', 'n_gen=abc'], "n_gen='abc': expected a int"),
    (S.main, ['--preset', 'huge'], "--preset 'huge' is unknown: choose one of tiny, quick, cpu"),
    (S.main, ['--preset', 'tiny', '--set', 'dit.train.stesp=3'], "did you mean 'dit.train.steps'?"),
    (S2.main, ['--tokenizer', '{r}/dit', '--out', '{r}/s2'], 'is a dit checkpoint, but a tokenizer or stage2 checkpoint'),
    (S2.main, ['--out', '{r}/s2'], 'tokenizer is empty: pass --tokenizer RUN'),
    (B.main, ['--variants', 'ae,vtpp'], "--variants: 'vtpp' is unknown: choose from ae, clip_ae, ssl_ae, vtp"),
    (B.main, ['--batch', '0'], '--batch 0: must be >= 1'),
    (B.main, ['--iters', 'x'], "argument --iters: invalid int value: 'x'"),
    (B.main, ['--reference', 'no_such_checkout'], 'has no vtp/models/vtp_hf/ (expected a checkout of github.com/MiniMax-AI/VTP)'),
]

@pytest.mark.parametrize('main,argv,msg', BAD, ids=[f'{m.__module__.split(".")[-1]}-{i}' for i, (m, a, _) in enumerate(BAD)])
def test_bad_input_gives_one_error_line_and_changes_nothing(runs, main, argv, msg):
    (runs/'empty_folder').mkdir(exist_ok=True)
    argv = [a.replace('{r}', str(runs)) for a in argv]
    before = tree_hash(runs)
    code, err = run_main(main, argv)
    assert code == 2, (code, err[-2000:])
    lines = [l for l in err.splitlines() if 'error:' in l]
    assert len(lines) == 1 and msg.replace('{r}', str(runs)) in lines[0], err[-2000:]
    assert 'Traceback' not in err
    after = tree_hash(runs)
    assert {k: v for k, v in after.items() if k in before} == before          # no existing file changed
    assert not (runs/'pwned').exists()                                          # the pickle's code never ran


def test_debug_shows_the_traceback(runs):
    with pytest.raises(CheckpointError, match='truncated or corrupted'): T.main(['--resume', str(runs/'cut'), '--debug'])


def test_cli_errors_in_a_real_process(runs):
    "The same one-line behaviour through `python -m` (argparse and our errors), with exit status 2."
    r = subprocess.run([sys.executable, '-m', 'vtp_nb.dit', 'sample', '--ckpt', str(runs/'tok'), '--out', str(runs/'s')],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and r.stderr.count('error:') == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]


def test_overwrite_replaces_a_run_safely(runs, tmp_path, monkeypatch):
    "--overwrite keeps the old checkpoint readable until the new run's first checkpoint replaces it atomically."
    out = tmp_path/'run'
    base = ['--out', str(out), '--set', *TINY, f'data.path={runs/"data"}', 'train.steps=2']
    assert run_main(T.main, base)[0] == 0
    old = (out/'ckpt.pt').read_bytes()
    def crash(*a, **k): raise KeyboardInterrupt('killed before the first checkpoint')
    monkeypatch.setattr(T.VTPTask, 'loss', crash)
    with pytest.raises(KeyboardInterrupt): T.main(base + ['--overwrite', '--debug'])
    assert (out/'ckpt.pt').read_bytes() == old and load_checkpoint(out)['step'] == 2   # the old run is still there
    monkeypatch.undo()
    assert run_main(T.main, base + ['train.steps=3', '--overwrite'])[0] == 0
    assert load_checkpoint(out)['step'] == 3 and not (out/'.previous').exists()


def _sigterm_after(cmd, out:Path, rows:int, timeout=180):
    "Start `cmd`, send SIGTERM once `out/metrics.jsonl` has `rows` lines, wait for it to finish."
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = out/'metrics.jsonl'
        if m.exists() and len(m.read_text().splitlines()) >= rows: break
        if p.poll() is not None: break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    so, se = p.communicate(timeout=timeout)
    return p.returncode, so, se


def _same(a:Path, b:Path, sections):
    ka, kb = load_checkpoint(a), load_checkpoint(b)
    assert ka['step'] == kb['step']
    for s in sections:
        for k, v in ka[s].items(): assert torch.equal(v, kb[s][k]), (s, k)


def test_sigterm_stops_train_cleanly_and_resume_is_exact(runs, tmp_path):
    args = ['--scale', 'small', '--steps', '12', '--set', *TINY, f'data.path={runs/"data"}', 'train.ckpt_every=1000']
    cmd = lambda out: [sys.executable, '-m', 'vtp_nb.train', '--out', str(out), *args]
    code, so, se = _sigterm_after(cmd(tmp_path/'b'), tmp_path/'b', 3)
    assert code == 0, se[-2000:]
    step = load_checkpoint(tmp_path/'b')['step']
    assert 3 <= step < 12 and 'stopped after step' in so and '--resume' in so, so[-1500:]
    assert subprocess.run(cmd(tmp_path/'b') + ['--resume'], env=ENV, capture_output=True, timeout=300).returncode == 0
    assert subprocess.run(cmd(tmp_path/'a'), env=ENV, capture_output=True, timeout=300).returncode == 0
    _same(tmp_path/'a', tmp_path/'b', ('model', 'clip', 'ssl', 'teacher'))


def test_sigterm_stops_dit_train_cleanly_and_resume_is_exact(runs, tmp_path):
    cmd = lambda out, *x: [sys.executable, '-m', 'vtp_nb.dit', 'train', '--latents', str(runs/'lat'), '--out', str(out), '--steps', '20',
                           *DIT, 'train.log_every=1', 'train.ckpt_every=1000', *x]
    code, so, se = _sigterm_after(cmd(tmp_path/'b'), tmp_path/'b', 3)
    assert code == 0 and 'stopped after step' in so, se[-2000:]
    assert 3 <= load_checkpoint(tmp_path/'b')['step'] < 20
    assert subprocess.run([sys.executable, '-m', 'vtp_nb.dit', 'train', '--out', str(tmp_path/'b'), '--resume', '--no-progress'],
                          env=ENV, capture_output=True, timeout=300).returncode == 0
    assert subprocess.run(cmd(tmp_path/'a'), env=ENV, capture_output=True, timeout=300).returncode == 0
    _same(tmp_path/'a', tmp_path/'b', ('model', 'ema'))


def test_sigterm_under_torchrun_every_rank_stops_at_the_same_step(runs, tmp_path):
    "SIGTERM to the torchrun launcher: both ranks finish the same step, the checkpoint is written, and resume equals the uninterrupted run."
    tr = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'vtp_nb.train']
    args = ['--scale', 'small', '--steps', '12', '--set', *TINY, f'data.path={runs/"data"}', 'train.ckpt_every=1000']
    code, so, se = _sigterm_after(tr + ['--out', str(tmp_path/'b'), *args], tmp_path/'b', 3)
    step = load_checkpoint(tmp_path/'b')['step']
    assert 3 <= step < 12 and 'stopped after step' in so, (code, so[-1500:], se[-2500:])
    r = subprocess.run(tr + ['--out', str(tmp_path/'b'), *args, '--resume'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert subprocess.run(tr + ['--out', str(tmp_path/'a'), *args], env=ENV, capture_output=True, timeout=300).returncode == 0
    ka, kb = load_checkpoint(tmp_path/'a'), load_checkpoint(tmp_path/'b')
    assert ka['step'] == kb['step'] == 12
    for k, v in ka['model'].items(): torch.testing.assert_close(v, kb['model'][k], atol=1e-6, rtol=1e-5)
