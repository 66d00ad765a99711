"""`make demo`: the small-scale pipeline on the shipped data_small, on this machine's CPU.

Each stage is the command a user would type; the outputs land in runs/demo/ (override with VTP_DEMO_DIR).
  1. train a VTP tokenizer (CLIP + SSL + reconstruction) at the `small` scale
  2. extract its latents (with flips) and their per-channel statistics
  3. train a tiny LightningDiT on the normalised latents
  4. sample class-conditionally
  5. evaluate: understanding, reconstruction, generation, one labelled JSON report
  6. the small-scale study's pipeline at its `tiny` preset (the full study: `python -m vtp_nb.study --preset cpu`)
`make demo QUICK=1` shrinks every stage to a smoke test (about two minutes).
"""
import os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get('VTP_DEMO_DIR', ROOT/'runs'/'demo'))
QUICK = os.environ.get('QUICK', '') not in ('', '0')
os.environ.setdefault('HF_HUB_OFFLINE', '1')


def step(title, *args):
    print(f'\n== {title}\n$ python {" ".join(map(str, args))}', flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)
    print(f'-- {title}: {time.time()-t0:.0f}s', flush=True)


def main():
    RUN.mkdir(parents=True, exist_ok=True)
    tok, lat, dit, smp, ev = (RUN/n for n in ('tokenizer', 'latents', 'dit', 'samples', 'eval'))
    train_steps = ['--steps', '20'] if QUICK else []
    dit_steps = '50' if QUICK else '600'
    sub = ['--n-train', '1000', '--n-val', '200', '--n-gen', '100'] if QUICK else ['--n-gen', '500']
    step('1/6 train the VTP tokenizer (scale small)', '-m', 'vtp_nb.train', '--scale', 'small', '--out', tok, '--overwrite', *train_steps)
    step('2/6 extract latents', '-m', 'vtp_nb.dit', 'extract', '--tokenizer', tok, '--data', 'data_small', '--out', lat)
    step('3/6 train a tiny LightningDiT', '-m', 'vtp_nb.dit', 'train', '--latents', lat, '--size', 'tiny',
         '--steps', dit_steps, '--lr', '5e-4', '--out', dit, '--overwrite')   # the study's DiT settings for short CPU runs
    step('4/6 sample 8 images per class', '-m', 'vtp_nb.dit', 'sample', '--ckpt', dit, '--n-per-class', '8',
         '--cfg', '2.0', '--steps', '50', '--out', smp)
    step('5/6 evaluate tokenizer and DiT', '-m', 'vtp_nb.evaluate', '--ckpt', tok, '--dit', dit, '--out', ev, '--cfg-scales', '1', '2', *sub)
    step('6/6 the study pipeline, tiny preset', '-m', 'vtp_nb.study', '--preset', 'tiny', '--out', RUN/'study_tiny', '--overwrite')
    print(f'\nDemo finished{" (QUICK smoke test: numbers are meaningless)" if QUICK else ""}. Outputs in {RUN}:')
    print(f'  {tok}/loss.png  {smp}/samples.png  {ev}/report.json  {ev}/recons.png  {RUN}/study_tiny/')

if __name__ == '__main__': main()
