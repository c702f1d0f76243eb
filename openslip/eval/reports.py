"""Per-sample reports of an evaluation: the predictions CSV of `openslip eval zeroshot --save-predictions`. (The
confusion-matrix picture is drawn by `openslip.plot.plot_confusion`; JSON results are written atomically by
`openslip.weights.atomic.write_json`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_predictions(path: str, ds: Any, logits: Any, labels: Any) -> None:
    """CSV: index, id (file path for file sets), label, prediction, their names, and the top-5 classes."""
    import csv

    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    source = getattr(ds, "source", None)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "label", "label_name", "prediction", "prediction_name", "top5"])
        for i in range(len(labels)):
            lab, pred = int(labels[i]), int(top[i, 0])
            ident = source.paths[i] if source is not None else str(i)
            w.writerow(
                [i, ident, lab, ds.classnames[lab], pred, ds.classnames[pred], " ".join(map(str, top[i].tolist()))]
            )
