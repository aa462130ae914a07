"""Peak memory of streaming prediction does not grow with the scene: a scene and one 4x larger (2x per side).

    python bench/predict_memory.py [--size 1024]

Each prediction runs in its own process (small Unet/resnet18, random weights, CPU, 256 px windows,
the full pipeline: prefetching reads, merge, COG writer, polygons) and reports its peak RSS; the
ratio large / small must stay at most 1.5 (an in-memory pipeline would need ~4x for its arrays).
"""

import argparse, json, resource, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def child(scene, out):
    "Predict `scene` and print the peak RSS of this process in MiB."
    import segmentation_models_pytorch as smp
    import torch
    from rts_seg.config import InferenceConfig
    from rts_seg.predict import Predictor, Scene, predict_scenes
    from rts_seg.vectorize import vectorize

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = smp.create_model('Unet', encoder_name='resnet18', encoder_weights=None, in_channels=3, classes=1)
    g = dict(channels=['r', 'g', 'b'], mean=[120.0] * 3, std=[40.0] * 3, clip_low=[0.0] * 3, clip_high=[255.0] * 3)
    pred = Predictor(model, dict(channels=['r', 'g', 'b'], groups=dict(rgb=g)), device='cpu')
    cfg = InferenceConfig(tile_size=256, batch_size=4, workers=2, threshold=0.999, device='cpu')
    on_done = lambda r: vectorize(r['mask'], r['prob'], Path(out) / 'scene.gpkg', r['scale'])
    res = predict_scenes(pred, [Scene(scene, Path(out) / 'pred')], cfg, on_done=on_done)[0]
    print(
        json.dumps(dict(windows=res['windows'], peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        '--size', type=int, default=1024, help='side of the small scene in pixels (the large one is twice that)'
    )
    p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child)
    from predict_throughput import make_scene

    tmp = Path(tempfile.mkdtemp(prefix='rts_mem_'))
    res = {}
    for size in (a.size, 2 * a.size):
        scene = tmp / f'scene_{size}.tif'
        make_scene(scene, size)
        (tmp / str(size)).mkdir()
        r = subprocess.run(
            [sys.executable, __file__, '--child', str(scene), str(tmp / str(size))], capture_output=True, text=True
        )
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        res[size] = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f'{size}x{size} px: {res[size]["windows"]} windows, peak RSS {res[size]["peak_rss_mib"]:.0f} MiB',
            flush=True,
        )
    ratio = res[2 * a.size]['peak_rss_mib'] / res[a.size]['peak_rss_mib']
    print(f'peak RSS ratio (4x the pixels) = {ratio:.2f} (goal <= 1.5)')
    print(json.dumps(dict(small=res[a.size], large=res[2 * a.size], ratio=round(ratio, 3))))
    return 0 if ratio <= 1.5 else 1


if __name__ == '__main__':
    sys.exit(main())
