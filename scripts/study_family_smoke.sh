#!/bin/bash
# Every study (sweeps/*.yaml) on every model family with only model=<family> set, at smoke size (tiny models,
# 20 training steps, 32 images): prints each sweep's exit code and ok/failed rows. ~4 min on 2 CPU cores.
# Usage: bash scripts/study_family_smoke.sh   (writes /tmp/sfs, cache /tmp/sfs_cache)
export BENCH_CACHE=/tmp/sfs_cache OMP_NUM_THREADS=2
OUT=/tmp/sfs; rm -rf $OUT
SHRINK="tracker=none train.max_steps=20 train.batch_size=32 sampling.num_samples=32 sampling.batch_size=32 metric.repeats=1 metric.kid_subset_size=16 model.vae_max_steps=20 model.block_out_channels=[16,32] model.num_layers=1 trainer.enable_progress_bar=false distill.max_steps=5 distill.batch_size=16"
for fam in dit latent_unet latent_dit "text_unet data=shapes data.num_train=256 metric.num_reference=256"; do
  name=$(echo $fam | cut -d' ' -f1)
  for study in scheduler_steps ddim_eta guidance distill_vs_ddim; do
    steps="sampling.num_inference_steps=2"
    [ $study = distill_vs_ddim ] && steps="sampling.num_inference_steps=1,64 distill.teacher_steps=64"
    t0=$(date +%s)
    .venv/bin/bench -m sweep=$study model=$fam $SHRINK $steps out_dir=$OUT/$name > $OUT.$name.$study.log 2>&1
    rc=$?
    n=$(grep -c '"status": "ok"' $OUT/$name/$study/results.jsonl 2>/dev/null)
    f=$(grep -c '"status": "failed"' $OUT/$name/$study/results.jsonl 2>/dev/null)
    echo "$name $study rc=$rc ok=$n failed=$f $(( $(date +%s) - t0 ))s"
  done
done
