#!/bin/sh
# Train the Fashion-MNIST reference models one after another (niced, 2 threads).
#   models/train_all.sh                 # all, in the default order
#   models/train_all.sh resnet18 vgg11bn
# Logs: models/logs/<arch>.log (stdout/stderr) and models/logs/<arch>_train.log.
# Models already trained (results/<arch>_fmnist.json exists) are skipped unless FORCE=1.
# With AUTO_COMMIT=1 each finished model's own files are committed right away
# (only those paths: `git commit -- <paths>`).
set -u
cd "$(dirname "$0")/.."
[ -f /work/venv/bin/activate ] && . /work/venv/bin/activate
# On a shared, busy machine a niced job with spinning OpenMP threads wastes most
# of its CPU share (measured 4-12x slower than PASSIVE under load).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

args_for() {
    case "$1" in
        tinyres)     echo "--width 1.0  --epochs 4  --seed 0" ;;
        resnet18)    echo "--width 0.25 --epochs 15 --seed 0" ;;
        vgg11bn)     echo "--width 0.25 --epochs 20 --seed 0" ;;
        mobilenetv2) echo "--width 0.35 --epochs 10 --seed 0" ;;
        resnet50s)   echo "--width 0.25 --epochs 5  --seed 0" ;;
        *) echo "unknown arch $1" >&2; return 1 ;;
    esac
}

ARCHS="${*:-tinyres resnet18 vgg11bn mobilenetv2 resnet50s}"
mkdir -p models/logs
for arch in $ARCHS; do
    a=$(args_for "$arch") || exit 1
    if [ -f "models/results/${arch}_fmnist.json" ] && [ "${FORCE:-0}" != 1 ] && [ $# -eq 0 ]; then
        echo "[$(date +%T)] $arch already trained, skipping"; continue
    fi
    echo "[$(date +%T)] training $arch: $a"
    # shellcheck disable=SC2086
    if ! nice -n 19 python -m models.train --arch "$arch" $a > "models/logs/$arch.log" 2>&1; then
        echo "[$(date +%T)] $arch FAILED (see models/logs/$arch.log)"
        continue
    fi
    echo "[$(date +%T)] $arch done: $(grep 'final test accuracy' "models/logs/${arch}_train.log")"
    if [ "${AUTO_COMMIT:-0}" = 1 ]; then
        paths="models/${arch}_fmnist_bn.onnx models/${arch}_fmnist_folded.onnx models/results/${arch}_fmnist.json models/logs/${arch}.log models/logs/${arch}_train.log"
        ck="models/checkpoints/${arch}_fmnist.pt"
        if [ -f "$ck" ] && [ "$(stat -c %s "$ck")" -lt 5000000 ]; then paths="$paths $ck"; fi
        for try in 1 2 3 4 5; do
            # shellcheck disable=SC2086
            git add -- $paths && git commit -q -m "models: add trained $arch (Fashion-MNIST)" -- $paths && break
            sleep 5
        done
    fi
done
echo "[$(date +%T)] all done"
