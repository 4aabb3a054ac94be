"""How prereg deviation 4 trained the transfer source ahead of its place (run with the pinned driver's venv,
ANL_FUSED_BACKEND=torch): the driver's own job for the run and its wall-time recorder, through ``sweep.run``."""

import datetime as dt

from anl_fused.experiments import study, sweep

runs_dir = "/work/study-runs"
run = study.TRANSFER_SOURCE
job = run.job(study.run_dir(runs_dir, run), 1)
log = lambda s: print(f"[{dt.datetime.now():%Y-%m-%d %H:%M:%S}] {s}", flush=True)
failed = sweep.run([job], parallel=1, nice=10, log=log, on_exit=study._wall_recorder(1))
log(f"done, failed: {failed}")
