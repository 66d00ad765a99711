"Metrics and the evaluate CLI: FID sanity (self ~0, monotone in blur, seeded), clear errors, labelled reports."
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import json, re, subprocess, sys
from dataclasses import asdict
from pathlib import Path
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur
from vtp_nb.core import from_uint8, atomic_save, set_seed
from vtp_nb.data import load_data_small
from vtp_nb.metrics import (MetricResult, fid_kid, resolve_fid_space, linear_probe, reconstruction_metrics,
                            INCEPTION_FILE, inception_weights_path)
from vtp_nb.refcls import load_reference_classifier, refcls_path, classifier_accuracy

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def val(): return load_data_small('val', 32)

def test_self_fid_is_zero(val):
    # (KID is left out: its unbiased estimator is slightly negative for a set against itself, by design)
    r = fid_kid(val.images[:200], val.images[:200], 'ref-cls', 'val', kid=False)
    assert abs(r['FID'].value) < 1e-3

def test_fid_grows_with_blur(val):
    x = val.images[:200]
    fids = [fid_kid(gaussian_blur(from_uint8(x), 5, s), x, 'ref-cls', 'val', kid=False)['FID'].value for s in (0.6, 1.2, 2.4)]
    assert 0 < fids[0] < fids[1] < fids[2], fids

def test_same_seed_same_numbers(val):
    a, b = val.images[:150], val.images[150:300]
    r1, r2 = fid_kid(a, b, 'ref-cls', 'val', seed=3), fid_kid(a, b, 'ref-cls', 'val', seed=3)
    assert r1['FID'].value == r2['FID'].value and r1['KID'].value == r2['KID'].value
    g = torch.Generator().manual_seed(0)
    fx = torch.randn(200, 8, generator=g); fy = (fx[:, 0] > 0).long()
    assert linear_probe(fx[:150], fy[:150], fx[150:], fy[150:]) == linear_probe(fx[:150], fy[:150], fx[150:], fy[150:])

def test_missing_inception_is_a_clear_error(val, tmp_path):
    missing = tmp_path/'nope.pth'
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE) as e:
        fid_kid(val.images[:10], val.images[:10], 'inception', 'val', inception_path=missing)
    assert str(missing) in str(e.value) and "space='ref-cls'" in str(e.value)
    if inception_weights_path() is None: assert resolve_fid_space('auto') == 'ref-cls'
    with pytest.raises(ValueError, match='unknown FID space'): resolve_fid_space('clip')

def test_labels_are_never_bare():
    with pytest.raises(ValueError, match='feature space'): MetricResult('gFID', 1.0, 'train', 10)
    assert str(MetricResult('rFID', 1.5, 'val', 1000, space='ref-cls')) == 'rFID[ref-cls, val, N=1000] = 1.5'

def test_shipped_reference_classifier(val):
    p = refcls_path()
    assert p.exists() and p.stat().st_size < 1_000_000
    rc = load_reference_classifier()
    assert rc.meta['val_acc'] >= 0.95 and list(rc.meta['classes']) == list(val.classes)
    assert classifier_accuracy(rc, val.images[:200], val.labels[:200]) >= 0.9

def test_refcls_hash_checked(tmp_path):
    ck = torch.load(refcls_path(), weights_only=True)
    ck['state_dict']['head.bias'] = ck['state_dict']['head.bias'] + 0.1
    torch.save(ck, tmp_path/'bad.pt')
    with pytest.raises(RuntimeError, match='sha256'): load_reference_classifier(tmp_path/'bad.pt')

def test_lpips_rules(val):
    from vtp_nb.autoencoder import vgg_weights_available
    x = from_uint8(val.images[:8])
    r = reconstruction_metrics(val.images[:8], x.flip(-1), 'val', lpips='random')['LPIPS']
    assert r.space == 'random-vgg' and 'opt-in' in r.note
    if not vgg_weights_available():
        with pytest.raises(Exception, match='VGG'): reconstruction_metrics(val.images[:8], x, 'val', lpips='vgg')

def _tiny_ckpts(d):
    "A random tiny tokenizer file and a random DiT checkpoint that records that tokenizer's encoder."
    from vtp_nb.vit import VisualTokenizer, VIT_SIZES, save_tokenizer
    from vtp_nb.lightningdit import LightningDiT
    from vtp_nb.dit import dit_config
    from vtp_nb.vit import encoder_hash
    from vtp_nb.config import config_to_dict, apply_overrides
    from vtp_nb.checkpoint import save_checkpoint
    set_seed(0); cfg = VIT_SIZES['tiny'](); tok = VisualTokenizer(cfg)
    save_tokenizer(tok, d/'tok.pt')
    rc = apply_overrides(dit_config('cpu'), [f'model.in_channels={cfg.bottleneck_dim}', 'model.input_size=4', 'model.hidden_size=32',
                                             'model.depth=1', 'model.num_heads=2', 'sample.steps=3'])
    dit = LightningDiT(rc.model)
    stats = {'mean': [0.] * cfg.bottleneck_dim, 'std': [1.] * cfg.bottleneck_dim, 'latent_shape': [cfg.bottleneck_dim, 4, 4], 'num_classes': 10}
    save_checkpoint(d/'dit.pt', 'dit', config_to_dict(rc), 1, links={'encoder': encoder_hash(tok), 'tokenizer': str(d/'tok.pt')},
                    model=dit.state_dict(), ema=dit.state_dict(), optimizer={}, extra={'stats': stats})

def test_evaluate_cli(tmp_path):
    _tiny_ckpts(tmp_path)
    out = tmp_path/'eval'
    cmd = [sys.executable, '-m', 'vtp_nb.evaluate', '--ckpt', str(tmp_path/'tok.pt'), '--dit', str(tmp_path/'dit.pt'),
           '--out', str(out), '--n-train', '300', '--n-val', '200', '--n-gen', '50', '--steps', '3']
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads((out/'report.json').read_text())
    assert {r['label'].split('[')[0] for r in rep['reconstruction']} >= {'PSNR', 'SSIM', 'rFID', 'rKID', 'recon class acc'}
    assert {r['label'].split('[')[0] for r in rep['generation']} == {'gFID', 'gKID', 'gen class acc', 'gen latent probe top-1'}
    labels = [r['label'] for s in ('understanding', 'reconstruction', 'generation') for r in rep[s]]
    assert any(l.startswith('probe top-1[latent-mean') for l in labels) and any('[pre-mean' in l for l in labels)
    assert all(re.search(r'N=\d+', l) for l in labels)
    assert not re.search(r'[rg]?[FK]ID\s*[=:]\s*-?\d', p.stdout), 'a bare FID/KID number was printed'
    assert re.search(r'gFID\[ref-cls, train, N=50 vs 300\] = ', p.stdout)
    from vtp_nb.dit import dit_config
    w = dit_config('cpu').sample.cfg_scale                       # no --cfg-scales: the DiT run's own scale
    assert (out/'recons.png').exists() and (out/f'samples_cfg{w:g}.png').exists()

def test_evaluate_cli_bad_ckpt(tmp_path):
    torch.save({'weights': {}}, tmp_path/'bad.pt')
    p = subprocess.run([sys.executable, '-m', 'vtp_nb.evaluate', '--ckpt', str(tmp_path/'bad.pt'), '--out', str(tmp_path/'o')],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and 'is not a vtp_nb.ckpt/3 checkpoint' in p.stderr and 'Traceback' not in p.stderr

def test_zero_shot_from_train_checkpoint(tmp_path, val):
    "A vtp_nb.train-format checkpoint with a CLIP branch gets labelled zero-shot numbers."
    from vtp_nb.scales import make_config
    from vtp_nb.config import config_to_dict
    from vtp_nb.checkpoint import CKPT_FORMAT
    from vtp_nb.clip import ClipBranch
    from vtp_nb.vit import VisualTokenizer
    from vtp_nb.evaluate import load_for_eval, zero_shot
    cfg = make_config('small'); set_seed(0)
    tok = VisualTokenizer(cfg.model); clip = ClipBranch(tok.semantic_dim, cfg.clip)
    torch.save({'format': CKPT_FORMAT, 'kind': 'tokenizer', 'config': config_to_dict(cfg), 'model': tok.state_dict(), 'clip': clip.state_dict()}, tmp_path/'ckpt.pt')
    t, c = load_for_eval(tmp_path)
    assert c is not None and c.logit_scale.shape == (1,)
    torch.testing.assert_close(c.image_head.proj.weight, clip.image_head.proj.weight)
    res = zero_shot(t, c, val.images[:50], val.labels[:50], val.classes)
    assert [r.label.split('[')[0] for r in res] == ['zero-shot top-1', 'zero-shot top-5'] and all('N=50' in r.label for r in res)
    assert isinstance(zero_shot(t, None, val.images[:5], val.labels[:5], val.classes), str)
