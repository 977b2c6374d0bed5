"""Per-rank entry point of the planner's measurement runs (`planner/validate.py::run_case`): one short training
measured by `planner/measure.py`, alone or under `paddle.distributed.launch`::

    python paddle_pangu/planner/entry/measure_worker.py --run-config '{json RunConfig dict}' --steps 3 --out DIR

Each rank writes `DIR/rank<N>.json`."""
import argparse
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-config", required=True, help="a RunConfig as JSON")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True, help="directory for rank<N>.json")
    args = p.parse_args(argv)
    from paddle_pangu import runtime

    runtime.apply()  # the math-library environment `pangu train` runs with (MKL code path on AMD), before paddle loads
    from paddle_pangu.planner.measure import measure

    result = measure(json.loads(args.run_config), args.steps)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{result['rank']}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # paddle 3.3.1 gloo groups can abort in their destructors after a complete run
