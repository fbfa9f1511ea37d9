"""A risk-coverage chart drawn with Pillow alone (the model card runs with the runtime requirements:
no matplotlib): accuracy of the answered photos against the share answered, most confident first."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (720, 480)
MARGIN = (60, 50, 20, 60)  # left, top, right, bottom
Y_RANGE = (0.6, 1.0)
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def draw(curves: dict[str, list[tuple[float, float]]], path: Path, title: str) -> Path:
    """``curves``: {label: [(coverage, accuracy), ...]} -> a PNG at ``path``."""
    image = Image.new("RGB", SIZE, "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]

    def at(coverage: float, accuracy: float) -> tuple[float, float]:
        y = (min(max(accuracy, Y_RANGE[0]), Y_RANGE[1]) - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0])
        return left + coverage * (right - left), bottom - y * (bottom - top)

    for step in range(11):  # coverage grid and labels
        x, _ = at(step / 10, Y_RANGE[0])
        pen.line([(x, top), (x, bottom)], fill=(225, 225, 225) if step not in (7, 8, 9) else (170, 170, 170))
        pen.text((x, bottom + 6), f"{step * 10}%", fill="black", font=font, anchor="ma")
    for step in range(9):
        value = Y_RANGE[0] + step * 0.05
        _, y = at(0, value)
        pen.line([(left, y), (right, y)], fill=(225, 225, 225))
        pen.text((left - 6, y), f"{value:.0%}", fill="black", font=font, anchor="rm")
    pen.rectangle([left, top, right, bottom], outline="black")
    legend_top = bottom - 12 - 18 * len(curves)  # low on the left: the curves run high
    pen.rectangle([left + 8, legend_top - 10, left + 300, bottom - 8], fill="white", outline=(200, 200, 200))
    for index, (label, points) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        pen.line([at(c, a) for c, a in points], fill=colour, width=2)
        y = legend_top + 18 * index
        pen.line([(left + 16, y), (left + 41, y)], fill=colour, width=3)
        pen.text((left + 48, y), label, fill="black", font=font, anchor="lm")
    pen.text((SIZE[0] / 2, 18), title, fill="black", font=font, anchor="mm")
    pen.text(((left + right) / 2, SIZE[1] - 18), "share of photos answered (most confident first)",
             fill="black", font=font, anchor="mm")  # fmt: skip
    pen.text((left, top - 8), "accuracy of the answered photos", fill="black", font=font, anchor="ls")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path
