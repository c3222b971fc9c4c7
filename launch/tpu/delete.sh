#!/bin/bash
# Delete the TPU pod slice made by launch/tpu/create.sh (billing stops only then).
#
#   TPU_NAME=gb-pod ZONE=us-east5-a bash launch/tpu/delete.sh
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
