"""Write a compact copy of a labelled radiograph folder for training elsewhere (a lent GPU host).

    python -m radlint.models.pack --out .devdata/radiographs --splits train,val --max-side 320 --quality 90

Keeps only the rows of the chosen patient-level splits (the held-out test images stay here),
downscales each image so that its longest side is at most --max-side (Lanczos) and re-encodes it
as 8-bit grey JPEG. The copy has the source's layout (labels.csv + images/...), so
``models/train.py --data OUT`` reads it unchanged. Never commit the copy: it holds the images.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from PIL import Image

from radlint.models.train import DEFAULT_DATA, SPLIT_FILE, load_split, read_labels


def pack(data: Path, out: Path, splits: set[str], split_file: Path, max_side: int,
         quality: int) -> tuple[int, int]:
    rows = read_labels(data)
    split = load_split(split_file)
    kept = [r for r in rows if split.get(r["patient_id"]) in splits]
    total = 0
    for r in kept:
        dst = out / r["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(data / r["file"]) as im:
            im = im.convert("L")
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.Resampling.LANCZOS)
            im.save(dst, "JPEG", quality=quality)
        total += dst.stat().st_size
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    return len(kept), total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--splits", default="train,val")
    ap.add_argument("--split-file", type=Path, default=SPLIT_FILE)
    ap.add_argument("--max-side", type=int, default=320)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    n, size = pack(args.data, args.out, set(args.splits.split(",")), args.split_file,
                   args.max_side, args.quality)
    # read by models/export.py, so a model's recorded recipe starts with this step
    (args.out / "pack.json").write_text(json.dumps(
        {"command": f"python -m radlint.models.pack --out {args.out} --splits {args.splits} "
                    f"--max-side {args.max_side} --quality {args.quality}", "images": n,
         "max_side": args.max_side, "quality": args.quality}))
    print(f"{n} images, {size / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
