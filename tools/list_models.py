"""List the pretrained weights `zoo:NAME` resolves (jseg.checkpoint.zoo), and which are cached.

    python tools/list_models.py

Columns: name, kind, the config that builds it, published mIoU (ADE20K val, single scale)
or ImageNet top-1, source layout, SHA-256 prefix, cached (converted file present), URL.
JSEG_ZOO_MIRROR and JSEG_CACHE_DIR apply as when downloading.
"""
import os

from jseg.checkpoint.zoo import MODELS, cache_dir, cached_path, source_url
from jseg.utils.cli import ToolParser, run_main


def main(argv=None):
    ToolParser(__doc__.split("\n\n")[0], prog="tools/list_models.py").parse_args(argv)
    rows = [("name", "kind", "config", "published", "format", "sha256", "cached")]
    for m in MODELS.values():
        kind = "segmentor" if m.miou is not None else "backbone"
        score = f"mIoU {m.miou:.2f}" if m.miou is not None else f"top-1 {m.top1:.1f}"
        cached = "yes" if os.path.isfile(cached_path("zoo:" + m.name)) else "no"
        rows.append((m.name, kind, m.config, score, m.source_format, m.sha256, cached))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\ncache: {cache_dir()}  (JSEG_CACHE_DIR)")
    print("use: init_model(config, checkpoint='zoo:NAME'), --load-from zoo:NAME, "
          "model.backbone.pretrained=zoo:mscan_t, weights_convert/convert.py zoo:NAME DST")
    print("URLs" + (" (through JSEG_ZOO_MIRROR)" if os.environ.get("JSEG_ZOO_MIRROR") else "")
          + ":")
    for m in MODELS.values():
        print(f"  {m.name}: {source_url(m.url)}")
    return 0


if __name__ == "__main__":
    run_main(main)
