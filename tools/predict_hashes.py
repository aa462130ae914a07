"""SHA-256 of the COGs predict_scenes writes for six cases, to show a refactor of the prediction pipeline changes no byte.

    python tools/predict_hashes.py OUT_BEFORE     # on the old code
    python tools/predict_hashes.py OUT_AFTER      # on the new code
    cmp OUT_BEFORE/hashes.json OUT_AFTER/hashes.json

Cases (CPU, random-weight UNets, fixed seeds): max merge; blend + scales 1 and 0.5 + standard TTA; a nodata border;
a 2950 x 2990 px scene (strips through temporary files); two scenes in one run; aux-band tiles at two scales.
The models and scenes are made once in RTS_SEG_HASH_WORK (default /tmp/rts_seg_predict_hashes). About 3 minutes."""

import hashlib, json, os, sys
from pathlib import Path
import numpy as np, rasterio, torch
from rts_seg.bundle import save_checkpoint
from rts_seg.config import Config, InferenceConfig
from rts_seg.data import compute_stats, split_tiles
from rts_seg.models import create_model
from rts_seg.synthetic import synth_dataset
from rts_seg.predict import Predictor, predict_scenes, predict_scene, Scene

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
work = Path(os.environ.get('RTS_SEG_HASH_WORK', '/tmp/rts_seg_predict_hashes'))
if not (work / 'm.pth').exists():
    root = synth_dataset(work / 'ds', tiles=12, size=64, seed=0, extra=True)
    cfg = Config(model=dict(arch='Unet', encoder='resnet18', encoder_weights=None, decoder_channels=[32, 16, 16, 8, 8]))
    st = compute_stats(root, split_tiles(root)['train'])
    torch.manual_seed(0)
    save_checkpoint(work / 'm.pth', create_model(cfg.model, 3), cfg, st)
    acfg = Config(
        model=dict(arch='Unet', encoder='resnet18', encoder_weights=None, decoder_channels=[32, 16, 16, 8, 8]),
        data=dict(extra_channels=['ndvi', 're']),
    )
    ast = compute_stats(root, split_tiles(root)['train'], extra_channels=['ndvi', 're'])
    torch.manual_seed(1)
    save_checkpoint(work / 'a.pth', create_model(acfg.model, 5), acfg, ast)
    with rasterio.open(root / 'scenes' / 'demo_scene.tif') as s:
        img, prof = s.read(), s.profile
    img[:, :, :140] = 0
    prof.update(nodata=0)
    with rasterio.open(work / 'border.tif', 'w', **prof) as d:
        d.write(img)
root = work / 'ds'
if not (work / 'large.tif').exists():  # over IN_MEMORY_PX: strips go through temporary files
    with rasterio.open(root / 'scenes' / 'demo_scene.tif') as s:
        img, prof = s.read(), s.profile
    big = np.tile(img, (1, 3000 // img.shape[1] + 1, 3000 // img.shape[2] + 1))[:, :2950, :2990]
    prof.update(height=big.shape[1], width=big.shape[2], tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(work / 'large.tif', 'w', **prof) as d:
        d.write(big)
demo, border = root / 'scenes' / 'demo_scene.tif', work / 'border.tif'
p = Predictor.from_checkpoint(work / 'm.pth', device='cpu')
pa = Predictor.from_checkpoint(work / 'a.pth', device='cpu')
cases = {
    'default': lambda o: predict_scene(p, demo, o, tile_size=128),
    'blend_scales_tta': lambda o: predict_scene(
        p, demo, o, tile_size=128, merge='blend', scales=[1.0, 0.5], tta='standard'
    ),
    'border': lambda o: predict_scene(p, border, o, tile_size=128),
    'large': lambda o: predict_scene(p, work / 'large.tif', o, tile_size=256, batch_size=8, workers=2),
    'multi': lambda o: predict_scenes(
        p,
        [Scene(str(border), o / 'border'), Scene(str(demo), o / 'demo')],
        InferenceConfig(tile_size=128, batch_size=5, workers=3),
    ),
    'tiles': lambda o: predict_scenes(
        pa,
        [
            Scene(str(root / 'PLANET-RGB' / f'{t}.tif'), o / t, key=t, extra=str(root / 'EXTRA' / f'{t}.tif'))
            for t in split_tiles(root)['val'] + split_tiles(root)['train'][:4]
        ],
        InferenceConfig(tile_size=64, batch_size=3, workers=2, scales=[1.0, 0.5]),
    ),
}
h = {}
for k, f in cases.items():
    f(out / k)
    for q in sorted((out / k).rglob('*.tif')):
        h[str(q.relative_to(out))] = hashlib.sha256(q.read_bytes()).hexdigest()
json.dump(h, open(out / 'hashes.json', 'w'), indent=1, sort_keys=True)
print(len(h), 'files')
