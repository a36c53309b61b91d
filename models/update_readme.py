"""Regenerate the model table in models/README.md (python -m models.update_readme)."""
from __future__ import annotations

import re
from pathlib import Path

from . import fmnist
from .evaluate import default_files, evaluate_file, markdown_table

README = Path(__file__).resolve().parent / "README.md"
BEGIN = "<!-- table generated with: python -m models.evaluate --markdown -->"
END = "<!-- end of table -->"


def main():
    full = fmnist.load_test_split()
    sample = fmnist.load_eval_sample()
    table = markdown_table([evaluate_file(f, full, sample) for f in default_files()])
    text = README.read_text()
    if "TABLE_PLACEHOLDER" in text:
        text = text.replace("TABLE_PLACEHOLDER", table + "\n" + END)
    else:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END),
                      lambda _: BEGIN + "\n" + table + "\n" + END, text, flags=re.S)
    README.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
