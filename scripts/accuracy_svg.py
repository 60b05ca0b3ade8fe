#!/usr/bin/env python3
"""Draws test accuracy against wall time for several `dagr train` runs as one SVG picture (no plotting library).

Usage: scripts/accuracy_svg.py OUT.svg TITLE LABEL=RUN/metrics.jsonl [LABEL=...]
Every metrics line with a test accuracy is a point (the epoch ends, and the
--eval-every lines between them), at its "seconds"; a dashed line marks 85 % (where the axis reaches it). Runs without
a test accuracy are left out, with a warning.
"""
import html
import json
import math
import sys

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
LEFT, TOP, WIDTH, HEIGHT = 60, 40, 640, 320


def points(path):
    out = []
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                j = json.loads(line)
                if "test_accuracy" in j and not j.get("summary"):
                    out.append((float(j["seconds"]), float(j["test_accuracy"])))
    except OSError as e:
        sys.exit(f"accuracy_svg.py: cannot read {path}: {e.strerror}")
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"accuracy_svg.py: {path} line {number}: not a metrics line ({e})")
    return out


def nice_step(span, count):
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def main():
    out, title, runs = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]
    series = [(label, points(path)) for label, path in runs]
    for label, p in series:
        if not p:
            print(f"accuracy_svg.py: no test accuracy in {label}'s metrics; left out", file=sys.stderr)
    series = [(label, p) for label, p in series if p]
    if not series:
        sys.exit("accuracy_svg.py: no run has a test accuracy to draw")
    t_max = max(max(t for _, p in series for t, _ in p), 1e-3)
    accuracies = [a for _, p in series for _, a in p]
    a_min = min(math.floor(min(accuracies) * 20) / 20, 0.8)
    a_max = max(math.ceil(max(accuracies) * 20) / 20, a_min + 0.05)
    x = lambda t: LEFT + t / t_max * WIDTH
    y = lambda a: TOP + (a_max - a) / (a_max - a_min) * HEIGHT

    svg = [f'<text x="{LEFT}" y="20" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH}" height="{HEIGHT}" fill="none" stroke="#888"/>']
    step = nice_step(t_max, 8)
    for i in range(int(t_max / step) + 1):
        t = i * step
        svg.append(f'<line x1="{x(t):.1f}" y1="{TOP + HEIGHT}" x2="{x(t):.1f}" y2="{TOP + HEIGHT + 4}" stroke="#888"/>')
        svg.append(f'<text x="{x(t):.1f}" y="{TOP + HEIGHT + 18}" text-anchor="middle">{t:g}</text>')
    svg.append(f'<text x="{LEFT + WIDTH / 2}" y="{TOP + HEIGHT + 36}" text-anchor="middle">wall time (s)</text>')
    a = a_min
    while a <= a_max + 1e-9:
        svg.append(f'<line x1="{LEFT - 4}" y1="{y(a):.1f}" x2="{LEFT + WIDTH}" y2="{y(a):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 8}" y="{y(a) + 4:.1f}" text-anchor="end">{a:.2f}</text>')
        a += 0.05
    if a_min <= 0.85 <= a_max:
        svg.append(f'<line x1="{LEFT}" y1="{y(0.85):.1f}" x2="{LEFT + WIDTH}" y2="{y(0.85):.1f}" stroke="#555" '
                   f'stroke-dasharray="6,4"/>')
    svg.append(f'<text x="16" y="{TOP + HEIGHT / 2}" transform="rotate(-90 16 {TOP + HEIGHT / 2})" '
               f'text-anchor="middle">test accuracy</text>')
    for k, (label, p) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(acc):.1f}" for i, (t, acc) in enumerate(p))
        svg.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        svg += [f'<circle cx="{x(t):.1f}" cy="{y(acc):.1f}" r="2.5" fill="{color}"/>' for t, acc in p]
        ly = TOP + HEIGHT - 12 - 18 * (len(series) - 1 - k)  # legend bottom right: below the curves' late points
        svg.append(f'<line x1="{LEFT + WIDTH - 150}" y1="{ly - 4}" x2="{LEFT + WIDTH - 125}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"/>')
        svg.append(f'<text x="{LEFT + WIDTH - 118}" y="{ly}">{html.escape(label)}</text>')
    width, height = LEFT + WIDTH + 20, TOP + HEIGHT + 50
    with open(out, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n')
        f.write("\n".join(svg) + "\n</svg>\n")


if __name__ == "__main__":
    main()
