"""The project's test command (`make test`): sync check, notebooks (nbdev and a real kernel), pytest, one closing count.

1. nbdev sync: `nbdev-clean` + `nbdev-export` must leave `nbs/` and `vtp_nb/` unchanged.
2. Every notebook in `nbs/` runs under nbdev's `test_nb` (cells flagged `notest slow gpu` are skipped),
   two at a time with one thread each so they do not fight over two cores.
2b. Every notebook runs top to bottom in a real Jupyter kernel (nbclient), as a reader's Run All does: flags mean
   nothing there, so this catches a CLI cell that exits the kernel or a slow cell that is not opt-in (`VTP_SLOW` unset).
3. `pytest tests/`, two worker processes (pytest-xdist) with one thread each.
The last line is `N passed, N failed`, counting notebooks and pytest tests together.

Everything the run writes to temporary folders (the notebooks' scratch runs, pytest's `tmp_path`: about 2 GB) goes to
one folder that is deleted when every check passed and kept, with its path printed, when one failed.

`run_tests.py --outputs [NB ...]` (`make outputs`): re-execute notebooks in a kernel and keep their outputs.
"""
import contextlib, hashlib, os, shutil, subprocess, sys, tempfile, time, xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


@contextlib.contextmanager
def scratch_tmp():
    "Point TMPDIR (this process and its children) at a fresh folder; yields a dict whose 'keep' the caller sets on failure."
    old, d = os.environ.get('TMPDIR'), tempfile.mkdtemp(prefix='vtp_nb-test-')
    os.environ['TMPDIR'], tempfile.tempdir = d, None      # tempfile caches its folder: forget it so gettempdir() is d
    state = dict(path=d, keep=False)
    try: yield state
    except BaseException: state['keep'] = True; raise
    finally:
        if old is None: os.environ.pop('TMPDIR', None)
        else: os.environ['TMPDIR'] = old
        tempfile.tempdir = None
        if state['keep']: print(f'  temporary files of this run kept in {d}')
        else: shutil.rmtree(d, ignore_errors=True)


def snapshot():
    "Hash of every file under nbs/ and vtp_nb/ (what nbdev-clean/export could touch)."
    out = {}
    for top in ('nbs', 'vtp_nb'):
        for p in sorted((ROOT/top).rglob('*')):
            if p.is_file() and '__pycache__' not in p.parts and '.ipynb_checkpoints' not in p.parts:
                out[str(p.relative_to(ROOT))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def sync_check():
    before = snapshot()
    for cmd in ('nbdev-clean', 'nbdev-export'):
        r = subprocess.run([str(BIN/cmd)], cwd=ROOT, capture_output=True, text=True)
        if r.returncode: print(r.stdout, r.stderr); return [f'{cmd} failed']
    after = snapshot()
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _one_nb(fn):
    from nbdev.config import get_config
    from nbdev.test import test_nb
    cfg = get_config()
    flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
    os.chdir(cfg.nbs_path)
    main = sys.modules['__main__']   # IPython's shell replaces __main__; the pool needs it back to unpickle the next task
    try: ok, secs = test_nb(fn, skip_flags=flags, force_flags=[], basepath=cfg.config_path, cell_timeout=600)
    finally: sys.modules['__main__'] = main
    return fn, ok, secs


def run_notebooks(workers=2):
    from concurrent.futures import ProcessPoolExecutor
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'
    files = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    results = []
    with ProcessPoolExecutor(workers) as ex:
        for fn, ok, secs in ex.map(_one_nb, files):
            print(f"  {'ok  ' if ok else 'FAIL'} {fn.name:32s} {secs:6.1f}s", flush=True)
            results.append(ok)
    return sum(results), len(results) - sum(results)


def _anonymise(nb):
    "Stored outputs name no folder of the machine they ran on: temporary folders become <tmp>, the kernel's cell files <cell>."
    import re
    tmp = '(?:' + re.escape(tempfile.gettempdir()) + '|/tmp)'
    subs = [(re.compile(tmp + r'/ipykernel_\d+/\d+\.py'), '<cell>'), (re.compile(tmp + r'/tmp[\w-]+'), '<tmp>'),
            (re.compile(re.escape(str(ROOT)) + '/'), '')]
    def fix(t):
        for r, rep in subs: t = r.sub(rep, t)
        return t
    for c in nb.cells:
        for o in c.get('outputs', []):
            if 'text' in o: o['text'] = fix(o['text'])
            for k, v in o.get('data', {}).items():
                if k.startswith('text/'): o['data'][k] = fix(v) if isinstance(v, str) else [fix(x) for x in v]
    return nb


def _one_kernel(fn, tries:int=3):
    "Run one notebook top to bottom in a fresh kernel; a kernel that dies while *starting* (before running any cell) is retried."
    for i in range(tries):
        fn, err, secs = _kernel_once(fn)
        if err is None or 'before replying to kernel_info' not in err: break
        print(f'  kernel for {fn.name} died while starting ({err}); retrying', flush=True)
    return fn, err, secs


def _kernel_once(fn):
    import nbformat
    from nbclient import NotebookClient
    t0 = time.time()
    nb = nbformat.read(fn, as_version=4)
    # Each notebook ends with `nbdev.nbdev_export()`, which rewrites vtp_nb/*.py in place. Two kernels run at once here, so
    # one would import a module while the other rewrites it (seen: ImportError). The sync check has already exported;
    # IN_TEST=1 is nbdev's own switch (set by nbdev-test too) that makes nbdev_export() return without writing.
    try:
        NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(fn.parent)}}).execute(
            env={**os.environ, 'IN_TEST': '1'})
        if os.environ.get('VTP_SAVE_OUTPUTS'): nbformat.write(_anonymise(nb), fn)   # `make outputs`: keep what this execution showed
        return fn, None, time.time() - t0
    except Exception as e:
        return fn, f'{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ""}'[:300], time.time() - t0


def run_kernels(workers=2, only=()):
    "Run notebooks in real kernels (all of `nbs/`, or the paths in `only`); returns (passed, failed)."
    from concurrent.futures import ProcessPoolExecutor
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'
    os.environ.pop('VTP_SLOW', None)
    files = [Path(f).resolve() for f in only] or sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    missing = [str(f) for f in files if not f.is_file() or f.suffix != '.ipynb']
    if missing: raise SystemExit(f"not a notebook: {', '.join(missing)}")
    ok = 0
    with ProcessPoolExecutor(workers) as ex:
        for fn, err, secs in ex.map(_one_kernel, files):
            print(f"  {'ok  ' if err is None else 'FAIL'} {fn.name:32s} {secs:6.1f}s" + (f'  {err}' if err else ''), flush=True)
            ok += err is None
    return ok, len(files) - ok


def run_pytest(workers=2):
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'   # pytest-xdist: 2 worker processes x 1 thread
    if not any((ROOT/'tests').glob('test_*.py')): return 0, 0
    xml = ROOT/'.pytest_cache'/'junit.xml'
    xml.parent.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, '-m', 'pytest', 'tests', '-q', '-p', 'no:cacheprovider', '-n', str(workers),
                        f'--junitxml={xml}'], cwd=ROOT)
    if r.returncode not in (0, 1) or not xml.exists():
        print(f'pytest exited with {r.returncode}'); return 0, 1
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == 'testsuite' else list(suites)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ('tests', 'failures', 'errors', 'skipped')}
    failed = tot['failures'] + tot['errors']
    return tot['tests'] - failed - tot['skipped'], failed


def main():
    with scratch_tmp() as scratch: scratch['keep'] = _main()
    sys.exit(1 if scratch['keep'] else 0)


def outputs(names):
    "`make outputs [NB=...]`: re-execute notebooks in a kernel and keep their outputs; True when one failed."
    os.environ['VTP_SAVE_OUTPUTS'] = '1'
    with scratch_tmp() as scratch:
        scratch['keep'] = run_kernels(only=names)[1] > 0
    return scratch['keep']


def _main():
    "All checks; returns True when one failed."
    t0 = time.time()
    print('== 1/3 nbdev sync (nbdev-clean, nbdev-export)', flush=True)
    changed = sync_check()
    for c in changed: print(f'  changed by nbdev-clean/export: {c}')
    print('  in sync' if not changed else '  NOT in sync: run nbdev-clean && nbdev-export and commit', flush=True)
    print('== 2/3 notebooks (nbdev test_nb, 2 workers x 1 thread)', flush=True)
    nb_pass, nb_fail = run_notebooks()
    print(f'  notebooks: {nb_pass} passed, {nb_fail} failed ({time.time()-t0:.0f}s so far)', flush=True)
    print('== 2b/3 notebooks in a real Jupyter kernel (Run All, slow cells off; 2 workers x 1 thread)', flush=True)
    k_pass, k_fail = run_kernels()
    print(f'  kernels: {k_pass} passed, {k_fail} failed ({time.time()-t0:.0f}s so far)', flush=True)
    print('== 3/3 pytest tests/', flush=True)
    py_pass, py_fail = run_pytest()
    passed, failed = nb_pass + k_pass + py_pass, nb_fail + k_fail + py_fail + (1 if changed else 0)
    print(f'total time {time.time()-t0:.0f}s; notebooks {nb_pass}+{nb_fail}, kernels {k_pass}+{k_fail}, pytest {py_pass}+{py_fail}, '
          f'sync check {"failed" if changed else "ok"}')
    print(f'{passed} passed, {failed} failed')
    return failed > 0


if __name__ == '__main__':
    if sys.argv[1:2] == ['--outputs']: sys.exit(1 if outputs(sys.argv[2:]) else 0)
    main()
