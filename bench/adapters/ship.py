"""Copy a trained adapter into adapters/<name>/ for `lodestar serve` to offer by name.

    python bench/adapters/ship.py WORK/<run> adapters/<name> [--adapter-dir SUBDIR] [--extra JSON]

The LoRA weights are stored in float16 (they load into any dtype; a few MB instead of twice that),
the card and README are copied, with the results passed in --extra added to the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the training run's --out folder")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--adapter-dir", default="adapter", help="which adapter of the run (e.g. simcse/adapter)")
    ap.add_argument("--extra", default="{}", help="JSON merged into the card (e.g. benchmark figures)")
    args = ap.parse_args()
    src = args.run / args.adapter_dir
    if args.dest.exists():
        shutil.rmtree(args.dest)
    args.dest.mkdir(parents=True)
    shutil.copy(src / "adapter_config.json", args.dest / "adapter_config.json")
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(args.dest / "adapter_model.safetensors"))
    card = json.loads((args.run / "card.json").read_text())
    stage = Path(args.adapter_dir).parent.name  # "simcse/adapter" -> simcse; "adapter" -> the whole run
    names = [s.get("stage") for s in card.get("stages", [])]
    if stage and stage in names:  # an intermediate stage: its card lists the stages up to it
        card["stages"] = card["stages"][: names.index(stage) + 1]
        card["shipped_stage"] = stage
    card.update(json.loads(args.extra))
    card["adapter"] = str(args.dest)
    card["weights_dtype"] = "float16"
    card["reproduce"] = "bash bench/adapters/train.sh DATA_DIR  # then this script"
    (args.dest / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    readme = (args.run / "README.md").read_text() if (args.run / "README.md").exists() else ""
    readme = readme.replace("<this folder>/adapter", f"{args.dest.name} (by name) or this folder")
    if card.get("shipped_stage"):
        readme += f"\nThese are the weights after the `{card['shipped_stage']}` stage; later stages are not in them.\n"
    (args.dest / "README.md").write_text(
        readme + "\nShipped from `" + str(args.run / args.adapter_dir) + "` (weights in float16).\n"
    )
    size = (args.dest / "adapter_model.safetensors").stat().st_size
    print(f"{args.dest}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
