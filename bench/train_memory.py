"""Peak GPU memory of a training step by batch size: what fits on a T4 (16 GB), an A100 (40/80 GB), an H100 (80 GB).

The SPEC's plain step (random data on the GPU, fused AdamW, autocast, channels-last), whose peak memory is
within 1 % of rts_seg's full step (bench/README.md: 55.2 vs 55.6 GiB at batch 32). fp16 and bf16 activations
take the same memory, so a bf16 figure measured on an H100 holds for a T4's fp16 (the T4 has no bf16).

    python bench/train_memory.py --encoders efficientnet-b7 efficientnet-b4 --bs 4 8 16 32 --json out.json
"""

import argparse, json, time

import torch
import torch.nn.functional as F
import segmentation_models_pytorch as smp


def peak(arch, encoder, bs, size, dtype, steps=3):
    "Peak allocated and reserved GiB over `steps` training steps, and img/s of the last two; None when out of memory."
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1).cuda()
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2, fused=True)
        scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
        x = torch.randn(bs, 3, size, size, device='cuda').contiguous(memory_format=torch.channels_last)
        y = (torch.rand(bs, 1, size, size, device='cuda') > 0.9).float()
        for i in range(steps):
            if i == steps - 2:
                torch.cuda.synchronize()
                t = time.time()
            with torch.autocast('cuda', dtype=dtype):
                loss = F.binary_cross_entropy_with_logits(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        res = dict(
            peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            img_s=2 * bs / (time.time() - t),
            params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        )
    except torch.OutOfMemoryError:
        res = None
    finally:
        for n in ('model', 'opt', 'x', 'y', 'loss'):
            locals().pop(n, None)
        torch.cuda.empty_cache()
    return res


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', default='UnetPlusPlus')
    p.add_argument('--encoders', nargs='+', default=['efficientnet-b7'])
    p.add_argument('--bs', type=int, nargs='+', default=[4, 8, 16, 32])
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16'])
    p.add_argument('--json', default=None)
    a = p.parse_args()
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16)[a.dtype]
    rows = []
    print(
        f'{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {a.arch}, {a.size} px, {a.dtype} autocast, channels-last'
    )
    for enc in a.encoders:
        for bs in a.bs:
            r = peak(a.arch, enc, bs, a.size, dtype)
            rows.append(dict(encoder=enc, bs=bs, **(r or dict(oom=True))))
            print(
                f'{enc:18s} batch {bs:3d}: '
                + (
                    f'peak {r["peak_allocated_gib"]:5.1f} GiB allocated, {r["peak_reserved_gib"]:5.1f} reserved, {r["img_s"]:6.1f} img/s'
                    if r
                    else 'out of memory'
                ),
                flush=True,
            )
    if a.json:
        json.dump(
            dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, args=vars(a), rows=rows),
            open(a.json, 'w'),
            indent=2,
        )
