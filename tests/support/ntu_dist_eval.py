"""``torchrun --nproc_per_node N -m tests.support.ntu_dist_eval ARGS.json``: ``evaluate_recognizer`` with
``launcher='pytorch'`` on CPU (gloo); rank 0 writes the result JSON to ``args["out"]``."""
from __future__ import annotations

import json
import os
import sys


def main(spec: str) -> None:
    from ckpttool.engine.tasks import evaluate_recognizer
    from tests.support.ntu_fixtures import model_setups

    args = json.loads(open(spec).read())
    config, options = model_setups(args["data"])[args["model"]]
    res = evaluate_recognizer(config, args["checkpoint"], args["clips"], cfg_options=options,
                         launcher="pytorch", dump=args.get("dump"))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args["out"], "w") as fh:
            json.dump(res, fh)


if __name__ == "__main__":
    main(sys.argv[1])
