#!/bin/bash
# Train on every worker of a TPU pod slice (made with launch/tpu/create.sh): the same command on
# all hosts, jax.distributed.initialize() finds the others from the TPU metadata.
#
#   TPU_NAME=gb-pod ZONE=us-east5-a bash launch/tpu/train.sh configs/digits.py /mnt/shared/runs/gb \
#       --config.data.batch_size=1024
#
# WORKDIR must be a directory every worker sees at the same path (an NFS / Filestore mount, or a
# gcsfuse mount of a bucket): the workdir is used through the local file system API, gs:// URLs
# are not supported. Same for data.path. Logs stream back from every worker; only process 0 prints
# progress. See docs/scaling.md.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=${1:?usage: launch/tpu/train.sh CONFIG WORKDIR [--config.field=value ...]}
WORKDIR=${2:?usage: launch/tpu/train.sh CONFIG WORKDIR [--config.field=value ...]}
shift 2
EXTRA=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/graphbridge && PYTHONUNBUFFERED=1 python launch/train.py --distributed \
      --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")$EXTRA"
