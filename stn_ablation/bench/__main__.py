"""One `stn-ablate bench --workers` process: `python -m stn_ablation.bench ARGS`, ARGS trial_worker's arguments as
JSON (workers.run_workers starts it)."""

import json
import sys

from stn_ablation.bench.workers import trial_worker

trial_worker(*json.loads(sys.argv[1]))
