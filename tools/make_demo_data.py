"""Write the synthetic demo dataset (ADE20K layout) used by configs/demo and the tests.

    python tools/make_demo_data.py [--out data/demo] [--num-train 300] [--num-val 40]
                                   [--size 128] [--seed 0]

Deterministic: the same arguments give the same files. Existing files are kept, so an
interrupted run can be restarted.
"""
import sys
import time

from jseg.utils.cli import ToolParser, run_main
from jseg.data.demo import make_demo_data


def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--num-train", type=int, default=300, help="training images (default: 300)")
    p.add_argument("--num-val", type=int, default=40, help="validation images (default: 40)")
    p.add_argument("--size", type=int, default=128,
                   help="long side in pixels; the short side is 3/4 of it (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = p.parse_args(argv)
    start = time.time()
    try:
        res = make_demo_data(args.out, args.num_train, args.num_val, args.size, args.seed,
                             log=lambda m: print(m, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"demo data in {res['out']}: {res['written']} image pairs written, {res['kept']} kept "
          f"({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
