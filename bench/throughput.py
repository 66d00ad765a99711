"""Throughput of the VTP training step: images/s and achieved FLOP/s against the machine's peak.

CPU (default): the small config, one full optimiser step (forward + backward + AdamW) per variant; branch costs by
difference (CLIP = CLIP+AE - AE, SSL = SSL+AE - AE, the SSL figure includes the EMA teacher) plus the teacher's
forward on its own; a plain ViT autoencoder step as a reference; all against the fp32 matmul FLOP/s measured in the
same run (a 2048^3 matmul loop).

    python bench/throughput.py                        # small config, this CPU (OMP_NUM_THREADS / --threads)
    python bench/throughput.py --device cuda --config demo   # MFU in bf16 autocast + SDPA vs the GPU's dense bf16 peak
    python bench/throughput.py --device cuda --config full --batch 64   # VTP-L at 256 px, per-GPU micro-batch
    python bench/throughput.py --config demo --smoke  # the GPU code path at tiny size (runs on a CPU, for tests)
    python bench/throughput.py --reference ../VTP     # our VisualTokenizer vs the official VTPModel, side by side (CPU)

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` via `vtp_nb.core.flop_counter` (matmuls, convolutions
and SDPA, including the CPU attention kernels the stock registry misses; elementwise ops are not counted), so "achieved FLOP/s" is model FLOP/s in the usual MFU sense.
"""
import argparse, contextlib, json, os, platform, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
from vtp_nb.core import flop_counter   # FlopCounterMode that also counts attention on CPUs
from vtp_nb.config import ConfigError, run_cli
from vtp_nb.vtp import VARIANTS

# dense (no sparsity) bf16 tensor-core peaks per GPU, from the vendors' data sheets (FLOP/s)
BF16_PEAK = {'H200': 989e12, 'H100 SXM': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12, 'H100': 989e12,
             'A100': 312e12, 'L40S': 362e12, 'L4': 121e12, 'A10G': 70e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12}


def gpu_peak(name:str) -> tuple:
    "(peak bf16 FLOP/s, table key) for a CUDA device name; (None, None) when unknown."
    for k, v in BF16_PEAK.items():
        if all(part in name for part in k.split()): return v, k
    return None, None


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def matmul_peak(dev, dtype=torch.float32, n:int=2048, reps:int=5) -> float:
    "Best-of-`reps` FLOP/s of an n^3 matmul (the machine's practical peak for this dtype)."
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    a @ b; sync(dev)
    best = 0.
    for _ in range(reps):
        t0 = time.perf_counter(); (a @ b); sync(dev); dt = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 / dt)
    return best


def timed(step, dev, warmup:int, iters:int) -> tuple:
    "(FLOPs of one call counted by `flop_counter`, median seconds per call)."
    with flop_counter() as fc: step()
    flops = fc.get_total_flops()
    for _ in range(warmup): step()
    ts = []
    for _ in range(iters):
        sync(dev); t0 = time.perf_counter(); step(); sync(dev); ts.append(time.perf_counter() - t0)
    return flops, sorted(ts)[len(ts) // 2]


def shrink(cfg):
    "Tiny sizes for a CPU smoke test of the demo/full code path (same code, small tensors)."
    from vtp_nb.vit import VIT_SIZES
    from vtp_nb.vtp import small_clip_config, small_ssl_config
    cfg.model = VIT_SIZES['tiny']()
    cfg.clip, cfg.ssl = small_clip_config(), small_ssl_config()
    cfg.data.image_size = 32
    cfg.train.batch_size, cfg.objective.batch_ssl, cfg.objective.batch_rec = 16, 4, 8
    return cfg


CATEGORIES = (('matmul', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm')),
              ('attention (SDPA)', ('aten::_scaled_dot_product',)),
              ('convolution', ('aten::mkldnn_convolution', 'aten::convolution_backward', 'aten::_convolution', 'aten::conv')),
              ('optimiser + EMA (foreach)', ('aten::_foreach', 'aten::addcdiv', 'aten::addcmul', 'aten::lerp', 'aten::_fused_adamw')))


def category(op:str) -> str:
    for name, prefixes in CATEGORIES:
        if op.startswith(prefixes): return name
    return 'other (elementwise, norms, copies, indexing)'


def breakdown(step, dev, iters:int=3) -> dict:
    "Where a step's time goes: self time and counted FLOPs per op category (torch.profiler + FlopCounterMode)."
    from torch.profiler import profile, ProfilerActivity
    with flop_counter() as fc: step()
    flops = {}
    for op, n in fc.get_flop_counts().get('Global', {}).items():
        c = category(f'aten::{getattr(op, "__name__", str(op)).split(".")[0]}')
        flops[c] = flops.get(c, 0) + n
    step(); sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    with profile(activities=acts) as prof:
        for _ in range(iters): step()
        sync(dev)
    secs = {}
    for e in prof.key_averages():
        t = (e.self_device_time_total if dev.type == 'cuda' else e.self_cpu_time_total) / 1e6 / iters
        if t > 0: secs[category(e.key)] = secs.get(category(e.key), 0) + t
    return dict(seconds=secs, flops=flops)


def vtp_step(cfg, dev, amp:bool):
    "A closure running one full training step of the engine's VTP model on random data."
    from vtp_nb.vtp import build_vtp
    from vtp_nb.train import param_groups
    from vtp_nb.ssl_branch import ssl_schedule
    from vtp_nb.clip import get_tokenizer
    torch.manual_seed(0)
    model = build_vtp(cfg).to(dev).train()
    opt = torch.optim.AdamW(param_groups(model), lr=1e-4, betas=(0.9, 0.95))
    B, s = cfg.train.batch_size, cfg.data.image_size
    images = torch.rand(B, 3, s, s, device=dev) * 2 - 1
    ctx = cfg.clip.text.context_length if hasattr(cfg.clip, 'text') else cfg.clip.context_length
    tokens = get_tokenizer(ctx)(['a photo of a square.'] * B).to(dev)
    sampler = model.sampler(B, 0)
    temp = ssl_schedule(cfg.ssl, 0, cfg.train.steps)['teacher_temp']
    autocast = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    state = dict(step=0)
    def step():
        batch = model.make_batch(images, tokens if model.terms['clip'] > 0 else None, *sampler(state['step']))
        with autocast(): loss = model(batch, teacher_temp=temp)['loss']
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        model.after_step(); model.update_teacher(0.996); state['step'] += 1
    return step, model


def teacher_step(model, cfg, dev, amp:bool):
    "The EMA teacher's share: its no-grad forward on the global crops + DINO head."
    t = model.ssl.teacher.module
    images = torch.rand(cfg.objective.batch_ssl, 3, cfg.data.image_size, cfg.data.image_size, device=dev) * 2 - 1
    crops = model.ssl.make_inputs(images, cfg.model.patch_size)['global_crops']
    autocast = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    @torch.no_grad()
    def step():
        with autocast():
            cls, patch = t['tokenizer'].semantic_features(t['tokenizer'].forward_features(crops))
            t['dino_head'](cls)
    return step


def plain_ae_step(dev, size:str='small_f4d16', batch:int=128, width:int|None=None):
    "Reference: a plain ViT autoencoder (no VTP wrapper), L1 loss, AdamW, full step (`width`: widen encoder and decoder)."
    import dataclasses
    from vtp_nb.vit import VIT_SIZES, VisualTokenizer
    torch.manual_seed(0)
    c = VIT_SIZES[size]()
    if width: c = dataclasses.replace(c, width=width, dec_width=width)
    tok = VisualTokenizer(c).to(dev).train()
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1
    def step():
        loss = (tok(x) - x).abs().mean(); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    n_tok = (32 // tok.cfg.patch_size) ** 2
    return step, sum(p.numel() for p in tok.parameters()), n_tok


# --- side-by-side comparison with the official model code (--reference) -------------------------------------------

def reference_config(image_size:int=256) -> dict:
    "Official VTPConfig fields of the compared tokenizer: S-f16d64 encoder, 4-block 384-wide pixel decoder, no CLIP parts."
    return dict(image_size=image_size, train_clip=False, train_reconstruction=True, vision_patch_size=16,
                vision_embed_dim=384, vision_depth=12, vision_num_heads=6, vision_feature_bottleneck=64,
                decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6)


def import_official(path) -> tuple:
    "((VTPConfig, VTPModel), None) from a checkout of MiniMax-AI/VTP at `path`, or (None, why not)."
    path = Path(path).expanduser().resolve()
    if not (path / 'vtp' / 'models' / 'vtp_hf').is_dir():
        return None, f"{path} has no vtp/models/vtp_hf/ (expected a checkout of github.com/MiniMax-AI/VTP)"
    sys.path.insert(0, str(path))
    try:
        from vtp.models.vtp_hf import VTPConfig, VTPModel
    except ImportError as e:   # typically transformers or omegaconf missing: `pip install "transformers==4.57.*" omegaconf`
        return None, f"importing vtp.models.vtp_hf from {path} failed: {e!r} (the official code needs transformers and omegaconf)"
    return (VTPConfig, VTPModel), None


def l1_step(model, forward, x):
    "A closure: one L1 reconstruction training step (forward, backward, AdamW, zero_grad) of `model` on `x`."
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    def step():
        loss = (forward(x) - x).abs().mean(); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return step


def count_flops(step) -> dict:
    "FLOPs of one call: total (matmuls, convolutions, attention) and the attention part alone."
    with flop_counter() as fc: step()
    att = sum(n for op, n in fc.get_flop_counts().get('Global', {}).items() if 'scaled_dot_product' in str(op))
    return dict(total=fc.get_total_flops(), attention=att)


def busy_cpu_seconds() -> float|None:
    "CPU seconds all processes of the machine have been busy so far (Linux /proc/stat), or None elsewhere."
    try: vals = [int(v) for v in Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]]
    except (OSError, ValueError): return None
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf('SC_CLK_TCK')   # all but idle and iowait


def minor_faults() -> int:
    "Minor page faults of this process so far (0 where `resource` is unavailable)."
    try: import resource
    except ImportError: return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def steady_malloc() -> bool:
    """Ask glibc malloc to keep the memory it gets back (no trimming, 1 GiB top pad, mmap only above 32 MiB), so a step
    does not page-fault on memory the previous step - possibly the other model's - returned; False where unsupported."""
    import ctypes, ctypes.util
    try: mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError): return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return all(mallopt(o, v) == 1 for o, v in ((M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 1 << 30), (M_MMAP_THRESHOLD, 32 << 20)))


def interleaved(steps:dict, rounds:int, max_others:float|None=None, max_rounds:int|None=None) -> tuple:
    """Seconds per call of each step, from rounds that run every step once in an order rotated each round.
    For each call also the share of the machine's CPUs that *other* processes used meanwhile; with `max_others`, a call
    during which they used more is not counted, and rounds go on until every step has `rounds` counted calls (at most
    `max_rounds` rounds). Returns (counted seconds per step, log of every call)."""
    names, ts, log = list(steps), {k: [] for k in steps}, []
    max_rounds = max_rounds or 4 * rounds
    for r in range(max_rounds):
        if min(len(v) for v in ts.values()) >= rounds: break
        for k in names[r % len(names):] + names[:r % len(names)]:
            b0, f0, c0, t0 = busy_cpu_seconds(), minor_faults(), time.process_time(), time.perf_counter()
            steps[k]()
            dt, cpu, b1 = time.perf_counter() - t0, time.process_time() - c0, busy_cpu_seconds()
            others = None if b0 is None else max(0., (b1 - b0) - cpu) / (dt * os.cpu_count())
            counted = (max_others is None or others is None or others <= max_others) and len(ts[k]) < rounds
            log.append(dict(round=r, step=k, seconds=dt, cpu_seconds=cpu, page_faults=minor_faults() - f0,
                            others_cpu_share=others, counted=counted))
            if counted: ts[k].append(dt)
    return ts, log


def median(xs): return sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2


def op_table(step, iters:int=2, top:int=25) -> dict:
    "Profiler self CPU time (ms per step) and calls per step of each aten op, for a side-by-side table."
    from torch.profiler import profile, ProfilerActivity
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters): step()
    return {e.key: (e.self_cpu_time_total / 1e3 / iters, e.count // iters) for e in prof.key_averages() if e.self_cpu_time_total > 0}


def reference_main(a) -> dict:
    "Our VisualTokenizer against the official VTPModel: same shape and weights, same L1 step, timed interleaved in one process."
    mods, why = import_official(a.reference)
    if mods is None: raise ConfigError(f"--reference: the official model code is not importable: {why}")
    VTPConfig, VTPModel = mods
    import torch.nn as nn
    from vtp_nb.vit import VisualTokenizer
    from vtp_nb.official import official_config_to_ours, official_state_dict_to_ours
    torch.set_num_threads(a.threads or 2)
    steady = a.malloc == 'steady' and steady_malloc()
    ocfg = reference_config(a.image_size)
    torch.manual_seed(0)
    official = VTPModel(VTPConfig(**ocfg)).train()
    sd = official_state_dict_to_ours(official.state_dict())
    models = {'official': (official, lambda m: (lambda x: m(x, forward_type='rec')['reconstructed_image']))}
    for rd in a.rope.split(','):                               # our RoPE precision: bfloat16 = the release's, float32 = training
        vit, _, _ = official_config_to_ours(ocfg, rope_dtype=rd)
        tok = VisualTokenizer(vit).train()
        nn.ModuleDict({'tokenizer': tok}).load_state_dict(sd, strict=True)   # the official weights, renamed
        models[f'ours (rope {rd})'] = (tok, lambda m: m)
    torch.manual_seed(1)
    x = torch.rand(a.batch or 8, 3, a.image_size, a.image_size) * 2 - 1
    res = dict(date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), machine=platform.node(), cpu=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), torch=torch.__version__, malloc='steady' if steady else 'default',
               omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', '(default)'), official_code=str(Path(a.reference).resolve().name),
               official_config=ocfg, batch=x.shape[0], image_size=a.image_size, rounds=a.iters, repeats=a.repeat,
               params={k: sum(p.numel() for p in m.parameters()) for k, (m, _) in models.items()})
    with torch.no_grad():                                      # the same function: outputs agree before any training step
        ref = models['official'][1](official)(x)
        res['max_abs_diff_vs_official'] = {k: (f(m)(x) - ref).abs().max().item() for k, (m, f) in models.items() if k != 'official'}
    steps = {k: l1_step(m, f(m), x) for k, (m, f) in models.items()}
    res['flops'] = {k: count_flops(s) for k, s in steps.items()}          # also the warm-up step
    f0 = res['flops']['official']['total']
    print(f"{res['threads']} threads, torch {res['torch']}, B={res['batch']} at {a.image_size} px, fp32, L1 + AdamW step, "
          f"{res['malloc']} malloc, OMP_WAIT_POLICY {res['omp_wait_policy']} | {res['date']}")
    for k in steps:
        fl = res['flops'][k]
        print(f"  {k:20s} {res['params'][k] / 1e6:6.2f}M params  {fl['total'] / 1e9:7.2f} GFLOP/step ({(fl['total'] - fl['attention']) / 1e9:.2f} "
              f"without attention; {fl['total'] / f0 - 1:+.5%} vs official)"
              + (f"  max |out - official| {res['max_abs_diff_vs_official'][k]:.1e}" if k != 'official' else ''))
    assert all(abs(v['total'] / f0 - 1) < 1e-4 for v in res['flops'].values()), "the compared steps do not do the same FLOPs"
    for k, s in steps.items(): s()                                            # second warm-up step
    res['runs'] = []
    for rep in range(a.repeat):
        load0 = os.getloadavg()
        ts, log = interleaved(steps, a.iters, a.max_others)
        run = dict(load_avg_before=[round(v, 2) for v in load0], load_avg_after=[round(v, 2) for v in os.getloadavg()],
                   calls=log, seconds=ts, median_s={k: median(v) if v else None for k, v in ts.items()})
        res['runs'].append(run)
        if a.json: Path(a.json).write_text(json.dumps(res, indent=1))   # after every run: an interrupted session keeps its data
        shares = [c['others_cpu_share'] for c in log if c['others_cpu_share'] is not None]
        print(f"run {rep + 1}/{a.repeat}: {1 + log[-1]['round']} interleaved rounds, load average {run['load_avg_before']} -> "
              f"{run['load_avg_after']}" + (f"; other processes used {min(shares):.0%}-{max(shares):.0%} of the CPUs during a step" if shares else '')
              + (f", {sum(not c['counted'] for c in log)} of {len(log)} steps not counted (> {a.max_others:.0%} or surplus)" if a.max_others is not None else ''))
        if any(len(v) < a.iters for v in ts.values()):
            print(f"  fewer than {a.iters} counted steps for {[k for k, v in ts.items() if len(v) < a.iters]}: the machine was too busy; no ratio")
            continue
        t_off = run['median_s']['official']
        run['speed_vs_official'] = {k: t_off / v for k, v in run['median_s'].items() if k != 'official'}
        counted = lambda k, f: [c[f] for c in log if c['step'] == k and c['counted']]
        run['median_cpu_s'] = {k: median(counted(k, 'cpu_seconds')) for k in ts}
        run['median_page_faults'] = {k: median(counted(k, 'page_faults')) for k in ts}
        run['cpu_time_speed_vs_official'] = {k: run['median_cpu_s']['official'] / v for k, v in run['median_cpu_s'].items() if k != 'official'}
        for k, v in ts.items():
            extra = '' if k == 'official' else (f"  speed vs official {run['speed_vs_official'][k]:.3f}x "
                                                f"(by CPU time {run['cpu_time_speed_vs_official'][k]:.3f}x)")
            print(f"  {k:20s} median {run['median_s'][k]:6.2f} s/step  ({res['flops'][k]['total'] / run['median_s'][k] / 1e9:5.1f} GFLOP/s, "
                  f"{run['median_cpu_s'][k]:5.2f} CPU-s, {run['median_page_faults'][k]:6.0f} page faults)  "
                  f"steps {' '.join(f'{t:.2f}' for t in v)}{extra}")
    if a.profile:                                              # where the time goes, op by op (profiler self time)
        tabs = {k: op_table(s) for k, s in steps.items()}
        res['op_ms_per_step'] = {k: {op: v[0] for op, v in t.items()} for k, t in tabs.items()}
        keys = sorted(set().union(*tabs.values()), key=lambda op: -max(t.get(op, (0, 0))[0] for t in tabs.values()))[:30]
        print('profile (self CPU ms per step / calls per step):\n  ' + f"{'op':44s}" + ''.join(f"{k[:20]:>22s}" for k in tabs))
        for op in keys:
            print(f"  {op[:44]:44s}" + ''.join(f"{t.get(op, (0, 0))[0]:12.1f} ms {t.get(op, (0, 0))[1]:5d}x" for t in tabs.values()))
        print(f"  {'total':44s}" + ''.join(f"{sum(v[0] for v in t.values()):12.1f} ms       " for t in tabs.values()))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return res


def check_args(a):
    "Refuse bad arguments before anything is measured (`ConfigError`: one `error:` line, exit status 2)."
    if a.device == 'cuda' and not torch.cuda.is_available(): raise ConfigError('--device cuda: no CUDA device here')
    bad = [v for v in a.variants.split(',') if v not in VARIANTS]
    if bad: raise ConfigError(f"--variants: {', '.join(map(repr, bad))} is unknown: choose from {', '.join(VARIANTS)}")
    for name in ('batch', 'threads', 'width', 'iters'):
        v = getattr(a, name)
        if v is not None and v < 1: raise ConfigError(f'--{name} {v}: must be >= 1')
    if a.warmup < 0: raise ConfigError(f'--warmup {a.warmup}: must be >= 0')
    if a.json and not Path(a.json).resolve().parent.is_dir(): raise ConfigError(f'--json {a.json}: its folder does not exist')


def measure(argv=None) -> dict:
    "Parse the command line, measure, print the table; returns every number (what `--json` writes)."
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--config', default='small', choices=['small', 'demo', 'full'])
    ap.add_argument('--batch', type=int, default=None, help='global batch B (SSL / rec subsets scaled with it)')
    ap.add_argument('--threads', type=int, default=None, help='CPU threads (default: OMP_NUM_THREADS or all cores)')
    ap.add_argument('--iters', type=int, default=5); ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--variants', default='ae,clip_ae,ssl_ae,vtp')
    ap.add_argument('--smoke', action='store_true', help='tiny sizes (tests the code path on a CPU)')
    ap.add_argument('--json', default=None, help='also write the numbers to this JSON file')
    ap.add_argument('--width', type=int, default=None, help='widen the tokenizer (encoder and decoder), e.g. 256 = the issue reference size')
    ap.add_argument('--profile', action='store_true', help='also break the VTP step down by op category (time share, FLOP/s)')
    ap.add_argument('--reference', default=None, metavar='PATH',
                    help='compare our VisualTokenizer with the official VTPModel from a MiniMax-AI/VTP checkout at PATH '
                         '(S-f16d64, 4-block decoder, L1 step, fp32, CPU; default 2 threads, --iters interleaved rounds)')
    ap.add_argument('--rope', default='bfloat16,float32', help="--reference: our RoPE precision(s) to time ('bfloat16' = the release's)")
    ap.add_argument('--repeat', type=int, default=2, help='--reference: independent interleaved runs (stability)')
    ap.add_argument('--image-size', type=int, default=256, help='--reference: image side in pixels')
    ap.add_argument('--malloc', default='steady', choices=['steady', 'default'],
                    help="--reference: 'steady' asks glibc to keep freed memory, so page faults do not depend on which model ran before")
    ap.add_argument('--max-others', type=float, default=None,
                    help='--reference: do not count a step during which other processes used more than this share of the CPUs (e.g. 0.05); '
                         'rounds go on until each model has --iters counted steps (at most 4x --iters rounds)')
    a = ap.parse_args(argv)
    check_args(a)
    if a.reference: return reference_main(a)
    dev = torch.device(a.device)
    if dev.type == 'cpu':
        n = a.threads or int(os.environ.get('OMP_NUM_THREADS', 0)) or os.cpu_count()
        torch.set_num_threads(n)
    from vtp_nb.scales import make_config
    amp = dev.type == 'cuda'                                   # bf16 autocast on GPUs only, never on a CPU
    peak_dtype = torch.bfloat16 if amp else torch.float32
    res = dict(date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), machine=platform.node(), cpu=platform.processor() or platform.machine(),
               device=torch.cuda.get_device_name() if amp else f'cpu x {torch.get_num_threads()} threads', config=a.config,
               smoke=a.smoke, load_avg=[round(x, 2) for x in os.getloadavg()], torch=torch.__version__, rows=[])
    res['measured_peak'] = matmul_peak(dev, peak_dtype, n=256 if a.smoke else (8192 if amp else 2048))
    if amp:
        table, key = gpu_peak(res['device'])
        res['peak'], res['peak_source'] = (table, f'datasheet dense bf16, {key}') if table else (res['measured_peak'], 'measured bf16 matmul (GPU not in the table)')
    else: res['peak'], res['peak_source'] = res['measured_peak'], f"measured fp32 {256 if a.smoke else 2048}^3 matmul, same run"
    print(f"{res['device']} | peak {res['peak'] / 1e9:.1f} GFLOP/s ({res['peak_source']}); measured {peak_dtype} matmul "
          f"{res['measured_peak'] / 1e9:.1f} GFLOP/s | load average {res['load_avg']} | {res['date']}")
    def row(name, flops, dt, batch, note=''):
        r = dict(name=name, flops=flops, seconds=dt, img_per_s=batch / dt if batch else None, flop_per_s=flops / dt,
                 ratio=flops / dt / res['peak'], note=note)
        res['rows'].append(r)
        ips = f"{r['img_per_s']:8.0f} img/s" if batch else ' ' * 14
        print(f"  {name:28s} {flops / 1e9:9.2f} GFLOP {dt * 1e3:9.1f} ms {ips} {r['flop_per_s'] / 1e9:9.1f} GFLOP/s "
              f"{'MFU' if amp else 'of peak'} {r['ratio']:6.1%}  {note}")
        return r
    steps = {}
    for v in a.variants.split(','):
        cfg = make_config(a.config)
        cfg.objective.variant = v
        cfg.rec.perceptual = 'none'                            # LPIPS's VGG is not part of the tokenizer's FLOPs here
        if a.smoke: shrink(cfg)
        if a.width:
            import dataclasses
            cfg.model = dataclasses.replace(cfg.model, width=a.width, dec_width=a.width)
        if a.batch:
            f = a.batch / cfg.train.batch_size
            cfg.train.batch_size = a.batch
            cfg.objective.batch_ssl, cfg.objective.batch_rec = max(1, int(cfg.objective.batch_ssl * f)), max(1, int(cfg.objective.batch_rec * f))
        step, model = vtp_step(cfg, dev, amp)
        flops, dt = timed(step, dev, a.warmup, a.iters)
        steps[v] = row(f'{v} full step (B={cfg.train.batch_size})', flops, dt, cfg.train.batch_size,
                       f"B_ssl={cfg.objective.batch_ssl} B_rec={cfg.objective.batch_rec} {cfg.data.image_size}px")
        if v == 'vtp' or (v == 'ssl_ae' and 'vtp' not in a.variants):
            tf, tdt = timed(teacher_step(model, cfg, dev, amp), dev, a.warmup, a.iters)
            row('  teacher forward (no grad)', tf, tdt, None, f'{2 * cfg.objective.batch_ssl} global crops')
        if a.profile and v == 'vtp':
            bd = breakdown(step, dev)
            tot = sum(bd['seconds'].values())
            res['breakdown'] = dict(bd, total_seconds=tot)
            print(f"  breakdown of the vtp step by op category (profiler self time; FLOP/s where FLOPs are counted):")
            for c, t in sorted(bd['seconds'].items(), key=lambda kv: -kv[1]):
                f = bd['flops'].get(c, 0)
                rate = f"{f / t / 1e9:9.1f} GFLOP/s = {f / t / res['peak']:6.1%} of peak" if f else ''
                print(f"    {c:45s} {t * 1e3:8.1f} ms {t / tot:6.1%} of the step  {rate}")
        del model, step
    if 'ae' in steps:
        base = steps['ae']
        for v, name in (('clip_ae', 'CLIP branch'), ('ssl_ae', 'SSL branch (incl. teacher)')):
            if v in steps:
                row(f'  {name} (by difference)', steps[v]['flops'] - base['flops'], max(1e-9, steps[v]['seconds'] - base['seconds']), None,
                    f'{v} - ae')
        row('  rec branch (= ae step)', base['flops'], base['seconds'], None, 'reconstruction only')
    if not amp:
        step, n_params, n_tok = plain_ae_step(dev, 'tiny' if a.smoke else 'small_f4d16', 16 if a.smoke else 128)
        flops, dt = timed(step, dev, a.warmup, a.iters)
        row(f'plain ViT AE reference', flops, dt, 16 if a.smoke else 128, f'{n_params / 1e6:.2f}M params, {n_tok} tokens, L1 + AdamW')
        if not a.smoke:                                         # the reference point: ~4.5M params, 64 tokens, B=128
            step, n_params, n_tok = plain_ae_step(dev, 'small_f4d16', 128, width=256)
            flops, dt = timed(step, dev, a.warmup, a.iters)
            row(f'plain ViT AE, width 256', flops, dt, 128, f'{n_params / 1e6:.2f}M params, {n_tok} tokens, L1 + AdamW')
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    "Command line: `measure` through `vtp_nb.config.run_cli` (bad arguments give one `error:` line and exit status 2)."
    def cli(args): measure(args); return 0
    return run_cli(cli, argv)


if __name__ == '__main__': sys.exit(main())
