"""Throughput of the VTP training step: images/s and achieved FLOP/s against the machine's peak.

CPU (default): the small config, one full optimiser step (forward + backward + AdamW) per variant; branch costs by
difference (CLIP = CLIP+AE - AE, SSL = SSL+AE - AE, the SSL figure includes the EMA teacher) plus the teacher's
forward on its own; a plain ViT autoencoder step as a reference; all against the fp32 matmul FLOP/s measured in the
same run (a 2048^3 matmul loop).

    python bench/throughput.py                        # small config, this CPU (OMP_NUM_THREADS / --threads)
    python bench/throughput.py --device cuda --config demo   # MFU in bf16 autocast + SDPA vs the GPU's dense bf16 peak
    python bench/throughput.py --device cuda --config full --batch 64   # VTP-L at 256 px, per-GPU micro-batch
    python bench/throughput.py --config demo --smoke  # the GPU code path at tiny size (runs on a CPU, for tests)

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
    a = ap.parse_args(argv)
    check_args(a)
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
