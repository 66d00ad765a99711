"""`make demo`: the small-scale pipeline on the shipped data_small, on this machine's CPU.

Runs every stage that exists, each as the command a user would type, and prints where the outputs are.
"""
import os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get('VTP_DEMO_DIR', ROOT/'runs'/'demo'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')


def step(title, *args):
    print(f'\n== {title}\n$ python {" ".join(map(str, args))}', flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)
    print(f'-- {title}: {time.time()-t0:.0f}s', flush=True)


def main():
    RUN.mkdir(parents=True, exist_ok=True)
    step('data_small: check the shipped dataset', '-m', 'vtp_nb.data', '--check')
    print(f'\nDemo finished; outputs in {RUN}')


if __name__ == '__main__': main()
