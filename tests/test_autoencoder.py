"Tests for vtp_nb.autoencoder: the VGG-weights paths of ReconLoss (missing, random opt-in, present), metrics' bad input, stage-2 invariants."
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import socket, math
import pytest
import torch
from vtp_nb.autoencoder import (ReconLoss, MissingVGGWeights, VGG16_FILE, VGG16_URL, vgg_weights_path, vgg_weights_available,
                                build_lpips, psnr, ssim, Stage2Config, Stage2Trainer, PatchDiscriminator)
from vtp_nb.vit import VisualTokenizer, VIT_SIZES
from vtp_nb.core import atomic_save


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    "An empty torch cache: no VGG weights."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    "Any attempt to open a connection or download fails loudly."
    def boom(*a, **k): raise AssertionError(f'network access attempted: {a[:2]}')
    monkeypatch.setattr(socket.socket, 'connect', boom)
    monkeypatch.setattr(socket, 'create_connection', boom)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', boom)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', boom)


def _imgs(n=2, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, s, s, generator=g)*2 - 1


def test_missing_vgg_is_a_clear_error(torch_home, no_network):
    assert vgg_weights_path() == torch_home/'hub'/'checkpoints'/VGG16_FILE
    assert not vgg_weights_available()
    with pytest.raises(MissingVGGWeights) as e: ReconLoss(perceptual='vgg')
    msg = str(e.value)
    assert str(vgg_weights_path()) in msg and VGG16_URL in msg and "perceptual='random'" in msg


def test_random_trunk_is_opt_in_offline_and_named(torch_home, no_network):
    rl = ReconLoss(lpips_weight=0.5, perceptual='random')
    x = _imgs(); out = rl(x.flip(0), x)
    assert set(out) == {'l1', 'lpips_randvgg', 'loss'}
    assert rl.name == 'l1+lpips_randvgg' and 'RANDOM' in rl.describe()
    assert math.isclose(out['loss'].item(), out['l1'].item() + 0.5*out['lpips_randvgg'].item(), rel_tol=1e-5)
    assert not any(p.requires_grad for p in rl.parameters())


def _fake_vgg16_file(path):
    "A randomly initialised but correctly shaped torchvision VGG16 `features.*` state_dict."
    from torchvision.models.vgg import make_layers, cfgs
    torch.manual_seed(0)
    feats = make_layers(cfgs['D'])  # VGG16's conv stack, same layer indices as torchvision.models.vgg16().features
    sd = {f'features.{k}': v for k, v in feats.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd


def test_vgg_path_loads_weights_from_the_cache(torch_home, no_network):
    sd = _fake_vgg16_file(vgg_weights_path())
    assert vgg_weights_available()
    rl = ReconLoss(perceptual='vgg')
    assert rl.name == 'l1+lpips_vgg' and 'ImageNet' in rl.describe()
    trunk = rl.lpips.net
    assert torch.equal(trunk.slice1[0].weight, sd['features.0.weight'])
    assert torch.equal(getattr(trunk.slice5, '28').bias, sd['features.28.bias'])
    x = _imgs(); out = rl(x.flip(0), x)
    assert set(out) == {'l1', 'lpips_vgg', 'loss'} and out['lpips_vgg'] > 0


def test_vgg_file_with_wrong_shapes_is_rejected(torch_home):
    p = vgg_weights_path(); p.parent.mkdir(parents=True)
    torch.save({'features.0.weight': torch.zeros(1, 1, 1, 1)}, p)
    with pytest.raises(ValueError, match='features.0.weight'): build_lpips('vgg')
    torch.save({'classifier.0.weight': torch.zeros(1)}, p)
    with pytest.raises(KeyError, match='not a torchvision VGG16'): build_lpips('vgg')


def test_bad_arguments():
    with pytest.raises(ValueError, match='perceptual'): ReconLoss(perceptual='alex')
    assert ReconLoss(lpips_weight=0, perceptual='vgg').name == 'l1'  # weight 0 needs no VGG at all
    x = _imgs(s=8)
    with pytest.raises(ValueError, match='smaller than'): ssim(x, x)
    with pytest.raises(ValueError, match='reduction'): psnr(x, x, reduction='sum')
    assert psnr(x, x).item() > 100  # identical images: huge, finite


def test_stage2_freezes_encoder_and_resumes(tmp_path):
    torch.manual_seed(0)
    ae = VisualTokenizer(VIT_SIZES['tiny']())
    cfg = Stage2Config(perceptual='none', disc_start=0, disc_width=8, disc_layers=2)
    tr = Stage2Trainer(ae, cfg)
    enc = {k: v.clone() for k, v in ae.state_dict().items() if not k.startswith('decoder.')}
    x = _imgs(4)
    ae.train()  # a caller switching modes must not unfreeze anything: the step re-asserts eval for the encoder
    log = tr.step(x)
    assert log['gan_active'] == 1. and 'd_loss' in log and 'gan_weight' in log
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in enc.items())
    atomic_save(tr.state_dict(), tmp_path/'s2.pt')
    tr2 = Stage2Trainer(VisualTokenizer(VIT_SIZES['tiny']()), cfg)
    tr2.load_state_dict(torch.load(tmp_path/'s2.pt', weights_only=False))
    assert tr2.step_count == 1
    assert all(torch.equal(v, tr2.decoder.state_dict()[k]) for k, v in ae.decoder.state_dict().items())
    with pytest.raises(ValueError, match='last_layer'):
        Stage2Trainer(ae, cfg, last_layer=ae.patch_embed.weight)
