"""Ready for the GPU: one command that checks the whole pipeline on one GPU in about 8 minutes and writes every number to one JSON file.

Stages, in order (each one time-boxed; a failure is recorded with its error line and the next stage still runs):

  setup       device, versions, measured dense bf16 matmul peak (fp32 on a CPU) next to the vendor's peak
  data        a 256-px image folder rendered by data_small's generator (class folders of PNGs + data_small's CSV files)
  throughput  the VTP training step of the engine (bf16 autocast, SDPA) for the demo config (ViT-S, B=256) and the full
              config's per-GPU micro-batch (ViT-L, 128/32/16 at 128 GPUs), accumulated as the planner says for this
              GPU's memory: step time, images/s, MFU, peak memory against the plan's prediction
  train       `python -m vtp_nb.train --scale demo` on the folder through the real loader with workers: 2N steps (loss
              falls, checkpoint written, a copy kept at step N), then `--resume` from the step-N copy to 2N, compared
              with the uninterrupted run
  torchrun    the same run under `torchrun` (FSDP2 asked for; NCCL on GPUs, gloo on a CPU), stopped by SIGTERM
              mid-run as a pre-emption would, `--resume`d in place, compared with the plain run
  dit         latents of the stage's tokenizer, the DiT paper preset (LightningDiT-B/1, global batch 1024, bf16) for
              a few hundred steps, then sampling
  evaluate    `python -m vtp_nb.evaluate` on the tokenizer + DiT at 256 px on the generated images

    python bench/gpu_check.py                       # on a GPU machine: ~8 min; JSON to $OUT/gpu_check.json (or runs/)
    python bench/gpu_check.py --smoke               # the same stages on a CPU at tiny size (CI), < 90 s on 2 cores
    python bench/gpu_check.py --only throughput     # some stages only (comma-separated)

Estimates printed at the end (demo scale, paper-scale DiT, full scale) are throughput extrapolations, not runs.
"""
import argparse, contextlib, csv, io, json, math, os, platform, shutil, signal, statistics, subprocess, sys, time, traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE)); sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from throughput import matmul_peak, shrink            # bench/throughput.py

VENDOR_BF16_PEAK = 989e12   # H100 SXM and H200: dense (no sparsity) bf16 tensor-core FLOP/s, NVIDIA data sheets
TARGET_MFU, STRETCH_MFU = 0.40, 0.50                   # the issue's target for the VTP-L step
DEMO_RUN = (50_000, 256)                               # demo scale: steps x global batch
DIT_PAPER_RUN = (100_000, 1024)                        # paper-scale DiT (LightningDiT recipe): steps x global batch
STAGES = ('setup', 'data', 'throughput', 'train', 'torchrun', 'dit', 'evaluate')

# tiny sizes for --smoke (as tests/test_train.py), at 32 px with 8-px patches
TINY = ['model.width=32', 'model.depth=1', 'model.heads=2', 'model.dec_width=32', 'model.dec_depth=1', 'model.dec_heads=2',
        'train.batch_size=16', 'objective.batch_ssl=4', 'objective.batch_rec=8', 'ssl.out_dim=64', 'ssl.hidden_dim=32',
        'ssl.bottleneck_dim=16', 'clip.text.width=32', 'clip.text.layers=1', 'clip.text.heads=2', 'ssl.crops.n_local=1',
        'train.threads=1', 'model.patch_size=8', 'model.img_size=32', 'ssl.crops.global_size=32', 'ssl.crops.local_size=16',
        'clip.text.context_length=16', 'optim.lr=2e-3']
TINY_DIT = ['--size', 'tiny', '--batch-size', '16', '--set', 'model.hidden_size=32', 'model.depth=1', 'model.num_heads=2']


def profile(smoke:bool) -> dict:
    "Sizes of every stage: the GPU run, or the CPU smoke run."
    if smoke: return dict(size=32, n_train_per_class=4, n_val=20, workers=1, render_procs=1, tp_warmup=1, tp_iters=2,
                          half=3, log_every=1, dit_steps=6, dit_log_every=1, n_per_class=2, sample_steps=4, n_gen=20,
                          eval_steps=4, boxes=dict(setup=60, data=60, throughput=120, train=150, torchrun=180, dit=150, evaluate=120),
                          need={})
    return dict(size=256, n_train_per_class=64, n_val=100, workers=8, render_procs=min(16, os.cpu_count() or 1), tp_warmup=2,
                tp_iters=5, half=100, log_every=10, dit_steps=150, dit_log_every=10, n_per_class=4, sample_steps=0, n_gen=100,
                eval_steps=50, boxes=dict(setup=40, data=30, throughput=100, train=120, torchrun=100, dit=140, evaluate=80),
                need=dict(throughput=50, train=70, torchrun=50, dit=80, evaluate=45))   # kept free for the later stages


# ----------------------------------------------------------------------------------------------------------- plumbing
class CheckFailed(Exception):
    "A stage's check did not hold."

class StageTimeout(Exception):
    "An in-process stage ran past its time box."

@contextlib.contextmanager
def time_box(seconds:float):
    "Raise `StageTimeout` in the main thread after `seconds` (SIGALRM; in-process stages)."
    def handler(signum, frame): raise StageTimeout(f'ran past its time box of {seconds:.0f} s')
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(1., seconds))
    try: yield
    finally: signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)

def _nccl_version():
    try:
        v = torch.cuda.nccl.version()
        return '.'.join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception: return None

def first_line(e) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:300] if s else ''}"

def error_line(text:str) -> str:
    "The most telling line of a failed command's output: its `error:` line, else the last traceback line."
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in reversed(lines):
        if l.startswith('error:') or 'Error' in l.split(':')[0]: return l[:300]
    return lines[-1][:300] if lines else '(no output)'

def run_cmd(cmd:list, log:Path, timeout:float, env:dict, stop_when=None, grace:float=90) -> dict:
    """Run `cmd` (own process group) with output to `log`. Past `timeout`, or once `stop_when()` is true, SIGTERM goes to the
    command itself (the engine then finishes the step, writes its checkpoint and exits); SIGKILL to the group `grace` s later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, term, why = time.time(), None, None
    with open(log, 'w') as f:
        f.write('$ ' + ' '.join(map(str, cmd)) + '\n'); f.flush()
        p = subprocess.Popen(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        while p.poll() is None:
            el = time.time() - t0
            if term is None and (el > timeout or (stop_when is not None and stop_when())):
                why = 'time box' if el > timeout else 'requested'
                p.send_signal(signal.SIGTERM); term = time.time()
            elif term is not None and time.time() - term > grace:
                with contextlib.suppress(ProcessLookupError): os.killpg(p.pid, signal.SIGKILL)
                why = 'killed'; p.wait()
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError): os.killpg(p.pid, signal.SIGKILL)   # leftover loader workers, if any
    return dict(rc=p.returncode, seconds=round(time.time() - t0, 1), signal=why, out=log.read_text(), log=log.name)

def cmd_record(r:dict) -> dict: return {k: r[k] for k in ('rc', 'seconds', 'signal', 'log')}

def require(rec:dict, name:str, ok:bool, detail=None, fatal:bool=True):
    "Record a check; a failed one fails the stage (`fatal`: stops it; else the stage goes on and fails at its end)."
    rec.setdefault('checks', {})[name] = bool(ok) if detail is None else dict(ok=bool(ok), detail=detail)
    if ok: return
    msg = f'check {name} failed' + (f': {detail}' if detail is not None else '')
    if fatal: raise CheckFailed(msg)
    rec.setdefault('failed_checks', []).append(msg)

def must_succeed(rec:dict, what:str, r:dict, allow_stop:bool=False):
    ok = r['rc'] == 0 or (allow_stop and r['signal'] in ('requested', 'time box') and 'stopped after step' in r['out'])
    require(rec, f'{what} exit status', ok, None if ok else f"rc {r['rc']}{', ' + r['signal'] if r['signal'] else ''}: "
                                                        f"{error_line(r['out'])} (log {r['log']})")

def rows_of(run:Path) -> list:
    p = run/'metrics.jsonl'
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []

def steady(rows:list, key:str, skip:int=1):
    "Median of a metric over the logged rows after the first `skip` (warm-up, FLOP counting)."
    vals = [r[key] for r in rows[skip:] if isinstance(r.get(key), (int, float))] or [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None

def loss_check(rec:dict, rows:list, label:str, required:bool=True) -> dict:
    "First vs last logged loss."
    r = dict(first_step=rows[0]['step'], first_loss=rows[0]['loss'], last_step=rows[-1]['step'], last_loss=rows[-1]['loss'])
    r['falls'] = r['last_loss'] < r['first_loss']
    r['terms'] = {k: [rows[0][k], rows[-1][k]] for k in ('clip', 'ssl', 'rec', 'mse', 'cos') if k in rows[0] and k in rows[-1]}
    rec[f'{label}_loss'] = r
    if required: require(rec, f'{label} loss falls', r['falls'], f"{r['first_loss']:.4f} at step {r['first_step']} -> "
                                                                   f"{r['last_loss']:.4f} at step {r['last_step']}", fatal=False)
    return r

def first_step_losses(a:list, b:list) -> dict:
    "The logged losses of the resumed run's first step next to the uninterrupted run's at that step (before any update they must agree)."
    ra = next((r for r in a if r['step'] == b[0]['step']), None) if b else None
    if ra is None: return {}
    keys = [k for k in ('loss', 'clip', 'ssl', 'rec', 'mse', 'cos') if k in ra and k in b[0]]
    d = {k: [ra[k], b[0][k]] for k in keys}
    return dict(step=b[0]['step'], losses=d, differs=[k for k, (x, y) in d.items() if abs(x - y) > 1e-6 * max(1., abs(x))])

def compare_weights(a, b, mid=None, sections=('model', 'clip', 'ssl', 'teacher')) -> dict:
    """Final weights of two runs: max |a-b|, ||a-b|| / ||a||, and (with `mid`, the shared checkpoint the resumed run started
    from) the drift ratio ||a-b|| / ||a-mid||: the gap between the runs over how far the weights moved after the split."""
    from vtp_nb.checkpoint import load_checkpoint
    ka, kb = load_checkpoint(a), load_checkpoint(b)
    km = load_checkpoint(mid) if mid is not None else None
    d2 = n2 = m2 = 0.; mx = 0.; n = 0
    for s in sections:
        for k, v in ka.get(s, {}).items():
            if not (torch.is_tensor(v) and v.is_floating_point()): continue
            v, w = v.double(), kb[s][k].double()
            d2 += float((v - w).pow(2).sum()); n2 += float(v.pow(2).sum()); mx = max(mx, float((v - w).abs().max())) if v.numel() else mx
            if km is not None: m2 += float((v - km[s][k].double()).pow(2).sum())
            n += 1
    out = dict(steps=[ka['step'], kb['step']], tensors=n, max_abs_diff=mx, rel_l2_diff=math.sqrt(d2 / max(n2, 1e-30)))
    if km is not None: out.update(moved_rel_l2=math.sqrt(m2 / max(n2, 1e-30)), drift_ratio=math.sqrt(d2 / max(m2, 1e-30)))
    return out


# -------------------------------------------------------------------------------------------------------- the check
class Check:
    def __init__(self, a):
        self.a, self.smoke, self.p = a, a.smoke, profile(a.smoke)
        self.dev = torch.device('cpu') if a.smoke or not torch.cuda.is_available() else torch.device('cuda')
        self.gpu = self.dev.type == 'cuda'
        self.work = Path(a.work).resolve()
        self.json = Path(a.json).resolve()
        self.files = self.json.parent/(self.json.stem + '_files')
        self.deadline = time.time() + a.budget
        self.env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1'}
        self.perceptual = 'none'                            # LPIPS for the engine runs: 'vgg' when setup finds the weights
        if self.smoke: self.env['OMP_NUM_THREADS'] = os.environ.get('OMP_NUM_THREADS', '1')
        self.res = dict(check='bench/gpu_check.py', smoke=self.smoke, date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                        argv=sys.argv[1:], budget_s=a.budget, stages={}, notes=[])
        self.tol = dict(same_world_cpu_rel_l2=1e-5, gpu_or_cross_world_drift_ratio=a.resume_tol)
        self.res['resume_tolerance'] = dict(self.tol, rule=(
            "the resumed (or torchrun) run's final weights against the uninterrupted run's: on a CPU with the same number of "
            f"processes they must agree to rel. L2 <= {self.tol['same_world_cpu_rel_l2']:g} (deterministic kernels); on a GPU "
            f"(kernels need not be bitwise deterministic) the drift ratio ||a-b|| / ||a - a_N|| must be <= {a.resume_tol:g}, "
            "i.e. the runs differ by far less than the weights moved after the split; a resume that lost optimiser state, "
            "schedule position, teacher or data order moves the weights by about as much as the steps themselves"))

    # ------------------------------------------------------------------ helpers
    def write(self):
        self.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json.with_name(f'.{self.json.name}.tmp')
        tmp.write_text(json.dumps(self.res, indent=1, default=str)); os.replace(tmp, self.json)

    def keep(self, src:Path, name:str):
        "Copy a small artefact (log, metrics, figure, report) next to the JSON."
        if src.exists() and src.is_file() and src.stat().st_size < 5e6:
            self.files.mkdir(parents=True, exist_ok=True); shutil.copyfile(src, self.files/name)

    def py(self, *args): return [sys.executable, *args]
    def torchrun(self, nproc, *args): return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *args]

    def run(self, name:str, fn):
        rec = self.res['stages'].setdefault(name, {})
        box = self.p['boxes'][name] * self.a.box_scale
        later = sum(self.p['need'].get(n, 0) for n in STAGES[STAGES.index(name) + 1:] if n in self.only)
        left = self.deadline - time.time() - later * self.a.box_scale
        rec['time_box_s'] = round(min(box, left), 1)
        if name not in self.only:
            rec.update(status='skipped', error='not selected (--only)'); return
        missing = [f'{what} ({stage} stage)' for what, stage in DEPENDS.get(name, ()) if getattr(self, what, None) is None]
        if missing:
            rec.update(status='skipped', error=f"needs {', '.join(missing)}"); self.write(); return
        if left < 15:
            rec.update(status='skipped', error=f'the global time budget ({self.a.budget:.0f} s) is spent'); self.write(); return
        print(f'[{name}] ... (time box {min(box, left):.0f} s)', flush=True)
        t0, self.stage_end = time.time(), time.time() + min(box, left)
        try:
            with (time_box(min(box, left) + 5) if name in ('setup', 'data', 'throughput') else contextlib.nullcontext()):
                fn(rec)
            rec['status'] = 'failed' if rec.get('failed_checks') else 'passed'
            if rec.get('failed_checks'): rec['error'] = '; '.join(rec['failed_checks'])
        except CheckFailed as e: rec.update(status='failed', error='; '.join(rec.get('failed_checks', []) + [str(e)]))
        except StageTimeout as e: rec.update(status='timeout', error=str(e))
        except Exception as e:
            rec.update(status='failed', error=first_line(e), traceback=traceback.format_exc()[-3000:])
        finally:
            rec['seconds'] = round(time.time() - t0, 1)
            if self.gpu: torch.cuda.empty_cache()
            self.write()
            print(f"[{name}] {rec['status']} in {rec['seconds']:.1f} s" + (f": {rec['error']}" if rec.get('error') else ''), flush=True)

    def left(self, reserve:float=0.) -> float:
        "Seconds left in the current stage's box (minus what later steps of the stage need)."
        return max(5., self.stage_end - time.time() - reserve)

    # ------------------------------------------------------------------ setup
    def setup(self, rec):
        r = self.res
        r.update(python=platform.python_version(), torch=torch.__version__, machine=platform.node(), cpu_count=os.cpu_count(),
                 load_avg=[round(x, 2) for x in os.getloadavg()], cuda=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if self.gpu:
            prop = torch.cuda.get_device_properties(0)
            r.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(), memory_gb=round(prop.total_memory / 1e9, 1),
                     capability=f'{prop.major}.{prop.minor}', nccl=_nccl_version(),
                     sdpa=dict(flash=torch.backends.cuda.flash_sdp_enabled(), mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
                               cudnn=getattr(torch.backends.cuda, 'cudnn_sdp_enabled', lambda: None)()),
                     tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
            r['measured_bf16_matmul_peak'] = matmul_peak(self.dev, torch.bfloat16, n=8192, reps=10)
            r['vendor_bf16_peak'] = VENDOR_BF16_PEAK
            r['vendor_peak_source'] = 'H100 SXM / H200 dense bf16 (NVIDIA data sheets), a constant of this script'
            name = r['device']                               # the 989 TFLOP/s figure is the SXM part's (PCIe / NVL are lower)
            known = 'H200' in name or ('H100' in name and not any(k in name for k in ('PCIe', 'NVL')))
            r['peak'], r['peak_source'] = ((VENDOR_BF16_PEAK, 'vendor dense bf16 (H100/H200)') if known else
                                           (r['measured_bf16_matmul_peak'], 'measured bf16 8192^3 matmul (not an H100 SXM/H200)'))
            if not known: r['notes'].append(f"{r['device']} is not an H100 SXM/H200: MFU is against the measured bf16 matmul peak")
        else:
            r.update(device=f'cpu x {torch.get_num_threads()} threads', device_count=0, memory_gb=None)
            r['measured_fp32_matmul_peak'] = matmul_peak(self.dev, torch.float32, n=256 if self.smoke else 2048)
            r['measured_bf16_matmul_peak'] = None
            r['vendor_bf16_peak'] = VENDOR_BF16_PEAK
            r['peak'], r['peak_source'] = r['measured_fp32_matmul_peak'], 'measured fp32 matmul on this CPU (never bf16 on a CPU)'
        vgg = Path(torch.hub.get_dir())/'checkpoints'/'vgg16-397923af.pth'
        r['vgg_weights'] = vgg.exists()
        self.perceptual = 'vgg' if vgg.exists() and not self.smoke else 'none'
        self.peak = r['peak']
        rec.update(device=r['device'], peak=r['peak'], peak_source=r['peak_source'],
                   measured_matmul_peak=r['measured_bf16_matmul_peak'] if self.gpu else r['measured_fp32_matmul_peak'])

    # ------------------------------------------------------------------ data
    def data(self, rec):
        p, images = self.p, self.work/'images'
        n_train = 10 * p['n_train_per_class']
        t0 = time.time()
        write_image_folder(images, n_train, p['n_val'], p['size'], p['render_procs'])
        from vtp_nb.loaders import open_images
        ds, desc = open_images('imagefolder', str(images), p['size'])
        require(rec, 'image folder readable', len(ds) == n_train and len(ds.classes) == 10, desc)
        self.images = images
        rec.update(path=str(images), n_train=n_train, n_val=p['n_val'], size=p['size'], classes=len(ds.classes),
                   render_s=round(time.time() - t0, 1), generator='vtp_nb.data.render_sample (data_small seed, splits train/val)')
        self.n_train = n_train

    # ------------------------------------------------------------------ throughput
    def throughput(self, rec):
        rec['perceptual'] = ("rec.perceptual='none': LPIPS's VGG is left out (its weights may be absent, and its FLOPs are "
                             "not the tokenizer's); the engine's runs in the later stages use it when the weights are present")
        rec['method'] = ("the engine's own step (vtp_nb.engine._step: micro-batches, CLIP feature cache, autocast, clipping, "
                         "AdamW, teacher EMA) on the VTPTask of make_config(scale) built by build_vtp, synthetic images and "
                         "captions already on the device; FLOPs counted by vtp_nb.core.flop_counter on one step; "
                         f"{self.p['tp_warmup']} warm-up + {self.p['tp_iters']} timed steps (median, cuda synchronised)")
        for scale in ('demo', 'full'):
            rec[scale] = r = {}
            try: measure_vtp(self, scale, r)
            finally:
                if self.gpu: torch.cuda.empty_cache()
        for scale in ('demo', 'full'):
            if rec[scale].get('error'): raise CheckFailed(f"{scale}: {rec[scale]['error']}")

    # ------------------------------------------------------------------ train
    def train_args(self, steps:int) -> list:
        p = self.p
        s = [f'data.path={self.images}', f'data.image_size={p["size"]}', f'data.num_workers={p["workers"]}', f'rec.perceptual={self.perceptual}',
             'train.progress=false', f'train.log_every={p["log_every"]}', 'train.ckpt_every=1000000', f'train.keep_every={p["half"]}',
             f'train.steps={steps}']
        return ['--scale', 'demo', '--set', *(TINY if self.smoke else []), *s]

    def train(self, rec):
        N = self.p['half']
        A, B = self.work/'train_a', self.work/'train_b'
        rec.update(steps=2 * N, resume_from=N, perceptual=self.perceptual,
                   plan="uninterrupted 2N steps keeping a copy of the checkpoint at step N; then --resume from that copy to 2N "
                        "in a second folder (the same config and schedule, so the two must end at the same weights)")
        r = run_cmd(self.py('-m', 'vtp_nb.train', '--out', A, *self.train_args(2 * N)), self.work/'logs'/'train_a.log',
                    self.left(reserve=0.45 * (self.stage_end - time.time())), self.env)
        rec['run'] = cmd_record(r); self.keep(self.work/'logs'/'train_a.log', 'train_a.log')
        must_succeed(rec, 'train', r)
        rows = rows_of(A); self.keep(A/'metrics.jsonl', 'train_metrics.jsonl'); self.keep(A/'loss.png', 'train_loss.png')
        rec['precision'] = 'bf16-autocast' if 'precision=bf16-autocast' in r['out'] else 'fp32'
        rec['describe'] = next((l for l in r['out'].splitlines() if l.startswith('vtp_nb.train:')), None)
        rec['images_per_s'] = steady(rows, 'samples_per_s', skip=2)
        rec['step_s'] = steady(rows, 'step_s', skip=2)
        fl = rows[0].get('flops_per_step') if rows else None
        if fl and rec['step_s']:
            rec['flops_per_step'] = fl; rec['mfu'] = fl / rec['step_s'] / self.res['peak']
        from vtp_nb.checkpoint import load_checkpoint
        ck = load_checkpoint(A, kind='tokenizer')
        require(rec, 'checkpoint written', ck['step'] == 2 * N, f"ckpt.pt at step {ck['step']}")
        mid = A/f'ckpt_{N:07d}.pt'
        require(rec, 'step-N copy kept', mid.exists(), mid.name)
        self.run_a, self.mid_a = A, mid                                # the tokenizer of the later stages
        loss_check(rec, rows, 'train')
        r = run_cmd(self.py('-m', 'vtp_nb.train', '--out', B, '--resume', mid), self.work/'logs'/'train_b.log', self.left(), self.env)
        rec['resume'] = cmd_record(r); self.keep(self.work/'logs'/'train_b.log', 'train_b.log')
        must_succeed(rec, 'resume', r)
        rb = rows_of(B)
        require(rec, 'resume starts at N', bool(rb) and rb[0]['step'] == N, f"first resumed step {rb[0]['step'] if rb else None}")
        require(rec, 'resume reaches 2N', load_checkpoint(B)['step'] == 2 * N)
        cmp = compare_weights(A, B, mid)
        cmp['final_loss'] = [rows[-1]['loss'], rb[-1]['loss']]
        cmp['first_resumed_step'] = first_step_losses(rows, rb)
        rec['resume_vs_uninterrupted'] = cmp
        self.check_close(rec, 'resume matches the uninterrupted run', cmp, same_world=True)

    def check_close(self, rec, name, cmp, same_world:bool):
        "Non-fatal: the resumed run's weights against the uninterrupted run's (tolerances in the JSON's resume_tolerance)."
        why = cmp.get('first_resumed_step', {}).get('differs')
        why = f"; at the first resumed step (before any update) the logged {', '.join(why)} already differ" if why else ''
        if not self.gpu and same_world:
            require(rec, name, cmp['rel_l2_diff'] <= self.tol['same_world_cpu_rel_l2'],
                    f"rel L2 {cmp['rel_l2_diff']:.3g}, drift ratio {cmp.get('drift_ratio', float('nan')):.3g}{why}", fatal=False)
        else:
            require(rec, name, cmp['drift_ratio'] <= self.tol['gpu_or_cross_world_drift_ratio'],
                    f"drift ratio {cmp['drift_ratio']:.3g} (rel L2 {cmp['rel_l2_diff']:.3g}, max abs {cmp['max_abs_diff']:.3g}){why}", fatal=False)

    # ------------------------------------------------------------------ torchrun
    def torchrun_stage(self, rec):
        N, p = self.p['half'], self.p
        nproc = 2 if not self.gpu else max(1, min(2, torch.cuda.device_count()))
        C = self.work/'train_torchrun'
        rec.update(nproc=nproc, backend='nccl' if self.gpu else 'gloo', strategy_asked='fsdp',
                   plan="torchrun run of 2N steps (a copy kept at N), SIGTERM to the launcher once step N is logged (a "
                        "pre-emption), --resume in place to 2N; compared with the plain run when the world size is the same")
        args = self.torchrun(nproc, '-m', 'vtp_nb.train', '--out', C, *self.train_args(2 * N), 'train.strategy=fsdp')
        stop_rows = N // p['log_every'] + 1                            # SIGTERM once step N is logged (its copy is written by then)
        r = run_cmd(args, self.work/'logs'/'torchrun.log', self.left(reserve=0.45 * (self.stage_end - time.time())), self.env,
                    stop_when=lambda: len(rows_of(C)) >= stop_rows)
        rec['run'] = cmd_record(r); self.keep(self.work/'logs'/'torchrun.log', 'torchrun.log')
        if not r['signal']: must_succeed(rec, 'torchrun', r)            # failed by itself (not by our signal): nothing to resume
        line = next((l for l in r['out'].splitlines() if 'world=' in l and 'strategy=' in l), '')
        world = int(line.split('world=')[1].split()[0]) if 'world=' in line else None
        strategy = line.split('strategy=')[1].split()[0] if 'strategy=' in line else None
        rec.update(world=world, strategy=strategy, fsdp2_exercised=strategy == 'fsdp', process_group=bool(world and world > 1),
                   precision='bf16-autocast' if 'precision=bf16-autocast' in r['out'] else 'fp32')
        if strategy != 'fsdp':
            rec.setdefault('warnings', []).append(
                f"world={world}: the engine runs strategy={strategy} and joins no process group at world size 1 "
                "(vtp_nb.core.init_dist only initialises one for WORLD_SIZE > 1; vtp_nb.engine.wrap sets strategy 'none' "
                "when world == 1), so FSDP2 and NCCL are not exercised with one GPU")
        from vtp_nb.checkpoint import load_checkpoint
        stopped_at = load_checkpoint(C)['step']
        clean = 'stopped after step' in r['out'] and '--resume' in r['out']
        rec['sigterm'] = dict(sent=r['signal'], checkpoint_step=stopped_at, clean=clean)
        if r['signal']:
            require(rec, 'SIGTERM stop was clean', clean, None if clean else
                    f"the run did not stop cleanly ({error_line(r['out'])}); its last checkpoint is at step {stopped_at}", fatal=False)
        if stopped_at < 2 * N:                                          # resume in place, as after a real pre-emption
            resumed, how = C, f'in place from step {stopped_at}'
            r = run_cmd(self.torchrun(nproc, '-m', 'vtp_nb.train', '--out', C, '--resume'), self.work/'logs'/'torchrun_resume.log',
                        self.left(), self.env)
        else:                                                           # finished before the signal: resume the step-N copy
            resumed, how = self.work/'train_torchrun_b', f'from the step-{N} copy (the run finished before SIGTERM)'
            r = run_cmd(self.torchrun(nproc, '-m', 'vtp_nb.train', '--out', resumed, '--resume', C/f'ckpt_{N:07d}.pt'),
                        self.work/'logs'/'torchrun_resume.log', self.left(), self.env)
        rec['resume'] = dict(cmd_record(r), how=how); self.keep(self.work/'logs'/'torchrun_resume.log', 'torchrun_resume.log')
        must_succeed(rec, 'torchrun resume', r)
        require(rec, 'resume reaches 2N', load_checkpoint(resumed)['step'] == 2 * N)
        rows = rows_of(resumed) if resumed == C else [x for x in rows_of(C) if x['step'] < N] + rows_of(resumed)
        self.keep(resumed/'metrics.jsonl', 'torchrun_metrics.jsonl')
        loss_check(rec, rows, 'torchrun')
        rec['images_per_s'] = steady(rows, 'samples_per_s', skip=2)
        if getattr(self, 'run_a', None) is not None:
            cmp = compare_weights(self.run_a, resumed, self.mid_a)
            rec['vs_plain_run'] = cmp
            if world == 1: self.check_close(rec, 'matches the plain python run', cmp, same_world=True)
            else: cmp['note'] = (f'not checked: {world} ranks draw their own augmentation streams and KoLeo is per rank, '
                                 'so the run is not the 1-process run')

    # ------------------------------------------------------------------ dit
    def dit(self, rec):
        p, lat, run, samp = self.p, self.work/'latents', self.work/'dit', self.work/'samples'
        r = run_cmd(self.py('-m', 'vtp_nb.dit', 'extract', '--tokenizer', self.run_a, '--data', self.images, '--size', p['size'],
                            '--out', lat, '--workers', p['workers']), self.work/'logs'/'dit_extract.log', self.left(reserve=60), self.env)
        rec['extract'] = cmd_record(r); self.keep(self.work/'logs'/'dit_extract.log', 'dit_extract.log')
        must_succeed(rec, 'extract', r)
        stats = json.loads((lat/'latent_stats.json').read_text())
        rec['latents'] = dict(n=stats['num_latents'], shape=stats['latent_shape'])
        require(rec, 'latents of every image and its flip', stats['num_latents'] == 2 * self.n_train, stats['num_latents'])
        args = ['-m', 'vtp_nb.dit', 'train', '--preset', 'paper', '--latents', lat, '--out', run, '--steps', p['dit_steps'], '--no-progress',
                *(TINY_DIT if self.smoke else []), '--set', f'train.log_every={p["dit_log_every"]}', 'train.ckpt_every=1000000']
        r = run_cmd(self.py(*args), self.work/'logs'/'dit_train.log', self.left(reserve=40 if self.gpu else 20), self.env)
        rec['train'] = cmd_record(r); self.keep(self.work/'logs'/'dit_train.log', 'dit_train.log')
        must_succeed(rec, 'dit train', r, allow_stop=True)
        if r['signal']: rec.setdefault('warnings', []).append(f"stopped by the time box (SIGTERM) before {p['dit_steps']} steps")
        rows = rows_of(run); self.keep(run/'metrics.jsonl', 'dit_metrics.jsonl'); self.keep(run/'loss.png', 'dit_loss.png')
        from vtp_nb.checkpoint import load_checkpoint
        ck = load_checkpoint(run, kind='dit')
        d = next((l for l in r['out'].splitlines() if l.startswith('vtp_nb.dit:')), '')
        rec.update(steps=ck['step'], describe=d, precision='bf16-autocast' if 'precision=bf16-autocast' in r['out'] else 'fp32',
                   global_batch=ck['config']['train']['batch_size'], grad_accum=ck['config']['train']['grad_accum'],
                   samples_per_s=steady(rows, 'samples_per_s', skip=2), step_s=steady(rows, 'step_s', skip=2),
                   flops_per_step=rows[0].get('flops_per_step') if rows else None)
        if rec['flops_per_step'] and rec['step_s']: rec['mfu'] = rec['flops_per_step'] / rec['step_s'] / self.res['peak']
        require(rec, 'bf16 autocast on a GPU, fp32 on a CPU', rec['precision'] == ('bf16-autocast' if self.gpu else 'fp32'))
        loss_check(rec, rows, 'dit', required=self.gpu)                  # 6 tiny steps on a CPU: the loss is too noisy to judge
        r = run_cmd(self.py('-m', 'vtp_nb.dit', 'sample', '--ckpt', run, '--n-per-class', p['n_per_class'], '--out', samp,
                            *(['--steps', p['sample_steps']] if p['sample_steps'] else [])), self.work/'logs'/'dit_sample.log', self.left(), self.env)
        rec['sample'] = cmd_record(r); self.keep(self.work/'logs'/'dit_sample.log', 'dit_sample.log')
        must_succeed(rec, 'sample', r)
        from safetensors.torch import load_file
        t = load_file(str(samp/'samples.safetensors'))
        shape = list(t['images'].shape) if 'images' in t else None
        rec['samples'] = dict(images=shape, latents_finite=bool(torch.isfinite(t['latents']).all()),
                              sample_steps=p['sample_steps'] or ck['config']['sample']['steps'])
        self.keep(samp/'samples.png', 'dit_samples.png')
        require(rec, 'samples decoded at full size', shape == [10 * p['n_per_class'], 3, p['size'], p['size']], shape)
        require(rec, 'sampled latents finite', rec['samples']['latents_finite'])
        self.dit_run = run

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, rec):
        p, out = self.p, self.work/'eval'
        env = {**self.env, 'VTP_DATA_SMALL': str(self.images)}       # the generated folder is also a data_small root
        args = ['-m', 'vtp_nb.evaluate', '--ckpt', self.run_a, '--dit', self.dit_run, '--out', out, '--size', p['size'],
                '--n-gen', p['n_gen'], '--steps', p['eval_steps'], '--cfg-scales', '1']
        r = run_cmd(self.py(*args), self.work/'logs'/'evaluate.log', self.left(reserve=30), env)
        rec['run'] = cmd_record(r); self.keep(self.work/'logs'/'evaluate.log', 'evaluate.log')
        if r['rc'] != 0:                      # record why, then try once more without the probe floors to get the rest
            rec['first_attempt_error'] = error_line(r['out'])
            r = run_cmd(self.py(*args, '--no-floors'), self.work/'logs'/'evaluate_no_floors.log', self.left(), env)
            rec['retry_no_floors'] = cmd_record(r); self.keep(self.work/'logs'/'evaluate_no_floors.log', 'evaluate_no_floors.log')
            if r['rc'] == 0: self._eval_numbers(rec, out)
            raise CheckFailed(f"evaluate failed with the default options ({rec['first_attempt_error']}); "
                              f"without the probe floors it {'passed' if r['rc'] == 0 else 'failed too: ' + error_line(r['out'])}")
        self._eval_numbers(rec, out)

    def _eval_numbers(self, rec, out):
        rep = json.loads((out/'report.json').read_text())
        from vtp_nb.evaluate import headline
        h = {k: v for k, v in headline(rep).items() if v is not None}
        rec.update(headline=h, fid_space=rep['meta']['fid_space'], n_train=rep['meta']['n_train'], n_val=rep['meta']['n_val'],
                   eval_seconds=rep['meta'].get('seconds'), notes=rep.get('notes', []))
        for f in ('report.json', 'recons.png', 'samples_cfg1.png'): self.keep(out/f, f'eval_{f}')
        require(rec, 'reconstruction and generation measured', 'PSNR stage1' in h and 'gFID cfg1' in h, sorted(h))
        require(rec, 'headline numbers finite', all(math.isfinite(v) for v in h.values()))

    # ------------------------------------------------------------------ main
    def main(self):
        self.only = set(self.a.only.split(',')) if self.a.only else set(STAGES)
        self.only |= {'setup'}
        if self.work.exists(): shutil.rmtree(self.work)
        if self.files.exists(): shutil.rmtree(self.files)
        self.work.mkdir(parents=True)
        self.write()
        try:
            for name, fn in (('setup', self.setup), ('data', self.data), ('throughput', self.throughput), ('train', self.train),
                             ('torchrun', self.torchrun_stage), ('dit', self.dit), ('evaluate', self.evaluate)):
                self.run(name, fn)
        finally:
            self.res['total_seconds'] = round(time.time() - (self.deadline - self.a.budget), 1)
            self.res['summary'] = summary(self.res, self.smoke)
            self.write()
        print('\n'.join(self.res['summary']['lines']))
        print(f'wrote {self.json}')
        return 0 if all(s.get('status') in ('passed', 'skipped') for s in self.res['stages'].values()) else 1


# what a stage needs from an earlier one (an attribute of `Check` that stage sets once its product exists)
DEPENDS = dict(throughput=(('peak', 'setup'),), train=(('images', 'data'),), torchrun=(('images', 'data'),),
               dit=(('run_a', 'train'),), evaluate=(('dit_run', 'dit'),))


# ------------------------------------------------------------------------------------------------------ the data
def _render(job):
    from PIL import Image
    from vtp_nb.data import render_sample, ATTR_FIELDS, DATA_SEED
    root, split, i, size = job
    img, p = render_sample(DATA_SEED, split, i, size)
    rel = f'{split}/{p["shape"]}/{i:05d}.png'
    Image.fromarray(img).save(Path(root)/rel)
    return [rel, p['caption'], p['label']] + [p[k] for k in ATTR_FIELDS]

def write_image_folder(root:Path, n_train:int, n_val:int, size:int, procs:int=1):
    """data_small's layout at `size` px, rendered by `vtp_nb.data.render_sample` in `procs` processes: `train/<class>/*.png`,
    `val/<class>/*.png`, `{split}.csv`, `meta.json` (an ImageFolder for the loaders, a data_small root for `evaluate`)."""
    from vtp_nb.data import CLASSES, ATTR_FIELDS, DATA_SEED
    for split, n in (('train', n_train), ('val', n_val)):
        for c in CLASSES: (root/split/c).mkdir(parents=True, exist_ok=True)
        jobs = [(str(root), split, i, size) for i in range(n)]
        if procs > 1:
            import multiprocessing as mp
            with mp.get_context('fork').Pool(procs) as pool: rows = pool.map(_render, jobs, chunksize=8)
        else: rows = [_render(j) for j in jobs]
        buf = io.StringIO(); w = csv.writer(buf, lineterminator='\n')
        w.writerow(['path', 'caption', 'label'] + ATTR_FIELDS); w.writerows(rows)
        (root/f'{split}.csv').write_text(buf.getvalue())
    (root/'meta.json').write_text(json.dumps(dict(seed=DATA_SEED, size=size, classes=CLASSES, counts=dict(train=n_train, val=n_val)), indent=1) + '\n')


# ------------------------------------------------------------------------------------------------ the VTP step
def measure_vtp(ck:Check, scale:str, r:dict):
    "Time the engine's VTP step for one config; fill `r` (an 'error' key on failure, e.g. out of memory)."
    import copy
    from vtp_nb.scales import make_config, plan, fit_memory
    from vtp_nb.train import VTPTask
    from vtp_nb.engine import wrap, _step, _autocast, set_hparams
    from vtp_nb.core import flop_counter, seed_everything
    from vtp_nb.clip import get_tokenizer
    from vtp_nb.data import CLASSES, TEMPLATES
    dev, gpu = ck.dev, ck.gpu
    cfg = make_config(scale)
    cfg.rec.perceptual = 'none'
    if ck.smoke: shrink(cfg)
    G = cfg.plan.gpus
    if scale == 'full' and not ck.smoke:                     # the per-GPU share of the full scale's global batch at G GPUs
        cfg.train.batch_size, cfg.objective.batch_ssl, cfg.objective.batch_rec = (cfg.train.batch_size // G, cfg.objective.batch_ssl // G,
                                                                                   cfg.objective.batch_rec // G)
    cfg.train.strategy, cfg.train.progress, cfg.train.steps = 'none', False, 1000
    B, Bs, Br = cfg.train.batch_size, cfg.objective.batch_ssl, cfg.objective.batch_rec
    r.update(model=f"ViT-{'S' if scale == 'demo' else 'L'} f16d64" if not ck.smoke else 'tiny (smoke)', image_size=cfg.data.image_size,
             batch=dict(clip=B, ssl=Bs, rec=Br), per_gpu_of=f'{G} GPUs' if scale == 'full' else '1 GPU')
    mem = torch.cuda.get_device_properties(0).total_memory / 1e9 if gpu else None
    c2 = copy.deepcopy(cfg)
    if mem: c2.plan.memory_gb = (mem,)
    pl = plan(c2, gpus=1)
    if mem:
        f = pl['fits'][f'{mem:g}']
        if scale == 'full': r['planner_at_G_gpus'] = fit_memory(pl['branches'], 1, pl['optim_gb_per_gpu'] / G, mem)
    else:                       # no GPU memory to plan for: the full config still takes the accumulation path (CLIP feature cache)
        A0 = 2 if scale == 'full' else 1
        f = dict(fits=True, grad_accum=A0, activation_checkpointing=False, total_gb=round(pl['act_gb_per_gpu'] / 2 / A0 + pl['optim_gb_per_gpu'], 2),
                 note='CPU: not chosen by the planner')
    r['plan'] = dict(step_model_flops=pl['step_flops'], act_gb_fp32=round(pl['act_gb_per_gpu'], 2), optim_gb=round(pl['optim_gb_per_gpu'], 2),
                     fits=f, params=pl['params'])
    if not f.get('fits'):
        r['error'] = f"the planner finds no accumulation that fits {mem:.0f} GB"; return
    A, ac = f['grad_accum'], f['activation_checkpointing']
    cfg.train.grad_accum, cfg.train.activation_checkpointing = A, ac
    r.update(grad_accum=A, activation_checkpointing=ac, micro=dict(clip=B // A, ssl=Bs // A, rec=Br // A))

    caps = [t.format(c) for t in TEMPLATES for c in CLASSES]
    class Synthetic:
        "Random images already on the device, real captions: the step without the data loader."
        def __init__(self, b, s):
            g = torch.Generator(device='cpu').manual_seed(0)
            self.x = [(torch.rand(b, 3, s, s, generator=g) * 2 - 1).to(dev) for _ in range(A)]
            self.caps = [caps[i % len(caps)] for i in range(b)]
        def batch(self, step, micro=0): return dict(image=self.x[micro], caption=self.caps, label=None, index=None)
    class SynthTask(VTPTask):
        def data(self, rank, world, start):                 # VTPTask.data without a dataset
            t = self.cfg.train; self.rank, self.world, self.desc = rank, world, 'synthetic'
            self.tokenize = get_tokenizer(self.cfg.clip.text.context_length) if self.terms['clip'] > 0 else None
            self.tokens = None
            self.branches = self.model.sampler(t.batch_size, t.seed, 0, world * t.grad_accum)
            return Synthetic(t.batch_size // (world * t.grad_accum), self.cfg.data.image_size)

    sync = (lambda: torch.cuda.synchronize()) if gpu else (lambda: None)
    if gpu: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    task, model = SynthTask(cfg), None
    try:
        seed_everything(0, 'init')
        model = task.build().to(dev)
        task.start(model, None, lambda *_: None)
        runner, _ = wrap(model, task, 1, 'none')
        opt = torch.optim.AdamW(task.param_groups(model), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        data = task.data(0, 1, 0)
        autocast = _autocast(dev, 'auto')
        def one(step):
            model.train(); sched = task.schedules(step); set_hparams(opt, sched['lr'], sched['wd'])
            return _step(task, model, runner, opt, data, step, sched, dev, autocast, lambda: False)
        sync(); t0 = time.perf_counter()
        with flop_counter() as fc: one(0)
        sync(); r['first_step_s'] = time.perf_counter() - t0
        flops = fc.get_total_flops()
        for s in range(ck.p['tp_warmup']): one(1 + s)
        ts = []
        for s in range(ck.p['tp_iters']):
            sync(); t0 = time.perf_counter(); out = one(100 + s); sync(); ts.append(time.perf_counter() - t0)
        dt = statistics.median(ts)
        peak = ck.res['peak']
        r.update(step_s=dt, step_s_all=ts, images_per_s=B / dt, flops_counted=flops, model_flops=pl['step_flops'],
                 flops_per_s=flops / dt, mfu_counted=flops / dt / peak, mfu_model=pl['step_flops'] / dt / peak,
                 loss=out.get('loss'), precision='bf16-autocast' if gpu else 'fp32')
        r['mfu'] = r['mfu_model']
        r['flops_note'] = ("mfu_model: the planner's model FLOPs (3 x forward, no recomputation, no feature-cache pass); "
                           "mfu_counted: FlopCounterMode's count of what the step ran (includes the CLIP feature-cache "
                           "forward with accumulation and recomputed forwards with activation checkpointing)")
        if gpu:
            got = torch.cuda.max_memory_allocated() / 1e9
            r.update(peak_memory_gb=round(got, 2), predicted_gb=f['total_gb'], memory_vs_plan=round(got / f['total_gb'], 3),
                     reserved_gb=round(torch.cuda.max_memory_reserved() / 1e9, 2))
        if A > 1:                                            # how much the feature cache costs as run (fp32) vs under autocast
            batches = [data.batch(0, m) for m in range(A)]
            def cache(): task.begin_step(model, batches, 0, task.schedules(0))
            cache(); sync(); t0 = time.perf_counter(); cache(); sync(); t_fp32 = time.perf_counter() - t0
            with autocast(): cache()
            sync(); t0 = time.perf_counter()
            with autocast(): cache()
            sync(); t_bf16 = time.perf_counter() - t0
            r['clip_cache_forward_s'] = dict(as_run_fp32=t_fp32, under_autocast=t_bf16, share_of_step=t_fp32 / dt)
    except Exception as e:
        if isinstance(e, StageTimeout): raise
        r['error'] = first_line(e)
        if gpu: r['peak_memory_gb'] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    finally:
        del task, model
        import gc; gc.collect()


# ---------------------------------------------------------------------------------------------------- the summary
def _fmt_h(s): return f'{s / 3600:.1f} h' if s < 72 * 3600 else f'{s / 86400:.1f} days'

def summary(res:dict, smoke:bool) -> dict:
    "One line per stage, then the gaps to the targets and the time estimates (extrapolated from measured throughput)."
    S, lines, out = res['stages'], [], {}
    fl = lambda x: f'{x / 1e12:.1f} TFLOP/s' if x >= 1e12 else f'{x / 1e9:.1f} GFLOP/s'
    head = {'setup': lambda s: f"peak {fl(s.get('peak') or 0)} ({s.get('peak_source')}), measured matmul {fl(s.get('measured_matmul_peak') or 0)}",
            'data': lambda s: f"{s.get('n_train')} train + {s.get('n_val')} val images at {s.get('size')} px",
            'throughput': lambda s: ' | '.join(f"{k}: {s[k]['images_per_s']:.0f} img/s, MFU {s[k]['mfu']:.1%}, "
                                               f"{s[k].get('peak_memory_gb', '-')} / {s[k]['plan']['fits'].get('total_gb', '-')} GB (measured / plan)"
                                               for k in ('demo', 'full') if s.get(k, {}).get('step_s')),
            'train': lambda s: f"loss {s['train_loss']['first_loss']:.3f} -> {s['train_loss']['last_loss']:.3f}, "
                               f"{s.get('images_per_s') or 0:.0f} img/s (real loader), resume drift ratio "
                               f"{s.get('resume_vs_uninterrupted', {}).get('drift_ratio', float('nan')):.2g}",
            'torchrun': lambda s: f"world {s.get('world')} strategy {s.get('strategy')}, checkpoint after SIGTERM at step "
                                  f"{s.get('sigterm', {}).get('checkpoint_step')} ({'clean' if s.get('sigterm', {}).get('clean') else 'not clean'}), loss {s['torchrun_loss']['first_loss']:.3f} -> "
                                  f"{s['torchrun_loss']['last_loss']:.3f}",
            'dit': lambda s: f"{s.get('steps')} steps, {s.get('samples_per_s') or 0:.0f} samples/s, MFU {s.get('mfu', 0):.1%}, loss "
                             f"{s['dit_loss']['first_loss']:.3f} -> {s['dit_loss']['last_loss']:.3f}, samples {s.get('samples', {}).get('images')}",
            'evaluate': lambda s: ', '.join(f'{k} {v:.4g}' for k, v in s.get('headline', {}).items()
                                            if k in ('PSNR stage1', 'rFID stage1', 'gFID cfg1', 'probe latent-mean', 'zero-shot top-1'))}
    lines.append(f"gpu_check{' --smoke' if smoke else ''} on {res.get('device')} | torch {res.get('torch')} CUDA {res.get('cuda')} "
                 f"cuDNN {res.get('cudnn')} | {res.get('total_seconds', 0):.0f} s")
    for name in STAGES:
        s = S.get(name, {})
        try: h = head[name](s) if s.get('status') not in (None, 'skipped') else ''
        except Exception: h = ''
        lines.append(f"  {name:10s} {s.get('status', '-'):8s} {s.get('seconds', 0):6.1f} s  {h}"
                     + (f"  [{s['error']}]" if s.get('error') else ''))
        for w in s.get('warnings', []): lines.append(f"             warning: {w}")
    tp = S.get('throughput', {})
    full, demo = tp.get('full', {}), tp.get('demo', {})
    if smoke: lines.append('(smoke: tiny models on a CPU; the numbers below only show that the code path works)')
    lines.append('targets and estimates (estimates extrapolate the measured throughput; linear scaling to 8 GPUs assumed, '
                 'communication and data loading not included unless said):')
    if full.get('mfu') is not None:
        m = full['mfu']
        out['vtp_l_mfu'] = m
        lines.append(f"  VTP-L step MFU {m:.1%} (model FLOPs; counted {full['mfu_counted']:.1%}): target >= {TARGET_MFU:.0%} "
                     f"{'met' if m >= TARGET_MFU else f'missed by {TARGET_MFU - m:.1%}'}, stretch {STRETCH_MFU:.0%} "
                     f"{'met' if m >= STRETCH_MFU else 'not met'}")
    else: lines.append('  VTP-L step MFU: not measured')
    ips = demo.get('images_per_s'); ips_real = S.get('train', {}).get('images_per_s')
    if ips:
        steps, b = DEMO_RUN
        t1 = steps * b / ips
        out['demo_images_per_s'] = dict(step_only=ips, real_loader=ips_real)
        out['demo_estimate_s'] = dict(gpu1=t1, gpu8=t1 / 8)
        lines.append(f"  demo scale: {ips:.0f} img/s (engine step, synthetic data)" + (f", {ips_real:.0f} img/s through the real "
                     f"loader (train stage, {S['train'].get('perceptual', '?')} perceptual)" if ips_real else '')
                     + f"; {steps // 1000}k steps x {b}: ~{_fmt_h(t1)} on 1 GPU, ~{_fmt_h(t1 / 8)} on 8 (estimate)")
        if ips_real and ips_real < 0.8 * ips:
            tr = steps * b / ips_real
            lines.append(f"    at the real-loader rate: ~{_fmt_h(tr)} on 1 GPU (the loader/workers limit it; estimate)")
    d = S.get('dit', {})
    if d.get('samples_per_s'):
        steps, b = DIT_PAPER_RUN
        t1 = steps * b / d['samples_per_s']
        out['dit_paper_estimate_s'] = dict(gpu1=t1, gpu8=t1 / 8)
        lines.append(f"  paper-scale DiT ({d.get('describe', '').split('|')[0].replace('vtp_nb.dit: ', '').strip() or 'LightningDiT-B/1'}): "
                     f"{d['samples_per_s']:.0f} samples/s, MFU {d.get('mfu', 0):.1%}; {steps // 1000}k steps x {b}: ~{_fmt_h(t1)} on 1 GPU, "
                     f"~{_fmt_h(t1 / 8)} on 8 (estimate; the latents here are at {d.get('latents', {}).get('shape')})")
    if full.get('step_s') and not smoke:
        t = 100_000 * full['step_s']
        out['full_estimate_s'] = dict(gpus128=t)
        lines.append(f"  full scale (100k steps x 16384 on 128 GPUs): one per-GPU step {full['step_s']:.2f} s -> ~{_fmt_h(t)} "
                     f"(estimate, without FSDP communication)")
    out['lines'] = lines
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU (CI): the same stages and checks')
    ap.add_argument('--json', default=None, help='output JSON (default: $OUT/gpu_check.json when $OUT is set, else runs/gpu_check.json)')
    ap.add_argument('--work', default=None, help='scratch folder for images, runs, latents (default runs/gpu_check_work[_smoke]; replaced)')
    ap.add_argument('--only', default=None, help=f"comma-separated stages ({', '.join(STAGES)}); setup always runs")
    ap.add_argument('--budget', type=float, default=None, help='global time budget in seconds (default 500 on a GPU, 400 with --smoke)')
    ap.add_argument('--box-scale', type=float, default=1.0, help='multiply every stage time box (slow machines)')
    ap.add_argument('--resume-tol', type=float, default=0.25, help='GPU resume tolerance: max drift ratio (see the JSON)')
    a = ap.parse_args(argv)
    if a.json is None: a.json = str(Path(os.environ['OUT'])/'gpu_check.json') if os.environ.get('OUT') else str(ROOT/'runs'/'gpu_check.json')
    if a.work is None: a.work = str(ROOT/'runs'/('gpu_check_work_smoke' if a.smoke else 'gpu_check_work'))
    if a.budget is None: a.budget = 400. if a.smoke else 500.          # smoke: the boxes only catch hangs on a busy CI machine
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        msg = 'no CUDA device here: running the stages on the CPU at full size would take hours; use --smoke for the tiny CPU run'
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(check='bench/gpu_check.py', smoke=False, date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                                                torch=torch.__version__, cuda=torch.version.cuda, device=None, error=msg, stages={}), indent=1))
        print(msg, file=sys.stderr)
        return 2
    if a.smoke: torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 0)) or 1)
    return Check(a).main()


if __name__ == '__main__': sys.exit(main())
