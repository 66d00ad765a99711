"The test runner's own helpers: what `make outputs NB=...` accepts, and that stored outputs name no folder of the machine."
import sys
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
