#!/bin/bash
# Create a Cloud TPU pod slice, copy this repository to every worker and install it.
#
#   TPU_NAME=gb-pod ZONE=us-east5-a ACCELERATOR=v5p-32 RUNTIME=v2-alpha-tpuv5 bash launch/tpu/create.sh
#
# Run from the repository root on your own machine (gcloud authenticated, a project set). RUNTIME
# depends on the TPU generation (v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite, v5p:
# v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e). See docs/scaling.md.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v5p-32}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}

gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
# the same code on every worker (a shared file system works too: then point REPO there)
tar czf /tmp/graphbridge.tgz --exclude=.git --exclude='*.pyc' .
gcloud compute tpus tpu-vm scp /tmp/graphbridge.tgz "$TPU_NAME":~/ --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  mkdir -p ~/graphbridge && tar xzf ~/graphbridge.tgz -C ~/graphbridge &&
  pip install -U 'jax[tpu]' && pip install -e ~/graphbridge"
