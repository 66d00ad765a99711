"Tests for vtp_nb.data and vtp_nb.loaders: the shipped data_small, its generator and CLI, and the loaders on bad input."
import os, io, csv, subprocess, sys, warnings
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from vtp_nb.core import data_small_path
from vtp_nb.data import (CLASSES, TEMPLATES, DATA_SEED, N_TRAIN, N_VAL, load_data_small, render_sample, render_shapes,
                         write_data_small)
from vtp_nb.loaders import encoder_transform, ImageFolderCaptions, CaptionTable, WebImageText, split_indices

TF = encoder_transform(32)
ROOT = data_small_path()

def _png(path, seed_index=0, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_sample(DATA_SEED, 'test', seed_index, size)[0]).save(path)
    return path

def test_data_small_counts_and_classes():
    tr, va = load_data_small('train'), load_data_small('val')
    assert (len(tr), len(va)) == (N_TRAIN, N_VAL) == (5000, 1000)
    assert tr.classes == CLASSES and len(CLASSES) == 10
    assert tr.images.shape == (5000, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert torch.bincount(tr.labels, minlength=10).tolist() == [500]*10
    assert all(CLASSES[l] in c for l, c in zip(tr.labels.tolist(), tr.captions))
    assert all('{}' in t for t in TEMPLATES) and len(set(tr.captions)) > 1000
    x = va.to_float([0, 1]); assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    b = list(va.batches(128, seed=3)); assert len(b) == 7 and all(len(i) == 128 for i in b)
    assert torch.equal(b[0], next(va.batches(128, seed=3)))

def test_shipped_pngs_rerender_bit_exactly():
    for split, idx in (('train', [0, 1, 2, 777, 4999]), ('val', [0, 500, 999])):
        d = load_data_small(split)
        for i in idx:
            img, p = render_sample(DATA_SEED, split, i)
            assert np.array_equal(d.images[i].permute(1, 2, 0).numpy(), img), (split, i)
            assert d.captions[i] == p['caption'] and int(d.labels[i]) == p['label']
            f = ROOT/split/CLASSES[p['label']]/f'{i:05d}.png'
            assert np.array_equal(np.asarray(Image.open(f).convert('RGB')), img)

def test_size64_rerender_and_stream():
    img, p = render_sample(DATA_SEED, 'val', 4, 64)
    assert img.shape == (64, 64, 3) and p == render_sample(DATA_SEED, 'val', 4, 32)[1]
    s = list(render_shapes(3, size=16, start=10))
    assert [x['label'] for x in s] == [0, 1, 2] and s[0]['image'].shape == (3, 16, 16)

def test_cli_regenerates(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'vtp_nb.data', '--out', str(tmp_path/'ds'), '--n-train', '12', '--n-val', '3'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path/'ds'/'train.csv')))
    assert len(rows) == 12 and rows[3]['caption'] == load_data_small('train').captions[3]
    for r_ in rows[:4]:  # identical pixels to the shipped files
        assert np.array_equal(np.asarray(Image.open(tmp_path/'ds'/r_['path'])), np.asarray(Image.open(ROOT/r_['path'])))
    small = load_data_small('val', root=tmp_path/'ds'); assert len(small) == 3

def test_imagefolder_bad_files_skipped_and_counted(tmp_path):
    _png(tmp_path/'star'/'a.png', 0); _png(tmp_path/'star'/'b.png', 1)
    good = (tmp_path/'star'/'a.png').read_bytes()
    (tmp_path/'star'/'trunc.png').write_bytes(good[:len(good)//2])          # truncated PNG
    (tmp_path/'star'/'fake.jpg').write_bytes(b'this is not an image')       # non-image with an image extension
    (tmp_path/'star'/'readme.txt').write_text('x')                          # non-image file
    (tmp_path/'empty').mkdir()                                              # empty class folder
    with pytest.warns(UserWarning, match='skipped'):
        ds = ImageFolderCaptions(tmp_path, transform=TF)
        assert ds.skipped == 2   # readme.txt, empty folder
        caps = [ds[i]['caption'] for i in range(len(ds))]
    assert ds.skipped == 4 and len(caps) == 4 and all('star' in c for c in caps)
    assert any('trunc.png' in w for w, _ in ds.bad) and any('fake.jpg' in w for w, _ in ds.bad)
    assert all(ds[i]['image'].shape == (3, 32, 32) for i in range(len(ds)))
    with pytest.warns(UserWarning): ds2 = ImageFolderCaptions(tmp_path, transform=TF).check()
    assert len(ds2) == 2 and ds2.skipped == 4

def test_imagefolder_missing_root_and_no_images(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'): ImageFolderCaptions(tmp_path/'nowhere')
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=str(tmp_path)): ImageFolderCaptions(tmp_path)
    (tmp_path/'a'/'x.png').write_bytes(b'garbage')
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match='bad samples'): ImageFolderCaptions(tmp_path, transform=TF)[0]

def test_caption_table(tmp_path):
    _png(tmp_path/'img'/'0.png', 0); _png(tmp_path/'img'/'1.png', 1)
    (tmp_path/'img'/'2.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    rows = [('img/0.png', 'a red star'), ('img/1.png', ''), ('img/missing.png', 'a ghost'), ('img/2.png', 'broken file'),
            ('img/1.png', 'a blue ring')]
    with open(tmp_path/'t.tsv', 'w') as f:
        f.write('path\tcaption\n' + ''.join(f'{p}\t{c}\n' for p, c in rows))
    with pytest.warns(UserWarning, match='skipped'):
        ds = CaptionTable(tmp_path/'t.tsv', transform=TF)
        assert len(ds) == 3 and ds.skipped == 2   # missing caption, wrong path
        out = [ds[i] for i in range(3)]
    assert [o['caption'] for o in out] == ['a red star', 'a blue ring', 'a blue ring']   # bad index 1 answered by the next good one
    assert ds.skipped == 3 and all(o['label'] == -1 for o in out)
    with pytest.raises(FileNotFoundError, match='nope.csv'): CaptionTable(tmp_path/'nope.csv')
    (tmp_path/'e.csv').write_text('path,caption\n')
    with pytest.raises(ValueError, match='e.csv'): CaptionTable(tmp_path/'e.csv')
    with pytest.raises(KeyError, match='text'): CaptionTable(tmp_path/'t.tsv', caption_col='text')

def test_caption_table_on_data_small():
    ds = CaptionTable(ROOT/'val.csv', transform=TF, label_col='label')
    va = load_data_small('val')
    assert len(ds) == 1000 and ds.skipped == 0 and ds[7]['label'] == int(va.labels[7])
    assert torch.allclose(ds[7]['image'], va.to_float(7), atol=1e-5)

def _shard(path, n, start=0, broken=()):
    import webdataset as wds
    with wds.TarWriter(str(path)) as w:
        for i in range(start, start + n):
            buf = io.BytesIO(); Image.fromarray(render_sample(DATA_SEED, 'test', i)[0]).save(buf, 'png')
            png = buf.getvalue()[:100] if i in broken else buf.getvalue()
            s = {'__key__': f'{i:06d}', 'png': png, 'cls': str(i % 10)}
            if i != start + 1: s['txt'] = f'caption {i}'   # sample start+1 has no caption
            w.write(s)
    return path

def test_webdataset_shard(tmp_path):
    sh = _shard(tmp_path/'s0.tar', 6, broken={3})
    ds = WebImageText([sh], transform=TF)
    with pytest.warns(UserWarning, match='skipped'): out = list(ds)
    assert [o['caption'] for o in out] == ['caption 0', 'caption 2', 'caption 4', 'caption 5']
    assert ds.skipped == 2 and out[0]['image'].shape == (3, 32, 32) and out[1]['label'] == 2
    loader = torch.utils.data.DataLoader(WebImageText([sh], transform=TF), batch_size=2)
    with pytest.warns(UserWarning): assert sum(len(b['caption']) for b in loader) == 4
    with pytest.raises(FileNotFoundError, match='nope.tar'): WebImageText([tmp_path/'nope.tar'])

def test_webdataset_resampled_is_deterministic_per_rank(tmp_path):
    shards = [str(_shard(tmp_path/f's{k}.tar', 4, start=10*k)) for k in range(3)]
    def first(rank, n=12):
        it = iter(WebImageText(shards, transform=TF, resampled=True, seed=5, rank=rank))
        return [next(it)['caption'] for _ in range(n)]
    a = first(0)
    assert a == first(0)
    assert first(0, 40) != first(1, 40)

def test_webdataset_all_bad_raises(tmp_path):
    sh = _shard(tmp_path/'bad.tar', 2, broken={0, 1})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match='bad.tar'): list(WebImageText([sh], transform=TF))

def test_split_indices_deterministic():
    tr, va = split_indices(50, 0.2, seed=7)
    assert len(tr) == 40 and len(va) == 10 and not set(tr.tolist()) & set(va.tolist())
    assert torch.equal(va, split_indices(50, 0.2, seed=7)[1]) and not torch.equal(va, split_indices(50, 0.2, seed=8)[1])

def test_shape_stream_splits_over_ranks_and_workers():
    from vtp_nb.data import ShapeStream
    one = [s['caption'] for s in ShapeStream(n=12, size=8)]
    two = [s['caption'] for r in range(2) for s in ShapeStream(n=12, size=8, rank=r, world_size=2)]
    assert len(one) == 12 and sorted(one) == sorted(two)
    dl = torch.utils.data.DataLoader(ShapeStream(n=12, size=8), batch_size=None, num_workers=2)
    assert sorted(s['caption'] for s in dl) == sorted(one)

def test_load_data_small_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'): load_data_small('train', root=tmp_path/'nowhere')
