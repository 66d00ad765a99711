"""`make demo`: the small-scale pipeline on the shipped data_small, on this machine's CPU.

Each stage is the command a user would type; the outputs land in runs/demo/ (override with VTP_DEMO_DIR).
  1. train a VTP tokenizer (CLIP + SSL + reconstruction) at the `small` scale
  2. stage 2: fine-tune its pixel decoder with the encoder frozen
  3. extract its latents (with flips) and their per-channel statistics
  4. train a tiny LightningDiT on the normalised latents: the `cpu` recipe chosen by `nbs/24_sweep.ipynb`, stopped at
     1,500 of its 3,000 steps so that the demo takes about 10 minutes (the full recipe: DEMO_DIT_STEPS=3000, about 14)
  5. sample class-conditionally, decoded by the stage-2 decoder
  6. evaluate: understanding, reconstruction, generation, one labelled JSON report; the samples' class accuracy printed
The small-scale study is a separate command: `python -m vtp_nb.study --preset quick` (or `cpu`).
`make demo QUICK=1` shrinks every stage to a smoke test (about two minutes).
"""
import json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get('VTP_DEMO_DIR', ROOT/'runs'/'demo'))
QUICK = os.environ.get('QUICK', '') not in ('', '0')
DIT_STEPS = os.environ.get('DEMO_DIT_STEPS', '1500')   # half the recipe: 9.5 vs 14 min, 58 vs 61% class-correct samples (measured)
os.environ.setdefault('HF_HUB_OFFLINE', '1')


def step(title, *args):
    print(f'\n== {title}\n$ python {" ".join(map(str, args))}', flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)
    print(f'-- {title}: {time.time()-t0:.0f}s', flush=True)


def main():
    t0 = time.time()
    RUN.mkdir(parents=True, exist_ok=True)
    tok, s2, lat, dit, smp, ev = (RUN/n for n in ('tokenizer', 'stage2', 'latents', 'dit', 'samples', 'eval'))
    from vtp_nb.dit import dit_config
    w = f"{dit_config('cpu').sample.cfg_scale:g}"           # the recipe's guidance scale; the report also shows CFG 1 (off)
    dit_steps = '50' if QUICK else DIT_STEPS
    short = dict(tok=['--steps', '20'], s2=['--steps', '20'], dit=['--steps', dit_steps],
                 ev=['--n-train', '1000', '--n-val', '200', '--n-gen', '100', '--cfg-scales', '1', w]) if QUICK else \
            dict(tok=[], s2=[], dit=['--steps', dit_steps], ev=['--n-gen', '500', '--cfg-scales', '1', w])
    step('1/6 train the VTP tokenizer (scale small)', '-m', 'vtp_nb.train', '--scale', 'small', '--out', tok, '--overwrite', *short['tok'])
    step('2/6 stage 2: fine-tune the pixel decoder, encoder frozen', '-m', 'vtp_nb.stage2', '--tokenizer', tok, '--out', s2,
         '--overwrite', *short['s2'])
    step('3/6 extract latents', '-m', 'vtp_nb.dit', 'extract', '--tokenizer', tok, '--data', 'data_small', '--out', lat)
    step(f'4/6 train a tiny LightningDiT (preset cpu, {dit_steps} steps)', '-m', 'vtp_nb.dit', 'train', '--latents', lat, '--out', dit, '--overwrite',
         '--no-progress', *short['dit'])
    step('5/6 sample 8 images per class', '-m', 'vtp_nb.dit', 'sample', '--ckpt', dit, '--tokenizer', s2, '--n-per-class', '8', '--out', smp)
    step('6/6 evaluate tokenizer, stage-2 decoder and DiT', '-m', 'vtp_nb.evaluate', '--ckpt', tok, '--decoder', s2, '--dit', dit,
         '--out', ev, *short['ev'])
    rep = json.loads((ev/'report.json').read_text())
    acc = {m['cfg_scale']: m for m in rep['generation'] if m['name'] == 'gen class acc'}
    ceiling = next(m for m in rep['reconstruction'] if m['name'] == 'recon class acc' and m['note'].startswith('stage2'))
    print(f'\nDemo finished in {time.time() - t0:.0f}s{" (QUICK smoke test: numbers are meaningless)" if QUICK else ""}. Outputs in {RUN}:')
    for w, m in sorted(acc.items()):
        print(f"  generated images recognised as their class: {m['value']:.1%} at CFG {w:g}  [{m['label']}]")
    print(f"  decoder ceiling (the same classifier on stage-2 reconstructions of val): {ceiling['value']:.1%}  [{ceiling['label']}]")
    print(f'  samples: {smp}/samples.png   reconstructions: {ev}/recons.png   report: {ev}/report.json   losses: {tok}/loss.png')


if __name__ == '__main__': main()
