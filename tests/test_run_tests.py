"The test runner and the Makefile: what `make outputs NB=...` accepts, stored outputs name no folder of the machine, scratch folders, the install's disk check."
import os, shutil, subprocess, sys, tempfile
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'scripts'))
import run_tests as T


def test_outputs_refuses_what_is_not_a_notebook(tmp_path):
    with pytest.raises(SystemExit, match='not a notebook: .*README.md'): T.run_kernels(only=[str(ROOT/'README.md')])
    with pytest.raises(SystemExit, match='not a notebook: .*missing.ipynb'): T.run_kernels(only=[str(tmp_path/'missing.ipynb')])


def test_anonymise_removes_machine_paths():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x')])
    nb.cells[0].outputs = [nbformat.v4.new_output('stream', name='stdout', text=f'wrote {ROOT}/runs/demo/ckpt.pt\n'),
                           nbformat.v4.new_output('execute_result', data={'text/plain': f'{ROOT}/nbs/results'}, execution_count=1)]
    out = T._anonymise(nb).cells[0].outputs
    assert out[0]['text'] == 'wrote runs/demo/ckpt.pt\n' and out[1]['data']['text/plain'] == 'nbs/results'


def test_scratch_tmp_holds_the_run_and_is_removed_unless_kept(monkeypatch):
    monkeypatch.delenv('TMPDIR', raising=False)
    with T.scratch_tmp() as s:
        d = Path(s['path'])
        child = subprocess.run([sys.executable, '-c', 'import tempfile; print(tempfile.mkdtemp())'], capture_output=True, text=True)
        assert Path(child.stdout.strip()).parent == d and Path(tempfile.mkdtemp()).parent == d
    assert not d.exists() and 'TMPDIR' not in os.environ
    with pytest.raises(RuntimeError):
        with T.scratch_tmp() as s: d = Path(s['path']); raise RuntimeError('a check crashed')
    assert d.is_dir()                                   # kept for a look, like a failed run's
    shutil.rmtree(d)


def test_kernel_run_does_not_export(tmp_path, monkeypatch):
    # outside an nbdev project nbdev_export() raises, so a kernel in which it did its work would fail
    fn = tmp_path/'t.ipynb'
    cells = [nbformat.v4.new_code_cell('print(6 * 7)'), nbformat.v4.new_code_cell('#| hide\nimport nbdev; nbdev.nbdev_export()')]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), fn)
    monkeypatch.setenv('VTP_SAVE_OUTPUTS', '1')
    _, err, _ = T._kernel_once(fn)
    assert err is None
    assert nbformat.read(fn, as_version=4).cells[0].outputs[0]['text'] == '42\n'   # `make outputs` kept what the kernel printed


def test_install_refuses_early_when_the_disk_is_too_full(tmp_path):
    for f in ('Makefile', 'pyproject.toml'): shutil.copy(ROOT/f, tmp_path/f)
    # PYTHON=false: were the check gone, making the venv would fail at once instead of installing 6 GB
    r = subprocess.run(['make', 'install', 'MIN_FREE_GB=1000000', 'PYTHON=false'], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and 'installing .venv needs about 1000000 GB' in r.stdout
    assert not (tmp_path/'.venv').exists()              # refused before the venv was made
