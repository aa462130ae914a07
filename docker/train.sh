#!/usr/bin/env bash
# Entry point of the training image: accelerate launch --multi_gpu --num_processes N -m rts_seg.train --config CFG [key=value ...]
#   (one process: python -m rts_seg.train, the same training without a launcher in between)
#   NUM_PROCESSES=N (env) or --num_processes N (first argument): processes, one per GPU;
#   default: every visible GPU (CUDA_VISIBLE_DEVICES), or 1 without a GPU.
#   MAIN_PROCESS_PORT=P (env): the rendezvous port of several processes (default 29500; set it to run two trainings on one VM).
# The image's default precision (RTS_SEG_MIXED_PRECISION) is passed as train.mixed_precision unless the
# arguments set it.
set -euo pipefail

n="${NUM_PROCESSES:-}"
case "${1:-}" in
  --num_processes) n="$2"; shift 2 ;;
  --num_processes=*) n="${1#*=}"; shift ;;
esac
if [ -z "$n" ]; then n="$("$(command -v python || command -v python3)" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"; fi

args=("$@")
if [ -n "${RTS_SEG_MIXED_PRECISION:-}" ] && [[ " $* " != *" train.mixed_precision="* ]]; then
  args+=("train.mixed_precision=${RTS_SEG_MIXED_PRECISION}")
fi
if [ -d /outputs ] && [ ! -w /outputs ]; then
  echo "train.sh: /outputs is not writable by uid $(id -u); see 'permission denied' in the runbook (--user, chown)" >&2
fi

py="$(command -v python || command -v python3)"
if [ "$n" -le 1 ]; then
  # one process: nothing to launch, and accelerate's single-process launcher would not pass SIGTERM on (docker stop,
  # a preempted VM), so the run could not save its state
  echo "train.sh: $py -m rts_seg.train ${args[*]}" >&2
  exec "$py" -m rts_seg.train "${args[@]}"
fi
# several: a config mistake is one line here, rather than once per process and then the launcher's traceback
"$py" -m rts_seg.cli train --check "${args[@]}" >/dev/null
# accelerate's torch.distributed launcher (NCCL on GPUs, gloo without), which forwards SIGTERM to every rank
launch=(--multi_gpu --num_processes "$n" --num_machines 1 --mixed_precision no --dynamo_backend no)
if [ -n "${MAIN_PROCESS_PORT:-}" ]; then launch+=(--main_process_port "$MAIN_PROCESS_PORT"); fi
echo "train.sh: accelerate launch ${launch[*]} -m rts_seg.train ${args[*]}" >&2
exec accelerate launch "${launch[@]}" -m rts_seg.train "${args[@]}"
